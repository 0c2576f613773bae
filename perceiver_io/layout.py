"""Every tensor layout change between Haiku and PyTorch, in one place.

A `Layout` turns a Haiku array into the PyTorch one and back, and maps a PyTorch shape to the Haiku
shape it comes from (so a shape mismatch is reported in the source's own terms before any copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Layout:
    name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_haiku: Callable[[np.ndarray], np.ndarray]
    haiku_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


IDENTITY = Layout("identity", lambda a: a, lambda a: a, lambda shape: tuple(shape))
"""LayerNorm scale/offset, biases, embeddings, position tables: the same in both."""

LINEAR_WEIGHT = Layout(
    "linear_weight", lambda a: a.T, lambda a: a.T, lambda shape: tuple(reversed(shape))
)
"""`hk.Linear` w [in,out] <-> `nn.Linear.weight` [out,in]."""

CONV2D_WEIGHT = Layout(
    "conv2d_weight",
    lambda a: a.transpose(3, 2, 0, 1),
    lambda a: a.transpose(2, 3, 1, 0),
    lambda shape: (shape[2], shape[3], shape[1], shape[0]),
)
"""`hk.Conv2D` w [kh,kw,in,out] (HWIO) <-> `nn.Conv2d.weight` [out,in,kh,kw] (OIHW)."""

BATCHNORM_VECTOR = Layout(
    "batchnorm_vector",
    lambda a: a.reshape(a.shape[-1]),
    lambda a: a.reshape(1, 1, 1, a.shape[-1]),
    lambda shape: (1, 1, 1, shape[-1]),
)
"""`hk.BatchNorm` scale/offset and EMA averages [1,1,1,C] <-> [C]."""


def _conv_transpose_to_torch(a: np.ndarray) -> np.ndarray:
    spatial = a.ndim - 2
    flipped = np.flip(a, axis=tuple(range(spatial)))
    return flipped.transpose(a.ndim - 1, a.ndim - 2, *range(spatial))


def _conv_transpose_to_haiku(a: np.ndarray) -> np.ndarray:
    spatial = a.ndim - 2
    moved = a.transpose(*range(2, a.ndim), 1, 0)
    return np.flip(moved, axis=tuple(range(spatial)))


CONV_TRANSPOSE_WEIGHT = Layout(
    "conv_transpose_weight",
    _conv_transpose_to_torch,
    _conv_transpose_to_haiku,
    lambda shape: (*shape[2:], shape[1], shape[0]),
)
"""`hk.ConvNDTranspose` w [*kernel, out, in], applied unflipped to the stride-dilated input (lax.conv_transpose
without transpose_kernel) <-> `nn.ConvTransposeNd.weight` [in, out, *kernel], the spatially flipped kernel."""
