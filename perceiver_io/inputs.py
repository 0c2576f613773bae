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
    `hint` ends each message: what the values must be, e.g. "channels last, in [0,1]". The messages are
    made only on failure: this runs on every forward pass."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected {_wanted(values, like)} {_expected(layout, hint)}, "
                        f"got a {type(value).__name__}")
    if not fits_layout(value.shape, layout):
        raise ValueError(f"{name}: expected shape {_expected(layout, hint)}, got {list(value.shape)}")
    if values == "model" and value.dtype != like.dtype:
        raise TypeError(f"{name} is {dtype_name(value.dtype)} but the model computes in {dtype_name(like.dtype)}: "
                        f"pass {_wanted(values, like)}{_expected((), hint)}")
    if values == "integer" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} is {dtype_name(value.dtype)}: expected {_wanted(values, like)}{_expected((), hint)}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the model is on {like.device}: move one of them")


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as people write it: "float32", not "torch.float32"."""
    return str(dtype).removeprefix("torch.")


def _wanted(values: str, like: torch.Tensor) -> str:
    return {"model": f"a {dtype_name(like.dtype)} tensor", "integer": "an integer tensor", "any": "a tensor"}[values]


def _expected(layout: Sequence[int | str], hint: str) -> str:
    """`layout` as [B,224,224,3] (nothing when empty), then the hint in parentheses."""
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
        raise ValueError(f"{name} must be in [0, {size}), got values from {low} to {high}")
