"""What each task's official call takes, torch-free: the arrays of the call (`InputSpec`, one table per
task) and deterministic synthetic arrays of the right kind. The task models check their calls against
these (`perceiver_io.inputs.check_call`), `converters.verify` its input files and its default inputs.
`perceiver_io.registry` names each task's two functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from .configs import FlowConfig, ImageNetConfig, LanguageConfig, MultimodalConfig, PerceiverConfig

Values = Literal["floating", "integer", "any"]

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STDDEV_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
"""The ImageNet colab's normalisation: (pixels in [0,255] - mean) / stddev, per RGB channel."""


@dataclass(frozen=True)
class InputSpec:
    """One array of a task's official call: its layout (ints are required sizes, strings name free ones;
    "B", the batch, is the same in every input), its kind of values, what it holds, and for indices the
    bound they must stay below."""

    layout: tuple[int | str, ...]
    values: Values
    what: str
    bound: int | None = None


def fits_layout(shape: Sequence[int], layout: Sequence[int | str]) -> bool:
    """Whether `shape` has the rank of `layout` and its sizes where `layout` fixes them (strings name free
    sizes: ("B", 224, 224, 3))."""
    return len(shape) == len(layout) and all(isinstance(size, str) or size == got for size, got in zip(layout, shape))


def layout_text(layout: Sequence[int | str], hint: str) -> str:
    """`layout` as [B,224,224,3] (nothing when empty), then the hint in parentheses: how every check of
    a call writes what it expected."""
    shape = f"[{','.join(map(str, layout))}]" if layout else ""
    return shape + (f" ({hint})" if hint else "")


# ----------------------------------------------------------------------------------------------------
# The arrays of each task's call (those of the JAX reference's apply; nested ones as `name/key`)


def language_inputs(config: LanguageConfig) -> dict[str, InputSpec]:
    tokens = ("B", config.max_seq_len)
    return {
        "inputs": InputSpec(tokens, "integer", f"token ids, padded to {config.max_seq_len} with the tokenizer's "
                            "pad", config.vocab_size),
        "input_mask": InputSpec(tokens, "any", "1 = token, 0 = padding"),
    }


def imagenet_inputs(config: ImageNetConfig) -> dict[str, InputSpec]:
    return {"images": InputSpec(("B", "H", "W", 3), "floating",
                                "channels last, normalised as the colab: (x - mean*255) / (std*255)")}


def flow_inputs(config: FlowConfig) -> dict[str, InputSpec]:
    return {"images": InputSpec(("B", 2, *config.train_size, 3), "floating",
                                "frame pairs in [-1,1]; perceiver_io.flow.tiled_flow takes frames of other sizes")}


def multimodal_inputs(config: MultimodalConfig) -> dict[str, InputSpec]:
    return {
        "images": InputSpec(("B", *config.image_shape, 3), "floating", "video frames in [0,1]"),
        "audio": InputSpec(("B", config.num_audio_samples, 1), "floating", "audio in [-1,1]"),
        "subsampling/image": InputSpec(("N",), "integer", "image points", math.prod(config.image_shape)),
        "subsampling/audio": InputSpec(("N",), "integer", "audio patches",
                                       config.num_audio_samples // config.samples_per_patch),
    }


def custom_inputs(config: PerceiverConfig) -> dict[str, InputSpec]:
    return {"inputs": InputSpec(("B", *config.input_shape), "floating", "the config's input_shape")}


# ----------------------------------------------------------------------------------------------------
# Synthetic arrays of each task's call: deterministic (seed 0), of the config's sizes


def synthetic_language(config: LanguageConfig) -> dict[str, Any]:
    """3 rows of `max_seq_len` byte ids: one full (with some [MASK] ids), one half padding, one all
    padding, with the matching `input_mask`."""
    rng, length = np.random.default_rng(0), config.max_seq_len
    ids = rng.integers(6, config.vocab_size, size=(3, length), dtype=np.int32)
    ids[0, rng.choice(length, size=max(1, length // 8), replace=False)] = 3
    mask = np.ones((3, length), np.int32)
    mask[1, length // 2:] = 0
    mask[2] = 0
    return {"inputs": np.where(mask == 1, ids, 0).astype(np.int32), "input_mask": mask}


def synthetic_imagenet(config: ImageNetConfig) -> dict[str, Any]:
    """2 images of the config's size, pixels uniform in [0,255] normalised as the colab does."""
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, *config.image_size, 3)).astype(np.float32)
    return {"images": (pixels - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB}


def synthetic_flow(config: FlowConfig) -> dict[str, Any]:
    """2 frame pairs of the config's `train_size`, uniform in [-1,1]."""
    return {"images": np.random.default_rng(0).uniform(-1, 1, size=(2, 2, *config.train_size, 3)).astype(np.float32)}


def synthetic_multimodal(config: MultimodalConfig) -> dict[str, Any]:
    """2 clips (frames in [0,1], audio in [-1,1]) and the colab's first chunk of subsampled points."""
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(0, 1, size=(2, *config.image_shape, 3)).astype(np.float32),
        "audio": rng.uniform(-1, 1, size=(2, config.num_audio_samples, 1)).astype(np.float32),
        "subsampling": first_chunk(config),
    }


def synthetic_custom(config: PerceiverConfig) -> dict[str, Any]:
    """2 examples of the config's `input_shape`, standard normal."""
    return {"inputs": np.random.default_rng(0).normal(size=(2, *config.input_shape)).astype(np.float32)}


def first_chunk(config: MultimodalConfig) -> dict[str, np.ndarray]:
    """The colab's first chunk of subsampled points of the multimodal model (of `nchunks`)."""
    image = np.array_split(np.arange(math.prod(config.image_shape)), config.nchunks)[0]
    audio = np.array_split(np.arange(config.num_audio_samples // config.samples_per_patch), config.nchunks)[0]
    return {"image": image, "audio": audio}
