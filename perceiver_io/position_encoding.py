"""Position encodings, mirroring `perceiver/position_encoding.py` of the official code.

Every encoding is called as `encoding(batch_size, index_dims, pos=None, device=None, dtype=None)` and
returns [B, prod(index_dims), num_channels] (or [B, N, num_channels] for explicit positions `pos`
[B, N, d]). Fourier features are computed in float32, in the official order, then cast to `dtype`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .configs import FourierPositionEncodingConfig, TrainablePositionEncodingConfig
from .errors import ConfigError, InputError


def jax_linspace(start: float, stop: float, num: int, device=None) -> torch.Tensor:
    """`jnp.linspace(start, stop, num)` in float32, rounded as XLA computes it under `jax.jit`
    (start * (1 - step) + stop * step, step = i * (1 / (num - 1)), endpoint exact), bit for bit."""
    if num == 1:
        return torch.tensor([start], dtype=torch.float32, device=device)
    div = num - 1
    step = torch.arange(div, dtype=torch.float32, device=device) * torch.tensor(1.0 / div, dtype=torch.float32)
    start_t = torch.tensor(start, dtype=torch.float32, device=device)
    stop_t = torch.tensor(stop, dtype=torch.float32, device=device)
    out = start_t * (1 - step) + stop_t * step
    return torch.cat([out, stop_t[None]])


def build_linear_positions(index_dims: Sequence[int], device=None) -> torch.Tensor:
    """Positions `linspace(-1, 1, n)` per axis on an 'ij' grid: [*index_dims, d] (official helper)."""
    axes = [jax_linspace(-1.0, 1.0, n, device) for n in index_dims]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def subsampled_positions(indices: torch.Tensor, index_dims: Sequence[int]) -> torch.Tensor:
    """Positions of flat `indices` [N] into a grid of `index_dims`: -1 + 2 * coordinate / n (not
    linspace: the last point is 1 - 2/n), as the official `BasicDecoder.decoder_query`: [N, d]."""
    coordinates = torch.stack(torch.unravel_index(indices.long(), tuple(index_dims)), dim=-1)
    sizes = torch.tensor(index_dims, dtype=torch.float32, device=indices.device)
    return -1 + 2 * coordinates.to(torch.float32) / sizes


def generate_fourier_features(
    pos: torch.Tensor,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> torch.Tensor:
    """Official `generate_fourier_features`: pos [..., N, d] (float32) -> [..., N, C] laid out as
    [pos (d) | sin (d*K) | cos (d*K)], frequency bands d-major, sin(pi * (pos * freq))."""
    freqs = torch.stack([jax_linspace(1.0, res / 2, num_bands, pos.device) for res in max_resolution])  # [d,K]
    features = (pos[..., :, None] * freqs).flatten(-2)
    scaled = math.pi * features
    parts = [torch.sin(scaled)] if sine_only else [torch.sin(scaled), torch.cos(scaled)]
    if concat_pos:
        parts.insert(0, pos)
    return torch.cat(parts, dim=-1)


class TrainablePositionEncoding(nn.Module):
    """A learned table `embeddings [index_dim, C]` broadcast over the batch (official
    `TrainablePositionEncoding`, leaf `pos_embs`): [B, index_dim, C].

    Initialised as the official one: truncated normal (at +-2 std) with std `init_scale`.
    """

    def __init__(self, index_dim: int, num_channels: int, init_scale: float = 0.02):
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(index_dim, num_channels))
        nn.init.trunc_normal_(self.embeddings, std=init_scale, a=-2 * init_scale, b=2 * init_scale)

    @property
    def num_channels(self) -> int:
        return self.embeddings.shape[-1]

    def forward(self, batch_size: int, index_dims: Sequence[int] | None = None, pos=None, device=None, dtype=None):
        if index_dims is not None and math.prod(index_dims) != self.embeddings.shape[0]:
            raise InputError(
                f"the learned position encoding covers {self.embeddings.shape[0]} positions, but the input has "
                f"{math.prod(index_dims)} ({'x'.join(map(str, index_dims))}); learned encodings only work at the "
                "size they were trained at"
            )
        return self.embeddings.expand(batch_size, -1, -1)


class FourierPositionEncoding(nn.Module):
    """Fourier features of linear positions over `index_dims` (official `FourierPositionEncoding`).

    No parameters. `max_resolution` defaults to the grid's own size. In eager mode the features of a grid
    are cached per (index_dims, device, dtype); under `torch.compile` they are part of the graph.
    """

    def __init__(
        self,
        num_dims: int,
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
    ):
        super().__init__()
        if max_resolution is not None and len(max_resolution) != num_dims:
            raise ConfigError(f"max_resolution {tuple(max_resolution)} must have {num_dims} entries")
        self.num_dims = num_dims
        self.num_bands = num_bands
        self.max_resolution = None if max_resolution is None else tuple(max_resolution)
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def num_channels(self) -> int:
        return self.num_dims * self.num_bands * (1 if self.sine_only else 2) + (self.num_dims if self.concat_pos else 0)

    def _features(self, pos: torch.Tensor, index_dims: Sequence[int]) -> torch.Tensor:
        return generate_fourier_features(
            pos, self.num_bands, self.max_resolution or tuple(index_dims), self.concat_pos, self.sine_only
        )

    def forward(self, batch_size: int, index_dims: Sequence[int], pos=None, device=None, dtype=None):
        dtype = dtype or torch.float32
        if len(index_dims) != self.num_dims:
            raise InputError(f"a {self.num_dims}-d Fourier encoding cannot cover an index grid {tuple(index_dims)}")
        if pos is not None:
            return self._features(pos.to(torch.float32), index_dims).to(dtype)
        if torch.compiler.is_compiling():
            # In the graph, not the cache: a cache filled by the first compiled call would fail that graph's
            # guards on the second and compile it again. Inductor's freezing folds these to a constant.
            return self._grid_features(index_dims, device, dtype).expand(batch_size, -1, -1)
        key = (tuple(index_dims), torch.device(device or "cpu"), dtype)
        features = self._cache.get(key)
        if features is None:
            with torch.inference_mode(False):  # a normal tensor, which a later autograd pass may save
                features = self._cache[key] = self._grid_features(index_dims, device, dtype)
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return features.expand(batch_size, -1, -1)

    def _grid_features(self, index_dims: Sequence[int], device, dtype: torch.dtype) -> torch.Tensor:
        grid = build_linear_positions(index_dims, device).reshape(-1, self.num_dims)
        return self._features(grid, index_dims).to(dtype)


class PositionEncodingProjector(nn.Module):
    """A base encoding followed by a Linear (official `PositionEncodingProjector`, leaf `linear`)."""

    def __init__(self, base: nn.Module, output_channels: int):
        super().__init__()
        self.base = base
        self.linear = nn.Linear(base.num_channels, output_channels)

    @property
    def num_channels(self) -> int:
        return self.linear.out_features

    def forward(self, batch_size: int, index_dims: Sequence[int], pos=None, device=None, dtype=None):
        return self.linear(self.base(batch_size, index_dims, pos, device, dtype))


def build_position_encoding(
    position_encoding_type: str,
    index_dims: Sequence[int],
    project_pos_dim: int = -1,
    trainable: TrainablePositionEncodingConfig | None = None,
    fourier: FourierPositionEncodingConfig | None = None,
) -> nn.Module:
    """Official `build_position_encoding`: 'trainable' (over prod(index_dims) positions) or 'fourier',
    wrapped in a projector when `project_pos_dim > 0`."""
    if position_encoding_type == "trainable":
        trainable = trainable or TrainablePositionEncodingConfig()
        encoding = TrainablePositionEncoding(math.prod(index_dims), trainable.num_channels, trainable.init_scale)
    elif position_encoding_type == "fourier":
        if fourier is None:
            raise ConfigError("a 'fourier' position encoding needs fourier_position_encoding_kwargs (num_bands, ...)")
        encoding = FourierPositionEncoding(
            len(index_dims), fourier.num_bands, fourier.max_resolution, fourier.concat_pos, fourier.sine_only
        )
    else:
        raise ConfigError(f"unknown position_encoding_type {position_encoding_type!r}; expected 'trainable' or 'fourier'")
    return PositionEncodingProjector(encoding, project_pos_dim) if project_pos_dim > 0 else encoding
