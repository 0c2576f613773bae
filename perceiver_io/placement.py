"""Where and in what precision a model runs: a device and a floating dtype from the strings people write
("cuda", "cuda:1", "bfloat16", "fp16") or from torch's own objects, checked before any weight moves."""

from __future__ import annotations

import torch

from .errors import InputError, InputTypeError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The floating dtypes the parity checks run a model in, by name."""

FLOATING_DTYPES = {**DTYPES, "float64": torch.float64}
"""The floating dtypes a model can be loaded in, by name."""

DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                 "fp64": "float64", "double": "float64"}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`dtype` as a torch floating dtype: one of FLOATING_DTYPES, by name (`"bfloat16"`, `"torch.bfloat16"`,
    an alias such as `"bf16"`) or as the torch dtype itself."""
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOATING_DTYPES.values():
            raise InputError(f"dtype {dtype} is not one a model computes in; use one of {', '.join(FLOATING_DTYPES)}")
        return dtype
    if not isinstance(dtype, str):
        raise InputTypeError(f"dtype must be a torch dtype or its name, got {type(dtype).__name__}")
    name = dtype.strip().lower().removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in FLOATING_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(FLOATING_DTYPES)} (or "
                         f"{', '.join(DTYPE_ALIASES)})")
    return FLOATING_DTYPES[name]


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device that this machine has: 'cpu', 'cuda', 'cuda:N', 'mps', 'meta' or a
    `torch.device`; an unknown spelling or an absent accelerator is an InputError saying what there is."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or a torch.device") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: PyTorch sees no CUDA device here (torch.cuda.is_available() is "
                             "False); use device='cpu'")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: PyTorch sees {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: PyTorch sees no MPS device here; use device='cpu'")
    elif target.type not in ("cpu", "cuda", "mps", "meta"):
        raise InputError(f"device {device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return target
