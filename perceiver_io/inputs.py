"""The checks of what the task models are called with, against their task's `InputSpec`s
(`perceiver_io.task_inputs`), so that a wrong call fails at once with a message that names the argument
and what it must be, instead of an error from deep inside a matrix product."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from .errors import InputError, InputTypeError
from .task_inputs import InputSpec, Values, fits_layout, layout_text


def check_call(specs: Mapping[str, InputSpec], arrays: Mapping[str, Any], like: torch.Tensor) -> None:
    """Checks the tensors of a task model's call against its task's `specs` (`check_tensor`, and
    `check_index_range` for indices); an optional argument left out is None. The batch of the first
    fixes the others'."""
    batch = None
    for name, spec in specs.items():
        value = arrays.get(name)
        if value is None:
            continue
        layout = tuple(batch if size == "B" and batch is not None else size for size in spec.layout)
        check_tensor(name, value, layout, like, spec.values, spec.what)
        if spec.bound is not None:
            check_index_range(name, value, spec.bound)
        if batch is None and "B" in spec.layout:
            batch = value.shape[spec.layout.index("B")]


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


def check_index_range(name: str, value: torch.Tensor, size: int) -> None:
    """Raises ValueError unless every entry of the integer tensor `value` is in [0, size). One read of two
    numbers from the device (an index out of range would otherwise poison a CUDA context); skipped under
    `torch.compile`, where reading values would break the graph."""
    if torch.compiler.is_compiling() or value.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(value)).tolist()
    if low < 0 or high >= size:
        raise InputError(f"{name} must be in [0, {size}), got values from {low} to {high}")
