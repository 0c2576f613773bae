"""A faithful PyTorch port of DeepMind's Perceiver IO.

Imports are lazy, so that `import perceiver_io.tokenizer` (or the converter's torch-free paths) does not
pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "perceiver_io.serialization",
    "save": "perceiver_io.serialization",
    "build_model": "perceiver_io.tasks",
    "compile_for_inference": "perceiver_io.compiled",
    "TASKS": "perceiver_io.registry",
    "PerceiverIOError": "perceiver_io.errors",
    "LanguagePerceiver": "perceiver_io.tasks",
    "ImageClassifier": "perceiver_io.tasks",
    "OpticalFlow": "perceiver_io.tasks",
    "VideoAutoencoder": "perceiver_io.tasks",
    "LanguageConfig": "perceiver_io.configs",
    "ImageNetConfig": "perceiver_io.configs",
    "FlowConfig": "perceiver_io.configs",
    "MultimodalConfig": "perceiver_io.configs",
    "BytesTokenizer": "perceiver_io.tokenizer",
    "fill_mask": "perceiver_io.pipelines",
    "classify_image": "perceiver_io.pipelines",
    "reconstruct_video": "perceiver_io.pipelines",
    "RELEASES": "perceiver_io.registry",
    "download": "perceiver_io.hub",
    "tiled_flow": "perceiver_io.flow",
    "flow_between_files": "perceiver_io.flow",
}

DISTRIBUTION = "perceiver-io-port"
"""The name this package is installed under (pyproject.toml)."""

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perceiver_io' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The public names too, though they are imported on first use (tab completion, `dir`)."""
    return sorted({*globals(), *__all__})
