"""Every error this project raises on purpose, under one base class a user can catch:

    PerceiverIOError
    ├── ConfigError            a configuration does not describe a valid model, or not this task's
    ├── InputError             a model, pipeline or tool was called with arrays or values it cannot take
    │   └── InputTypeError     ... of the wrong type or dtype (also a TypeError)
    ├── CheckpointFileError    a converted (safetensors) file is missing, unreadable or not of this format
    ├── ConversionError        a Haiku checkpoint could not be converted
    │   ├── CheckpointFormatError   the file is not a readable Haiku checkpoint
    │   │   └── UnsafePickleError   the pickle asks for a global outside the allow-list
    │   └── MappingError            the tree does not match the configuration (missing, unused, mis-shaped leaves)
    └── DownloadError          a released file could not be fetched (also an OSError)
        └── ChecksumError      a downloaded or cached file has another sha256

Each is also the built-in exception code written before it would expect (ValueError; TypeError; OSError).
Messages name the file, key or argument at fault, what was expected, what was found, and what to do.
Torch-free and import-free: every layer raises these.
"""


class PerceiverIOError(Exception):
    """Base class of the project's errors."""


class ConfigError(PerceiverIOError, ValueError):
    """A configuration does not describe a valid model (or not one of the task it is given for)."""


class InputError(PerceiverIOError, ValueError):
    """A call's arrays or values are not what the model, pipeline or tool takes."""


class InputTypeError(InputError, TypeError):
    """A call's argument has the wrong type or dtype."""


class CheckpointFileError(PerceiverIOError, ValueError):
    """A converted checkpoint file is missing, unreadable or not of this project's format."""


class ConversionError(PerceiverIOError, ValueError):
    """A Haiku checkpoint could not be converted."""


class CheckpointFormatError(ConversionError):
    """The source file is not a readable Haiku checkpoint (truncated, corrupt, wrong container)."""


class UnsafePickleError(CheckpointFormatError):
    """The pickle asks for a global outside the allow-list (it would run code)."""


class MappingError(ConversionError):
    """The parameter tree does not match the configuration: missing, unused or mis-shaped leaves."""


class DownloadError(PerceiverIOError, OSError):
    """A released file could not be fetched: every URL failed (the message lists each, and what to do)."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the sha256 it must have."""


def one_line(error: BaseException) -> str:
    """Another library's exception, for one of ours: `Type: first line of its message`, cut at 300
    characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
