"""Pre- and post-processors, mirroring the official `perceiver/io_processors.py`.

Everything there is mirrored except `ImagePostprocessor`'s 'raft' type, which the official code
accepts but cannot run (it never builds the network it calls).
"""

import functools
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from converters.haiku_reference import position_encoding


def reverse_space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
    """`b h w (dh dw c) -> b (h dh) (w dw) c`, or `b t h w (dt dh dw c) ->
    b (t dt) (h dh) (w dw) c` for rank-5 frames: the inverse of `space_to_depth`."""
    s = spatial_block_size
    if frames.ndim == 4:
        b, h, w, _ = frames.shape
        x = jnp.reshape(frames, [b, h, w, s, s, -1])
        return jnp.reshape(jnp.transpose(x, [0, 1, 3, 2, 4, 5]), [b, h * s, w * s, -1])
    if frames.ndim == 5:
        t_s = temporal_block_size
        b, t, h, w, _ = frames.shape
        x = jnp.reshape(frames, [b, t, h, w, t_s, s, s, -1])
        x = jnp.transpose(x, [0, 1, 4, 2, 5, 3, 6, 7])
        return jnp.reshape(x, [b, t * t_s, h * s, w * s, -1])
    raise ValueError('Frames should be of rank 4 (batch, height, width, channels) '
                     'or rank 5 (batch, time, height, width, channels).')


