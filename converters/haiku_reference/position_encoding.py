"""Position encodings, mirroring the official `perceiver/position_encoding.py`."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


def generate_fourier_features(pos, num_bands, max_resolution=(224, 224), concat_pos=True,
                              sine_only=False):
    """Fourier features of `pos` [n, d] -> [n, d + 2*d*K] laid out as [pos | sin | cos].

    Frequencies are `linspace(1, res/2, K)` per dimension, bands are d-major and the argument is
    `pi * (pos * freq)`, rounded in that order.
    """
    freq_bands = jnp.stack(
        [jnp.linspace(1.0, res / 2, num=num_bands, endpoint=True) for res in max_resolution],
        axis=0)
    features = pos[:, :, None] * freq_bands[None, :, :]
    features = jnp.reshape(features, [-1, np.prod(features.shape[1:])])
    if sine_only:
        features = jnp.sin(jnp.pi * features)
    else:
        features = jnp.concatenate(
            [jnp.sin(jnp.pi * features), jnp.cos(jnp.pi * features)], axis=-1)
    if concat_pos:
        features = jnp.concatenate([pos, features], axis=-1)
    return features


def build_linear_positions(index_dims, output_range=(-1.0, 1.0)):
    """`linspace` grid over `index_dims` -> [*index_dims, len(index_dims)] (meshgrid 'ij')."""
    ranges = [
        jnp.linspace(output_range[0], output_range[1], num=n, endpoint=True, dtype=jnp.float32)
        for n in index_dims
    ]
    return jnp.stack(jnp.meshgrid(*ranges, indexing='ij'), axis=-1)


class TrainablePositionEncoding(hk.Module):
    """`TrainablePositionEncoding`: parameter `pos_embs` [N, C], broadcast to [B, N, C]."""

    def __init__(self, index_dim, num_channels=128, init_scale=0.02, name=None):
        super().__init__(name=name)
        self._index_dim = index_dim
        self._num_channels = num_channels
        self._init_scale = init_scale

    def __call__(self, batch_size, pos=None):
        del pos
        pos_embs = hk.get_parameter(
            'pos_embs', [self._index_dim, self._num_channels],
            init=hk.initializers.TruncatedNormal(stddev=self._init_scale))
        if batch_size is not None:
            pos_embs = jnp.broadcast_to(pos_embs[None], (batch_size,) + pos_embs.shape)
        return pos_embs


def _check_or_build_spatial_positions(pos, index_dims, batch_size):
    """Linear positions [B, prod(index_dims), d], unless `pos` is given."""
    if pos is None:
        pos = build_linear_positions(index_dims)
        pos = jnp.broadcast_to(pos[None], (batch_size,) + pos.shape)
        return jnp.reshape(pos, [batch_size, np.prod(index_dims), -1])
    assert pos.shape[-1] == len(index_dims)
    return pos


class FourierPositionEncoding(hk.Module):
    """`FourierPositionEncoding` (no parameters): -> [B, N, d + 2*d*K]."""

    def __init__(self, index_dims, num_bands, concat_pos=True, max_resolution=None,
                 sine_only=False, name=None):
        super().__init__(name=name)
        self._index_dims = index_dims
        self._num_bands = num_bands
        self._concat_pos = concat_pos
        self._sine_only = sine_only
        self._max_resolution = max_resolution or index_dims

    def __call__(self, batch_size, pos=None):
        pos = _check_or_build_spatial_positions(pos, self._index_dims, batch_size)
        features = functools.partial(
            generate_fourier_features, num_bands=self._num_bands,
            max_resolution=self._max_resolution, concat_pos=self._concat_pos,
            sine_only=self._sine_only)
        return jax.vmap(features)(pos)


class PositionEncodingProjector(hk.Module):
    """`PositionEncodingProjector`: `linear` [C_base, output_size] over a base encoding."""

    def __init__(self, output_size, base_position_encoding, name=None):
        super().__init__(name=name)
        self._output_size = output_size
        self._base_position_encoding = base_position_encoding

    def __call__(self, batch_size, pos=None):
        base_pos = self._base_position_encoding(batch_size, pos)
        return hk.Linear(output_size=self._output_size)(base_pos)


def build_position_encoding(position_encoding_type, index_dims, project_pos_dim=-1,
                            trainable_position_encoding_kwargs=None,
                            fourier_position_encoding_kwargs=None, name=None):
    """`build_position_encoding`: a 'trainable' or 'fourier' encoding, wrapped in a
    `PositionEncodingProjector` when `project_pos_dim` > 0 (the base is built first, so it keeps
    its own name beside `position_encoding_projector`)."""
    if position_encoding_type == 'trainable':
        assert trainable_position_encoding_kwargs is not None, \
            "position_encoding_type 'trainable' needs trainable_position_encoding_kwargs."
        pos_enc = TrainablePositionEncoding(
            index_dim=int(np.prod(index_dims)), name=name, **trainable_position_encoding_kwargs)
    elif position_encoding_type == 'fourier':
        assert fourier_position_encoding_kwargs is not None, \
            "position_encoding_type 'fourier' needs fourier_position_encoding_kwargs."
        pos_enc = FourierPositionEncoding(
            index_dims=index_dims, name=name, **fourier_position_encoding_kwargs)
    else:
        raise ValueError(f'Unknown position encoding: {position_encoding_type}.')
    if project_pos_dim > 0:
        pos_enc = PositionEncodingProjector(
            output_size=project_pos_dim, base_position_encoding=pos_enc)
    return pos_enc
