"""Input preprocessors and output postprocessors of the official `io_processors.py`, as functions of a
`Scope` (docs/official-numerics.md#preprocessors-and-postprocessors). A preprocessor returns (inputs with
positions [B,M,C], modality sizes or None, inputs without positions); a postprocessor maps the decoder's
output to the model's.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from perceiver_io.configs import (
    AudioPostprocessorConfig,
    AudioPreprocessorConfig,
    ClassificationPostprocessorConfig,
    IdentityPostprocessorConfig,
    ImagePostprocessorConfig,
    ImagePreprocessorConfig,
    OfficialConfig,
    OneHotPreprocessorConfig,
    PositionedInputsConfig,
    ProjectionPostprocessorConfig,
)
from perceiver_io.errors import ConfigError

from .layers import batch_norm, conv2d, conv_transpose, linear, max_pool_same, truncated_normal
from .positions import position_encoding
from .scope import Scope, numbered


class Preprocessed(NamedTuple):
    inputs: jax.Array
    modality_sizes: dict[str, int] | None
    inputs_without_pos: jax.Array | dict[str, jax.Array] | None


def space_to_depth(x: jax.Array, temporal: int, spatial: int) -> jax.Array:
    """[B,H,W,C] -> [B,H/s,W/s,s*s*C], or [B,T,H,W,C] -> [B,T/t,H/s,W/s,t*s*s*C]; channels (dt, dh, dw, c)."""
    if x.ndim == 4:
        b, h, w, c = x.shape
        blocks = x.reshape(b, h // spatial, spatial, w // spatial, spatial, c).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(b, h // spatial, w // spatial, -1)
    if x.ndim == 5:
        b, t, h, w, c = x.shape
        blocks = x.reshape(b, t // temporal, temporal, h // spatial, spatial, w // spatial, spatial, c)
        blocks = blocks.transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return blocks.reshape(b, t // temporal, h // spatial, w // spatial, -1)
    raise ConfigError(f"space_to_depth takes [B,H,W,C] or [B,T,H,W,C], got shape {list(x.shape)}")


def depth_to_space(x: jax.Array, temporal: int, spatial: int) -> jax.Array:
    """The inverse of `space_to_depth` (official `reverse_space_to_depth`)."""
    if x.ndim == 4:
        b, h, w, c = x.shape
        blocks = x.reshape(b, h, w, spatial, spatial, c // spatial**2).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(b, h * spatial, w * spatial, -1)
    if x.ndim == 5:
        b, t, h, w, c = x.shape
        blocks = x.reshape(b, t, h, w, temporal, spatial, spatial, c // (temporal * spatial**2))
        blocks = blocks.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return blocks.reshape(b, t * temporal, h * spatial, w * spatial, -1)
    raise ConfigError(f"reverse_space_to_depth takes rank-4 or rank-5 arrays, got shape {list(x.shape)}")


def patches_for_flow(frames: jax.Array) -> jax.Array:
    """The zero-padded 3x3 neighbourhood of every pixel of every frame, channels (kh, kw, c):
    [B,T,H,W,C] -> [B,T,H,W,9C]."""
    height, width = frames.shape[2:4]
    padded = jnp.pad(frames, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([padded[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=-1)


def _per_frame(fn, x: jax.Array) -> jax.Array:
    """`fn` over [B,H,W,C] images, applied to every frame of [B,T,H,W,C] video as well."""
    if x.ndim == 4:
        return fn(x)
    out = fn(x.reshape(-1, *x.shape[2:]))
    return out.reshape(*x.shape[:2], *out.shape[1:])


def _with_positions(scope: Scope, module: str, config: PositionedInputsConfig,
                    features: jax.Array) -> Preprocessed:
    """The official `_build_network_inputs`: features [B,*grid,C] flattened to [B,N,C], with a position
    encoding over the grid (deepened by `n_extra_pos_mlp` residual Linears, ReLU between them) concatenated
    or added. Its modules live under `{module}/~_build_network_inputs`."""
    batch, grid = features.shape[0], features.shape[1:-1]
    flat = features.reshape(batch, math.prod(grid), features.shape[-1])
    built = f"{module}/~_build_network_inputs"
    pos = position_encoding(scope, built, config.position_encoding_type, grid, batch,
                            project_pos_dim=config.project_pos_dim,
                            trainable=config.trainable_position_encoding_kwargs,
                            fourier=config.fourier_position_encoding_kwargs)
    for index in range(config.n_extra_pos_mlp):
        pos = pos + linear(scope, f"{built}/{numbered('linear', index)}", pos, pos.shape[-1])
        if index < config.n_extra_pos_mlp - 1:
            pos = jax.nn.relu(pos)
    if config.concat_or_add_pos == "concat":
        return Preprocessed(jnp.concatenate([flat, pos], axis=-1), None, flat)
    if pos.shape[-1] != flat.shape[-1]:
        raise ConfigError(f"{module}: adding positions needs as many position channels ({pos.shape[-1]}) as "
                         f"features ({flat.shape[-1]})")
    return Preprocessed(flat + pos, None, flat)


def _conv_stem(scope: Scope, module: str, config: ImagePreprocessorConfig, images: jax.Array) -> jax.Array:
    """The official `Conv2DDownsample`: per layer conv 7x7 stride 2 (`conv`, no bias), `batchnorm`, ReLU,
    max-pool 3x3 stride 2, all 'SAME'; log4(spatial_downsample) layers."""
    num_layers = round(math.log(config.spatial_downsample, 4))
    if 4**num_layers != config.spatial_downsample or config.temporal_downsample != 1:
        raise ConfigError("prep_type 'conv' needs a power of 4 spatial_downsample and temporal_downsample 1")
    x = images
    for index in range(num_layers):
        x = conv2d(scope, f"{module}/~/{numbered('conv', index)}", x, config.num_channels, 7, 2, with_bias=False)
        if config.conv2d_use_batchnorm:
            x = batch_norm(scope, f"{module}/~/{numbered('batchnorm', index)}", x)
        x = max_pool_same(jax.nn.relu(x), 3, 2)
    return x


def image_preprocessor(scope: Scope, config: ImagePreprocessorConfig, images: jax.Array) -> Preprocessed:
    """The official `ImagePreprocessor` at `config.name`: images [B,H,W,C] or video [B,T,H,W,C] featurised
    by `prep_type`, flattened, with positions over the feature grid."""
    module, s, t = config.name, config.spatial_downsample, config.temporal_downsample
    if config.prep_type == "conv":
        features = _per_frame(lambda x: _conv_stem(scope, f"{module}/~/conv2_d_downsample", config, x), images)
    elif config.prep_type == "conv1x1":
        if t != 1:
            raise ConfigError("prep_type 'conv1x1' does not downsample in time")
        features = _per_frame(lambda x: conv2d(scope, f"{module}/~/conv2_d", x, config.num_channels, 1, s), images)
    elif config.prep_type == "patches":
        features = space_to_depth(images, t, s)
        if features.ndim == 5 and features.shape[1] == 1:
            features = features[:, 0]
        if config.conv_after_patching:
            features = linear(scope, f"{module}/patches_linear", features, config.num_channels)
    elif images.ndim == 4:
        features = images[:, ::s, ::s]
    else:
        features = images[:, ::t, ::s, ::s]
    return _with_positions(scope, module, config, features)


def audio_preprocessor(scope: Scope, config: AudioPreprocessorConfig, audio: jax.Array) -> Preprocessed:
    """The official `AudioPreprocessor`: [B,S,1] -> patches of `samples_per_patch` consecutive samples, with
    positions over the patches."""
    patches = audio.reshape(audio.shape[0], -1, config.samples_per_patch)
    return _with_positions(scope, config.name, config, patches)


def one_hot_preprocessor(scope: Scope, labels: jax.Array) -> Preprocessed:
    """The official `OneHotPreprocessor`: [B,C] -> one token [B,1,C], no positions."""
    tokens = labels[:, None, :]
    return Preprocessed(tokens, None, tokens)


@functools.singledispatch
def preprocess(config, scope: Scope, inputs) -> Preprocessed:
    """The preprocessor of `config`'s type on `inputs` (None: the inputs are the encoder's input array)."""
    raise ConfigError(f"no reference for the preprocessor {type(config).__name__}")


@preprocess.register(type(None))
def _no_preprocessor(config: None, scope: Scope, inputs) -> Preprocessed:
    return Preprocessed(inputs, None, None)


@preprocess.register(ImagePreprocessorConfig)
def _image(config: ImagePreprocessorConfig, scope: Scope, inputs) -> Preprocessed:
    return image_preprocessor(scope, config, inputs)


@preprocess.register(AudioPreprocessorConfig)
def _audio(config: AudioPreprocessorConfig, scope: Scope, inputs) -> Preprocessed:
    return audio_preprocessor(scope, config, inputs)


@preprocess.register(OneHotPreprocessorConfig)
def _one_hot(config: OneHotPreprocessorConfig, scope: Scope, inputs) -> Preprocessed:
    return one_hot_preprocessor(scope, inputs)


def multimodal_preprocessor(scope: Scope, modalities: Mapping[str, OfficialConfig], inputs: Mapping[str, jax.Array],
                            min_padding_size: int, mask_probs: Mapping[str, float] | None) -> Preprocessed:
    """The official `MultimodalPreprocessor` (`multimodal_preprocessor`): each modality preprocessed, its
    tokens padded with `{m}_padding` [1,k] to max(C_m) + min_padding_size channels, then with probability
    `mask_probs[m]` replaced by `{m}_mask_token` [1,C]; concatenated in sorted modality order."""
    module = "multimodal_preprocessor"
    names = sorted(modalities)
    if mask_probs is not None and set(mask_probs) != set(names):
        raise ConfigError(f"mask_probs names {sorted(mask_probs)}, the modalities are {names}")
    if set(inputs) != set(names):
        raise ConfigError(f"the multimodal inputs are {sorted(inputs)}, the modalities {names}")
    outputs = {name: preprocess(modalities[name], scope, inputs[name]) for name in names}
    width = max(output.inputs.shape[-1] for output in outputs.values()) + min_padding_size
    tokens = []
    for name in names:
        x = outputs[name].inputs
        batch, count, channels = x.shape
        padding = scope.param(f"{module}/{name}_padding", "pos_embs", (1, width - channels), truncated_normal(0.02))
        x = jnp.concatenate([x, jnp.broadcast_to(padding, (batch, count, width - channels))], axis=-1)
        if mask_probs is not None:
            token = scope.param(f"{module}/{name}_mask_token", "pos_embs", (1, width), truncated_normal(0.02))
            masked = jax.random.bernoulli(scope.key(f"masking {name}"), mask_probs[name], (batch, count))
            masked = masked[..., None].astype(x.dtype)
            x = (1 - masked) * x + masked * token
        tokens.append(x)
    sizes = {name: outputs[name].inputs.shape[1] for name in names}
    return Preprocessed(jnp.concatenate(tokens, axis=1), sizes,
                        {name: outputs[name].inputs_without_pos for name in names})


def image_postprocessor(scope: Scope, config: ImagePostprocessorConfig, x: jax.Array) -> jax.Array:
    """The official `ImagePostprocessor` (`image_postprocessor`): the decoder's output [B,N,C] optionally
    reshaped to [B,*input_reshape_size,C], then 'pixels' (unchanged), 'conv1x1' (`~/conv2_d`), 'conv'
    (`Conv2DUpsample` frame by frame, or `Conv3DUpsample` when upsampling in time) or 'patches'
    (`reverse_space_to_depth`)."""
    module = "image_postprocessor"
    if config.input_reshape_size is not None:
        x = x.reshape(x.shape[0], *config.input_reshape_size, x.shape[-1])
    kind = config.postproc_type
    if kind == "pixels":
        return x
    if kind == "patches":
        return depth_to_space(x, config.temporal_upsample, config.spatial_upsample)
    if config.n_outputs == -1:
        raise ConfigError(f"'{kind}' image postprocessing needs n_outputs")
    if kind == "conv1x1":
        return _per_frame(lambda y: conv2d(scope, f"{module}/~/conv2_d", y, config.n_outputs, 1,
                                           config.spatial_upsample), x)
    if config.temporal_upsample == 1:
        def upsample(y):
            upsampler = f"{module}/~/conv2_d_upsample"
            y = conv_transpose(scope, f"{upsampler}/~/transp_conv_1", y, 2 * config.n_outputs, (4, 4), (2, 2))
            return conv_transpose(scope, f"{upsampler}/~/transp_conv_2", jax.nn.relu(y), config.n_outputs,
                                  (4, 4), (2, 2))
        return _per_frame(upsample, x)
    time_layers = round(math.log2(config.temporal_upsample))
    space_layers = round(math.log2(config.spatial_upsample))
    count = max(time_layers, space_layers)
    for index in range(count):
        stride = (2 if index < time_layers else 1,) + (2 if index < space_layers else 1,) * 2
        x = conv_transpose(scope, f"{module}/~/conv3_d_upsample/conv3d_transpose_{index}", x,
                           config.n_outputs * 2 ** (count - 1 - index), (4, 4, 4), stride)
        if index < count - 1:
            x = jax.nn.relu(x)
    return x


@functools.singledispatch
def postprocess(config, scope: Scope, x: jax.Array):
    """The postprocessor of `config`'s type on the decoder's output `x` (None or identity: `x` itself). A
    postprocessor whose one parameter is a `linear` has it under its official name (`config.official_name`)."""
    raise ConfigError(f"no reference for the postprocessor {type(config).__name__}")


@postprocess.register(type(None))
@postprocess.register(IdentityPostprocessorConfig)
def _identity(config, scope: Scope, x: jax.Array) -> jax.Array:
    return x


@postprocess.register(ImagePostprocessorConfig)
def _image_postprocessor(config: ImagePostprocessorConfig, scope: Scope, x: jax.Array) -> jax.Array:
    return image_postprocessor(scope, config, x)


@postprocess.register(ProjectionPostprocessorConfig)
def _projection(config: ProjectionPostprocessorConfig, scope: Scope, x: jax.Array) -> jax.Array:
    return linear(scope, f"{config.official_name}/linear", x, config.num_outputs)


@postprocess.register(ClassificationPostprocessorConfig)
def _classification(config: ClassificationPostprocessorConfig, scope: Scope, x: jax.Array) -> jax.Array:
    return linear(scope, f"{config.official_name}/linear", x, config.num_classes)[:, 0, :]


@postprocess.register(AudioPostprocessorConfig)
def _audio_postprocessor(config: AudioPostprocessorConfig, scope: Scope, x: jax.Array) -> jax.Array:
    return linear(scope, f"{config.official_name}/linear", x, config.samples_per_patch).reshape(x.shape[0], -1)