def space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
    """`b (h dh) (w dw) c -> b h w (dh dw c)`, or `b (t dt) (h dh) (w dw) c ->
    b t h w (dt dh dw c)` for rank-5 frames (the official einops patterns)."""
    s = spatial_block_size
    if frames.ndim == 4:
        b, h, w, c = frames.shape
        x = jnp.reshape(frames, [b, h // s, s, w // s, s, c])
        return jnp.reshape(jnp.transpose(x, [0, 1, 3, 2, 4, 5]), [b, h // s, w // s, s * s * c])
    if frames.ndim == 5:
        t_s = temporal_block_size
        b, t, h, w, c = frames.shape
        x = jnp.reshape(frames, [b, t // t_s, t_s, h // s, s, w // s, s, c])
        x = jnp.transpose(x, [0, 1, 3, 5, 2, 4, 6, 7])
        return jnp.reshape(x, [b, t // t_s, h // s, w // s, t_s * s * s * c])
    raise ValueError('Frames should be of rank 4 (batch, height, width, channels) '
                     'or rank 5 (batch, time, height, width, channels).')


def patches_for_flow(inputs):
    """`patches_for_flow`: [B, T, H, W, C] -> [B, T, H, W, 9*C], the zero-padded 3x3 neighbourhood
    of every pixel with channels ordered (kh, kw, c), as `tf.image.extract_patches`."""
    height, width = inputs.shape[2:4]
    padded = jnp.pad(inputs, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    return jnp.concatenate(
        [padded[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=-1)


class Conv2DDownsample(hk.Module):
    """`Conv2DDownsample`: per layer `conv` 7x7/2 SAME (no bias, HWIO) -> `batchnorm` -> ReLU ->
    3x3/2 SAME max-pool; [B, H, W, C] -> [B, H/4, W/4, num_channels] for one layer."""

    def __init__(self, num_layers=1, num_channels=64, use_batchnorm=True, bn_config=None,
                 name=None):
        super().__init__(name=name)
        bn_config = dict(bn_config or {})
        bn_config.setdefault('decay_rate', 0.9)
        bn_config.setdefault('eps', 1e-5)
        bn_config.setdefault('create_scale', True)
        bn_config.setdefault('create_offset', True)
        self.layers = []
        for _ in range(num_layers):
            conv = hk.Conv2D(output_channels=num_channels, kernel_shape=7, stride=2,
                             with_bias=False, padding='SAME', name='conv')
            batchnorm = hk.BatchNorm(name='batchnorm', **bn_config) if use_batchnorm else None
            self.layers.append(dict(conv=conv, batchnorm=batchnorm))

    def __call__(self, inputs, *, is_training, test_local_stats=False):
        out = inputs
        for layer in self.layers:
            out = layer['conv'](out)
            if layer['batchnorm'] is not None:
                out = layer['batchnorm'](out, is_training, test_local_stats)
            out = jax.nn.relu(out)
            out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                              padding='SAME')
        return out


class Conv2DUpsample(hk.Module):
    """`Conv2DUpsample`: `transp_conv_1` (2*n_outputs channels) -> ReLU -> `transp_conv_2`
    (n_outputs), both `hk.Conv2DTranspose` 4x4 stride 2 'SAME' with bias, built in `__init__`:
    [B, H, W, C] -> [B, 4H, 4W, n_outputs]. Weights are [4, 4, out, in]."""

    def __init__(self, n_outputs, name=None):
        super().__init__(name=name)
        self.transp_conv1 = hk.Conv2DTranspose(output_channels=n_outputs * 2, kernel_shape=4,
                                               stride=2, with_bias=True, padding='SAME',
                                               name='transp_conv_1')
        self.transp_conv2 = hk.Conv2DTranspose(output_channels=n_outputs, kernel_shape=4,
                                               stride=2, with_bias=True, padding='SAME',
                                               name='transp_conv_2')

    def __call__(self, inputs, *, is_training, test_local_stats=False):
        return self.transp_conv2(jax.nn.relu(self.transp_conv1(inputs)))


class Conv3DUpsample(hk.Module):
    """`Conv3DUpsample`: max(n_time_upsamples, n_space_upsamples) `hk.Conv3DTranspose` layers
    `conv3d_transpose_{i}` (kernel 4x4x4, 'SAME', with bias, built in `__call__`), ReLU between.

    Layer i has n_outputs * 2**(n - 1 - i) channels and strides (2 while i < n_time_upsamples
    else 1, then 2 while i < n_space_upsamples else 1, twice): [B, T, H, W, C] ->
    [B, T * 2**n_time_upsamples, H * 2**n_space_upsamples, W * 2**n_space_upsamples, n_outputs].
    Weights are [4, 4, 4, out, in].
    """

    def __init__(self, n_outputs, n_time_upsamples=2, n_space_upsamples=4, name=None):
        super().__init__(name=name)
        self._n_outputs = n_outputs
        self._n_time_upsamples = n_time_upsamples
        self._n_space_upsamples = n_space_upsamples

    def __call__(self, x, *, is_training):
        n_upsamples = max(self._n_time_upsamples, self._n_space_upsamples)
        for i in range(n_upsamples):
            time_stride = 2 if i < self._n_time_upsamples else 1
            space_stride = 2 if i < self._n_space_upsamples else 1
            x = hk.Conv3DTranspose(output_channels=self._n_outputs * 2 ** (n_upsamples - 1 - i),
                                   stride=[time_stride, space_stride, space_stride],
                                   kernel_shape=[4, 4, 4], name=f'conv3d_transpose_{i}')(x)
            if i != n_upsamples - 1:
                x = jax.nn.relu(x)
        return x


class ImagePreprocessor(hk.Module):
    """`ImagePreprocessor`: featurise ('conv', 'conv1x1', 'patches' or 'pixels'), flatten to
    [B, N, C] and concatenate (or add) a position encoding built in `_build_network_inputs`.

    Returns (inputs_with_pos [B, N, C + C_pos], None, inputs_without_pos [B, N, C]).
    """

    def __init__(self, prep_type='conv', spatial_downsample=4, temporal_downsample=1,
                 position_encoding_type='fourier', n_extra_pos_mlp=0, num_channels=64,
                 conv_after_patching=False, conv2d_use_batchnorm=True, concat_or_add_pos='concat',
                 name=None, **position_encoding_kwargs):
        super().__init__(name=name)
        if prep_type not in ('conv', 'patches', 'pixels', 'conv1x1'):
            raise ValueError('Invalid prep_type!')
        if concat_or_add_pos not in ('concat', 'add'):
            raise ValueError(f'Invalid value {concat_or_add_pos} for concat_or_add_pos.')
        self._prep_type = prep_type
        self._spatial_downsample = spatial_downsample
        self._temporal_downsample = temporal_downsample
        self._concat_or_add_pos = concat_or_add_pos
        self._conv_after_patching = conv_after_patching
        self._num_channels = num_channels
        if prep_type == 'conv':
            num_layers = math.log(spatial_downsample, 4)
            if num_layers != np.round(num_layers) or temporal_downsample != 1:
                raise ValueError('Only powers of 4 expected for spatial and 1 expected for '
                                 'temporal downsampling with conv.')
            self.convnet = Conv2DDownsample(num_layers=int(num_layers),
                                            num_channels=num_channels,
                                            use_batchnorm=conv2d_use_batchnorm)
        elif prep_type == 'conv1x1':
            assert temporal_downsample == 1, 'conv1x1 does not downsample in time.'
            self.convnet_1x1 = hk.Conv2D(num_channels, kernel_shape=[1, 1],
                                         stride=[spatial_downsample, spatial_downsample])
        self._positional_encoding_ctor = functools.partial(
            position_encoding.build_position_encoding,
            position_encoding_type=position_encoding_type, **position_encoding_kwargs)
        self._n_extra_pos_mlp = n_extra_pos_mlp

    def _build_network_inputs(self, inputs, pos, network_input_is_1d=True):
        batch_size = inputs.shape[0]
        index_dims = inputs.shape[1:-1]
        if inputs.ndim > 3 and network_input_is_1d:
            inputs = jnp.reshape(inputs, [batch_size, int(np.prod(index_dims)), -1])
        pos_enc = self._positional_encoding_ctor(index_dims=index_dims)(
            batch_size=batch_size, pos=pos)
        for i in range(self._n_extra_pos_mlp):
            pos_enc += hk.Linear(pos_enc.shape[-1])(pos_enc)
            if i < self._n_extra_pos_mlp - 1:
                pos_enc = jax.nn.relu(pos_enc)
        if not network_input_is_1d:
            pos_enc = jnp.reshape(pos_enc, list(inputs.shape)[:-1] + [-1])
        if self._concat_or_add_pos == 'concat':
            return jnp.concatenate([inputs, pos_enc], axis=-1), inputs
        return inputs + pos_enc, inputs

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        if self._prep_type == 'conv':
            conv = hk.BatchApply(self.convnet) if inputs.ndim == 5 else self.convnet
            inputs = conv(inputs, is_training=is_training)
        elif self._prep_type == 'conv1x1':
            conv = hk.BatchApply(self.convnet_1x1) if inputs.ndim == 5 else self.convnet_1x1
            inputs = conv(inputs)
        elif self._prep_type == 'patches':
            inputs = space_to_depth(inputs, temporal_block_size=self._temporal_downsample,
                                    spatial_block_size=self._spatial_downsample)
            if inputs.ndim == 5 and inputs.shape[1] == 1:
                inputs = jnp.squeeze(inputs, axis=1)
            if self._conv_after_patching:
                inputs = hk.Linear(self._num_channels, name='patches_linear')(inputs)
        elif inputs.ndim == 4:
            inputs = inputs[:, ::self._spatial_downsample, ::self._spatial_downsample]
        elif inputs.ndim == 5:
            inputs = inputs[:, ::self._temporal_downsample, ::self._spatial_downsample,
                            ::self._spatial_downsample]
        else:
            raise ValueError('Unsupported data format for pixels.')
        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos, network_input_is_1d)
        return inputs, None, inputs_without_pos


class ImagePostprocessor(hk.Module):
    """`ImagePostprocessor`: optionally reshape [B, N, C] to [B, *input_reshape_size, C], then

    - 'pixels': nothing (no upsampling allowed);
    - 'conv1x1': `conv2_d` (`hk.Conv2D` 1x1, stride `spatial_upsample`, n_outputs channels);
    - 'conv': `conv2_d_upsample` (`Conv2DUpsample`, 4x in H and W whatever `spatial_upsample`;
      applied per frame to rank-5 inputs) when temporal_upsample is 1, else `conv3_d_upsample`
      (`Conv3DUpsample` with log2 of the temporal and spatial factors);
    - 'patches': `reverse_space_to_depth` by (temporal_upsample, spatial_upsample).

    'raft' is refused: the official constructor accepts it but builds no network for its call.
    """

    def __init__(self, postproc_type='pixels', spatial_upsample=1, temporal_upsample=1,
                 n_outputs=-1, input_reshape_size=None, name=None):
        super().__init__(name=name)
        if postproc_type == 'raft':
            raise ValueError("postproc_type 'raft' is broken in the official code (it builds no "
                             "network for it); use 'pixels', 'conv1x1', 'conv' or 'patches'.")
        if postproc_type not in ('conv', 'patches', 'pixels', 'conv1x1'):
            raise ValueError('Invalid postproc_type!')
        self._postproc_type = postproc_type
        self._temporal_upsample = temporal_upsample
        self._spatial_upsample = spatial_upsample
        self._input_reshape_size = input_reshape_size
        if postproc_type == 'pixels':
            if temporal_upsample != 1 or spatial_upsample != 1:
                raise ValueError('Pixels postprocessing should not currently upsample.')
        elif postproc_type == 'conv1x1':
            assert temporal_upsample == 1, 'conv1x1 does not upsample in time.'
            if n_outputs == -1:
                raise ValueError('Expected value for n_outputs')
            self.conv1x1 = hk.Conv2D(n_outputs, kernel_shape=[1, 1],
                                     stride=[spatial_upsample, spatial_upsample])
        elif postproc_type == 'conv':
            if n_outputs == -1:
                raise ValueError('Expected value for n_outputs')
            if temporal_upsample != 1:
                def int_log2(x):
                    return int(np.round(np.log(x) / np.log(2)))
                self.convnet = Conv3DUpsample(n_outputs, int_log2(temporal_upsample),
                                              int_log2(spatial_upsample))
            else:
                self.convnet = Conv2DUpsample(n_outputs)

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        if self._input_reshape_size is not None:
            inputs = jnp.reshape(inputs, [inputs.shape[0]] + list(self._input_reshape_size)
                                 + [inputs.shape[-1]])
        if self._postproc_type == 'conv':
            conv = self.convnet
            if inputs.ndim == 5 and self._temporal_upsample == 1:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs, is_training=is_training)
        elif self._postproc_type == 'conv1x1':
            inputs = self.conv1x1(inputs)
        elif self._postproc_type == 'patches':
            inputs = reverse_space_to_depth(inputs, self._temporal_upsample,
                                            self._spatial_upsample)
        return inputs


class OneHotPreprocessor(hk.Module):
    """`OneHotPreprocessor`: [B, C] -> [B, 1, C], no position encoding."""

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        inputs = inputs[:, None, :]
        return inputs, None, inputs


class AudioPreprocessor(hk.Module):
    """`AudioPreprocessor`: [B, S, 1] -> patches [B, S/spp, spp] of consecutive samples, then a
    position encoding built in `_build_network_inputs` is concatenated (or added)."""

    def __init__(self, prep_type='patches', samples_per_patch=96,
                 position_encoding_type='fourier', n_extra_pos_mlp=0, concat_or_add_pos='concat',
                 name=None, **position_encoding_kwargs):
        super().__init__(name=name)
        if prep_type != 'patches':
            raise ValueError('Invalid prep_type!')
        if concat_or_add_pos not in ('concat', 'add'):
            raise ValueError(f'Invalid value {concat_or_add_pos} for concat_or_add_pos.')
        self._samples_per_patch = samples_per_patch
        self._concat_or_add_pos = concat_or_add_pos
        self._positional_encoding_ctor = functools.partial(
            position_encoding.build_position_encoding,
            position_encoding_type=position_encoding_type, **position_encoding_kwargs)
        self._n_extra_pos_mlp = n_extra_pos_mlp

    def _build_network_inputs(self, inputs, pos):
        pos_enc = self._positional_encoding_ctor(index_dims=inputs.shape[1:-1])(
            batch_size=inputs.shape[0], pos=pos)
        for i in range(self._n_extra_pos_mlp):
            pos_enc += hk.Linear(pos_enc.shape[-1])(pos_enc)
            if i < self._n_extra_pos_mlp - 1:
                pos_enc = jax.nn.relu(pos_enc)
        if self._concat_or_add_pos == 'concat':
            return jnp.concatenate([inputs, pos_enc], axis=-1), inputs
        return inputs + pos_enc, inputs

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        inputs = jnp.reshape(inputs, [inputs.shape[0], -1, self._samples_per_patch])
        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos)
        return inputs, None, inputs_without_pos


class AudioPostprocessor(hk.Module):
    """`AudioPostprocessor`: `linear` [C, spp], then [B, N, spp] -> [B, N*spp]."""

    def __init__(self, postproc_type='patches', samples_per_patch=96, name=None):
        super().__init__(name=name)
        if postproc_type != 'patches':
            raise ValueError('Invalid postproc_type!')
        self._samples_per_patch = samples_per_patch

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        out = hk.Linear(self._samples_per_patch)(inputs)
        return jnp.reshape(out, [inputs.shape[0], -1])


class IdentityPostprocessor(hk.Module):
    """`IdentityPostprocessor`: returns its input unchanged."""

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return inputs


def restructure(modality_sizes, inputs):
    """Splits [B, N, C] along N into {modality: [B, N_m, C]} in sorted modality order."""
    outputs = {}
    index = 0
    for modality in sorted(modality_sizes):
        size = modality_sizes[modality]
        outputs[modality] = inputs[:, index:index + size]
        index += size
    return outputs


class MultimodalPreprocessor(hk.Module):
    """`MultimodalPreprocessor`: per-modality preprocessing, padding with `{modality}_padding`
    [1, k] to max C + `min_padding_size`, optional masking with `{modality}_mask_token` [1, C]
    (Bernoulli(mask_prob) per token, needs an rng), concatenation in sorted modality order.

    Returns (inputs [B, sum N_m, C], {modality: N_m}, {modality: inputs_without_pos}).
    """

    def __init__(self, modalities, mask_probs=None, min_padding_size=2, name=None):
        super().__init__(name=name)
        self._modalities = modalities
        self._min_padding_size = min_padding_size
        self._mask_probs = mask_probs

    def __call__(self, inputs, *, is_training, pos=None, network_input_is_1d=True):
        outputs = {}
        inputs_without_pos = {}
        for modality, preprocessor in self._modalities.items():
            outputs[modality], _, inputs_without_pos[modality] = preprocessor(
                inputs[modality], is_training=is_training, pos=pos,
                network_input_is_1d=network_input_is_1d)
        channels = max(o.shape[2] for o in outputs.values()) + self._min_padding_size

        padded = {}
        modality_sizes = {}
        for modality, output in outputs.items():
            batch, length, width = output.shape
            padding = position_encoding.TrainablePositionEncoding(
                1, num_channels=channels - width, init_scale=0.02, name=f'{modality}_padding')
            padding = jnp.broadcast_to(padding(batch_size=batch),
                                       [batch, length, channels - width])
            output_padded = jnp.concatenate([output, padding], axis=2)
            if self._mask_probs is not None:
                mask_token = position_encoding.TrainablePositionEncoding(
                    1, num_channels=channels, init_scale=0.02,
                    name=f'{modality}_mask_token')(batch)
                mask = jax.random.bernoulli(hk.next_rng_key(), self._mask_probs[modality],
                                            shape=[batch, length])
                mask = jnp.expand_dims(mask, axis=2)
                output_padded = (1 - mask) * output_padded + mask * mask_token
            padded[modality] = output_padded
            modality_sizes[modality] = length
        return (jnp.concatenate([padded[k] for k in sorted(padded)], axis=1), modality_sizes,
                inputs_without_pos)


class MultimodalPostprocessor(hk.Module):
    """`MultimodalPostprocessor`: `restructure` by modality sizes, then per-modality
    postprocessors; returns {modality: output}."""

    def __init__(self, modalities, input_is_dict=False, name=None):
        super().__init__(name=name)
        self._modalities = modalities
        self._input_is_dict = input_is_dict

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        if not self._input_is_dict:
            assert modality_sizes is not None
            inputs = restructure(modality_sizes=modality_sizes, inputs=inputs)
        return {modality: postprocessor(inputs[modality], is_training=is_training, pos=pos,
                                        modality_sizes=None)
                for modality, postprocessor in self._modalities.items()}


class ClassificationPostprocessor(hk.Module):
    """`ClassificationPostprocessor`: `linear` [C, num_classes], then [:, 0, :]."""

    def __init__(self, num_classes, name=None):
        super().__init__(name=name)
        self._num_classes = num_classes

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return hk.Linear(self._num_classes)(inputs)[:, 0, :]


class ProjectionPostprocessor(hk.Module):
    """`ProjectionPostprocessor`: `linear` [C, num_outputs]."""

    def __init__(self, num_outputs, name=None):
        super().__init__(name=name)
        self._num_outputs = num_outputs

    def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
        return hk.Linear(self._num_outputs)(inputs)


class EmbeddingDecoder(hk.Module):
    """`EmbeddingDecoder`: [B, N, D] @ embedding_matrix.T [D, V] + `bias` [V] -> [B, N, V]."""

    def __init__(self, embedding_matrix, name='embedding_decoder'):
        super().__init__(name=name)
        self._embedding_matrix = embedding_matrix
        self._vocab_size, self._d_model = embedding_matrix.shape

    def __call__(self, embeddings):
        batch_size, seq_len, _ = embeddings.shape
        output = jnp.matmul(embeddings.reshape([-1, self._d_model]),
                            jnp.transpose(self._embedding_matrix))
        bias = hk.get_parameter('bias', shape=[self._vocab_size], init=jnp.zeros)
        return (output + bias).reshape([batch_size, seq_len, self._vocab_size])
