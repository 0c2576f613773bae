"""Position encodings of the official `position_encoding.py`, as functions of a `Scope`
(docs/official-numerics.md#position-encodings).

Fourier features of positions pos [N,d]: frequencies linspace(1, max_resolution_i / 2, K) per axis, features
laid out [pos (d) | sin(pi * pos * f) (d*K) | cos(...) (d*K)], bands of one axis together (axis-major),
`pos * f` rounded before the product with pi. Grid positions are `jnp.linspace(-1, 1, n)` per axis; the
positions of subsampled points are -1 + 2 * coordinate / n.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from perceiver_io.configs import FourierPositionEncodingConfig, TrainablePositionEncodingConfig
from perceiver_io.errors import ConfigError

from .layers import linear, truncated_normal
from .scope import Scope


def grid_positions(index_dims: Sequence[int]) -> jax.Array:
    """linspace(-1, 1, n) along every axis of the grid, row-major: [prod(index_dims), d]."""
    axes = [jnp.linspace(-1.0, 1.0, num=n, endpoint=True, dtype=jnp.float32) for n in index_dims]
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    return grid.reshape(-1, len(index_dims))


def point_positions(points: jax.Array, index_dims: Sequence[int]) -> jax.Array:
    """Positions of flat indices `points` [N] into the grid: -1 + 2 * coordinate / size, [N, d]."""
    coordinates = jnp.stack(jnp.unravel_index(points, tuple(index_dims)), axis=-1)
    return -1 + 2 * coordinates / jnp.asarray(index_dims)


def fourier_features(pos: jax.Array, config: FourierPositionEncodingConfig, index_dims: Sequence[int]) -> jax.Array:
    """pos [..., N, d] -> [..., N, (d if concat_pos) + d*K*(1 if sine_only else 2)]."""
    resolution = config.max_resolution or tuple(index_dims)
    if len(resolution) != pos.shape[-1]:
        raise ConfigError(f"max_resolution {list(resolution)} has {len(resolution)} axes, the positions {pos.shape[-1]}")
    bands = jnp.stack([jnp.linspace(1.0, size / 2, num=config.num_bands, endpoint=True, dtype=jnp.float32)
                       for size in resolution])
    scaled = (pos[..., :, None] * bands).reshape(*pos.shape[:-1], -1)
    parts = [jnp.sin(jnp.pi * scaled)] if config.sine_only else [jnp.sin(jnp.pi * scaled), jnp.cos(jnp.pi * scaled)]
    return jnp.concatenate(([pos] if config.concat_pos else []) + parts, axis=-1)


def position_encoding(scope: Scope, parent: str, kind: str, index_dims: Sequence[int], batch_size: int, *,
                      project_pos_dim: int = -1, trainable: TrainablePositionEncodingConfig | None = None,
                      fourier: FourierPositionEncodingConfig | None = None, pos: jax.Array | None = None) -> jax.Array:
    """The official `build_position_encoding` and its call, under the Haiku path `parent`:
    'trainable' (`{parent}/trainable_position_encoding`, pos_embs [prod(index_dims), C], which ignores `pos`)
    or 'fourier' (no parameters; at `pos` [B,N,d] when given, else over the grid), then projected by
    `{parent}/position_encoding_projector/linear` when `project_pos_dim > 0`. -> [B, N, C]."""
    if kind == "trainable":
        trainable = trainable or TrainablePositionEncodingConfig()
        table = scope.param(f"{parent}/trainable_position_encoding", "pos_embs",
                            (math.prod(index_dims), trainable.num_channels), truncated_normal(trainable.init_scale))
        encoding = jnp.broadcast_to(table, (batch_size, *table.shape))
    elif kind == "fourier":
        if fourier is None:
            raise ConfigError("a 'fourier' position encoding needs fourier_position_encoding_kwargs (num_bands, ...)")
        if pos is None:
            features = fourier_features(grid_positions(index_dims), fourier, index_dims)
            encoding = jnp.broadcast_to(features, (batch_size, *features.shape))
        else:
            encoding = fourier_features(pos, fourier, index_dims)
    else:
        raise ConfigError(f"unknown position_encoding_type {kind!r}; expected 'trainable' or 'fourier'")
    if project_pos_dim > 0:
        encoding = linear(scope, f"{parent}/position_encoding_projector/linear", encoding, project_pos_dim)
    return encoding
