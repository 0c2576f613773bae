"""The arrays of each task's official call, and the checks of what the task models are called with, so
that a wrong call fails at once with a message that names the argument and what it must be, instead of an
error from deep inside a matrix product. `converters.verify` checks its input files against the same table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch

from .configs import FlowConfig, ImageNetConfig, LanguageConfig, MultimodalConfig, OfficialConfig
from .errors import InputError, InputTypeError

Values = Literal["floating", "integer", "any"]


@dataclass(frozen=True)
class InputSpec:
    """One array of a task's official call: its layout (ints are required sizes, strings name free ones;
    "B", the batch, is the same in every input), its kind of values, what it holds, and for indices the
    bound they must stay below."""

    layout: tuple[int | str, ...]
    values: Values
    what: str
    bound: int | None = None


def input_specs(config: OfficialConfig) -> dict[str, InputSpec]:
    """The arrays of the official call of the model `config` describes (those of the JAX reference's
    apply), nested ones as `name/key`."""
    if isinstance(config, LanguageConfig):
        tokens = ("B", config.max_seq_len)
        return {
            "inputs": InputSpec(tokens, "integer", f"token ids, padded to {config.max_seq_len} with the tokenizer's "
                                "pad", config.vocab_size),
            "input_mask": InputSpec(tokens, "any", "1 = token, 0 = padding"),
        }
    if isinstance(config, ImageNetConfig):
        return {"images": InputSpec(("B", "H", "W", 3), "floating",
                                    "channels last, normalised as the colab: (x - mean*255) / (std*255)")}
    if isinstance(config, FlowConfig):
        return {"images": InputSpec(("B", 2, *config.train_size, 3), "floating",
                                    "frame pairs in [-1,1]; perceiver_io.flow.tiled_flow takes frames of other sizes")}
    if isinstance(config, MultimodalConfig):
        return {
            "images": InputSpec(("B", *config.image_shape, 3), "floating", "video frames in [0,1]"),
            "audio": InputSpec(("B", config.num_audio_samples, 1), "floating", "audio in [-1,1]"),
            "subsampling/image": InputSpec(("N",), "integer", "image points", math.prod(config.image_shape)),
            "subsampling/audio": InputSpec(("N",), "integer", "audio patches",
                                           config.num_audio_samples // config.samples_per_patch),
        }
    return {"inputs": InputSpec(("B", *config.input_shape), "floating", "the config's input_shape")}


def check_call(config: OfficialConfig, arrays: Mapping[str, Any], like: torch.Tensor) -> None:
    """Checks the tensors of a task model's call against `input_specs(config)` (`check_tensor`, and
    `check_index_range` for indices); an optional argument left out is None. The batch of the first
    fixes the others'."""
    batch = None
    for name, spec in input_specs(config).items():
        value = arrays.get(name)
        if value is None:
            continue
        layout = tuple(batch if size == "B" and batch is not None else size for size in spec.layout)
        check_tensor(name, value, layout, like, spec.values, spec.what)
        if spec.bound is not None:
            check_index_range(name, value, spec.bound)
        if batch is None and "B" in spec.layout:
            batch = value.shape[spec.layout.index("B")]


def fits_layout(shape: Sequence[int], layout: Sequence[int | str]) -> bool:
    """Whether `shape` has the rank of `layout` and its sizes where `layout` fixes them (strings name free
    sizes: ("B", 224, 224, 3))."""
    return len(shape) == len(layout) and all(isinstance(size, str) or size == got for size, got in zip(layout, shape))


def check_tensor(
    name: str,
    value: Any,
    layout: Sequence[int | str],
    like: torch.Tensor,
    values: Values = "floating",
    hint: str = "",
) -> None:
    """Raises TypeError or ValueError unless `value` is a tensor laid out as `layout` (its integers are
    required sizes, its strings name free ones: ("B", 224, 224, 3)), on the device of `like` (a parameter
    of the model), with `like`'s dtype (`values="floating"`), an integer dtype ("integer") or any ("any").
    `hint` ends each message: what the values must be, e.g. "channels last, in [0,1]". The messages are
    made only on failure: this runs on every forward pass."""
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name}: expected {_wanted(values, like)} {layout_text(layout, hint)}, "
                        f"got a {type(value).__name__}")
    if not fits_layout(value.shape, layout):
        raise InputError(f"{name}: expected shape {layout_text(layout, hint)}, got {list(value.shape)}")
    if values == "floating" and value.dtype != like.dtype:
        raise InputTypeError(f"{name} is {dtype_name(value.dtype)} but the model computes in {dtype_name(like.dtype)}: "
                        f"pass {_wanted(values, like)}{layout_text((), hint)}")
    if values == "integer" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise InputTypeError(f"{name} is {dtype_name(value.dtype)}: expected {_wanted(values, like)}{layout_text((), hint)}")
    if value.device != like.device:
        raise InputError(f"{name} is on {value.device} but the model is on {like.device}: move one of them")


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as people write it: "float32", not "torch.float32"."""
    return str(dtype).removeprefix("torch.")


def _wanted(values: str, like: torch.Tensor) -> str:
    return {"floating": f"a {dtype_name(like.dtype)} tensor", "integer": "an integer tensor", "any": "a tensor"}[values]


def layout_text(layout: Sequence[int | str], hint: str) -> str:
    """`layout` as [B,224,224,3] (nothing when empty), then the hint in parentheses: how every check of
    a call, here and in `converters.verify`, writes what it expected."""
    shape = f"[{','.join(map(str, layout))}]" if layout else ""
    return shape + (f" ({hint})" if hint else "")


def check_index_range(name: str, value: torch.Tensor, size: int) -> None:
    """Raises ValueError unless every entry of the integer tensor `value` is in [0, size). One read of two
    numbers from the device (an index out of range would otherwise poison a CUDA context); skipped under
    `torch.compile`, where reading values would break the graph."""
    if torch.compiler.is_compiling() or value.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(value)).tolist()
    if low < 0 or high >= size:
        raise InputError(f"{name} must be in [0, {size}), got values from {low} to {high}")
