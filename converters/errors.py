"""Errors raised while reading, mapping and writing checkpoints.

Every message names the file or key at fault, what was expected, what was found, and what to do.
"""


class ConversionError(ValueError):
    """Base class: a checkpoint could not be converted."""


class CheckpointFormatError(ConversionError):
    """The source file is not a readable Haiku checkpoint (truncated, corrupt, wrong container)."""


class UnsafePickleError(CheckpointFormatError):
    """The pickle asks for a global outside the allow-list (it would run code)."""


class MappingError(ConversionError):
    """The parameter tree does not match the configuration: missing, unused or mis-shaped leaves."""
