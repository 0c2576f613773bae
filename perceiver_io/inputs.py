"""Checks of what the task models are called with, so that a wrong call fails at once with a message that
names the argument and what it must be, instead of an error from deep inside a matrix product."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch


def fits_layout(shape: Sequence[int], layout: Sequence[int | str]) -> bool:
    """Whether `shape` has the rank of `layout` and its sizes where `layout` fixes them (strings name free
    sizes: ("B", 224, 224, 3))."""
    return len(shape) == len(layout) and all(isinstance(size, str) or size == got for size, got in zip(layout, shape))


def check_tensor(
    name: str,
    value: Any,
    layout: Sequence[int | str],
    like: torch.Tensor,
    values: Literal["model", "integer", "any"] = "model",
    hint: str = "",
) -> None:
    """Raises TypeError or ValueError unless `value` is a tensor laid out as `layout` (its integers are
    required sizes, its strings name free ones: ("B", 224, 224, 3)), on the device of `like` (a parameter
    of the model), with `like`'s dtype (`values="model"`), an integer dtype ("integer") or any ("any").
    `hint` ends each message: what the values must be, e.g. "channels last, in [0,1]"."""
    expected = f"[{','.join(map(str, layout))}]"
    wanted = {"model": f"a {str(like.dtype).removeprefix('torch.')} tensor", "integer": "an integer tensor",
              "any": "a tensor"}[values]
    suffix = f" ({hint})" if hint else ""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected {wanted} {expected}{suffix}, got a {type(value).__name__}")
    if not fits_layout(value.shape, layout):
        raise ValueError(f"{name}: expected shape {expected}{suffix}, got {list(value.shape)}")
    if values == "model" and value.dtype != like.dtype:
        raise TypeError(
            f"{name} is {str(value.dtype).removeprefix('torch.')} but the model computes in "
            f"{str(like.dtype).removeprefix('torch.')}: pass {wanted}{suffix}"
        )
    if values == "integer" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} is {str(value.dtype).removeprefix('torch.')}: expected {wanted}{suffix}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the model is on {like.device}: move one of them")


def check_index_range(name: str, value: torch.Tensor, size: int) -> None:
    """Raises ValueError unless every entry of the integer tensor `value` is in [0, size). One read of two
    numbers from the device (an index out of range would otherwise poison a CUDA context); skipped under
    `torch.compile`, where reading values would break the graph."""
    if torch.compiler.is_compiling() or value.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(value)).tolist()
    if low < 0 or high >= size:
        raise ValueError(f"{name} must be in [0, {size}), got values from {low} to {high}")
