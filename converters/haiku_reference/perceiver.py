"""Perceiver IO blocks, encoder, decoders and model; mirrors the official `perceiver/perceiver.py`.

Shapes: B batch, N inputs, M latents (`z_index_dim`), O output queries, C channels, H heads.
Intermediate activations are reported through `record` to the innermost `recording()` block; this
is a plain Python side channel, so it creates no modules and leaves parameter names unchanged.

Random keys are drawn exactly where the official code draws them, so a given rng gives the
official dropout masks: `attend` draws one only when its attention-dropout rate is non-zero, while
the residual dropouts of `SelfAttention`/`CrossAttention` and the one closing `MLP` always draw one
(at rate 0 outside training), so every apply needs an rng, as the official model's does.
"""

import contextlib
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from converters.haiku_reference import io_processors
from converters.haiku_reference import position_encoding

_TAPES = []


@contextlib.contextmanager
def recording():
    """Collects every `record(name, value)` made inside the block into the yielded dict."""
    tape = {}
    _TAPES.append(tape)
    try:
        yield tape
    finally:
        _TAPES.pop()


def record(name, value):
    """Stores `value` under `name` (a dict value under `name/key`) if a recording is active."""
    if not _TAPES or value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            record(f'{name}/{key}', item)
    else:
        _TAPES[-1][name] = value


def attend(q, k, v, dropout_prob=0.0, attention_mask=None):
    """Multi-head attention: q [B,T,H,Dqk], k [B,S,H,Dqk], v [B,S,H,Dv] -> [B,T,H*Dv].

    Masked logits are replaced by -1e30 and query rows with no valid key are zeroed.
    """
    batch, q_len, num_heads, q_head_dim = q.shape
    v_head_dim = v.shape[-1]
    logits = jnp.einsum('bthd,bThd->bhtT', q, k)
    logits *= 1. / math.sqrt(q_head_dim)
    if attention_mask is not None:
        large_k = jnp.array(1e4 if logits.dtype == jnp.float16 else 1e30, dtype=logits.dtype)
        logits = jnp.where(attention_mask[:, None, :, :], logits, -large_k)
    weights = jax.nn.softmax(logits)
    if dropout_prob > 0:
        weights = hk.dropout(hk.next_rng_key(), dropout_prob, weights)
    summed = jnp.einsum('bhtT,bThd->bthd', weights, v)
    summed = jnp.reshape(summed, [batch, q_len, num_heads * v_head_dim])
    if attention_mask is not None:
        wipe = jnp.all(attention_mask == 0, axis=2, keepdims=True)
        summed = jnp.where(wipe, jnp.zeros_like(summed), summed)
    return summed


def conv_1d(output_channels, init_scale=1.0, with_bias=True, name=None):
    """`conv_1d`: a `hk.Linear` with VarianceScaling(init_scale) weights."""
    return hk.Linear(output_size=output_channels, with_bias=with_bias,
                     w_init=hk.initializers.VarianceScaling(init_scale), name=name)


def layer_norm(x, name=None):
    """`layer_norm`: LayerNorm over the last axis with `scale` and `offset` [C]."""
    return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)(x)


def make_cross_attention_mask(query_mask, kv_mask):
    """[B,T] x [B,S] -> [B,T,S] outer product."""
    return jax.vmap(jnp.outer)(query_mask, kv_mask)


class Attention(hk.Module):
    """`Attention`: q/k/v projections `linear`, `linear_1`, `linear_2`, output `linear_3`.

    Channels default to qk = C(inputs_q), v = qk, output = v.
    """

    def __init__(self, num_heads=8, init_scale=1.0, with_final_bias=True,
                 final_init_scale_multiplier=1., dropout_prob=0.0, qk_channels=None,
                 v_channels=None, output_channels=None, name=None):
        super().__init__(name=name)
        self._num_heads = num_heads
        self._init_scale = init_scale
        self._with_final_bias = with_final_bias
        self._final_init_scale = final_init_scale_multiplier * init_scale
        self._dropout_prob = dropout_prob
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._output_channels = output_channels

    def __call__(self, inputs_q, inputs_kv, attention_mask=None):
        qk_channels = inputs_q.shape[-1] if self._qk_channels is None else self._qk_channels
        v_channels = qk_channels if self._v_channels is None else self._v_channels
        output_channels = v_channels if self._output_channels is None else self._output_channels
        if qk_channels % self._num_heads or v_channels % self._num_heads:
            raise ValueError(f'qk_channels ({qk_channels}) and v_channels ({v_channels}) must '
                             f'be divisible by num_heads ({self._num_heads}).')
        q = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_q)
        k = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_kv)
        v = conv_1d(v_channels, init_scale=self._init_scale)(inputs_kv)
        batch, q_len, _ = q.shape
        kv_len = k.shape[1]
        heads = self._num_heads
        q = jnp.reshape(q, [batch, q_len, heads, qk_channels // heads])
        k = jnp.reshape(k, [batch, kv_len, heads, qk_channels // heads])
        v = jnp.reshape(v, [batch, kv_len, heads, v_channels // heads])
        result = attend(q, k, v, dropout_prob=self._dropout_prob, attention_mask=attention_mask)
        return conv_1d(output_channels, with_bias=self._with_final_bias,
                       init_scale=self._final_init_scale)(result)


class MLP(hk.Module):
    """`MLP`: `linear` [C, wf*C] -> tanh-approximate GELU -> `linear_1` [wf*C, C] -> dropout."""

    def __init__(self, widening_factor=4, dropout_prob=0.0, init_scale=1., name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._init_scale = init_scale

    def __call__(self, x, *, is_training):
        channels = x.shape[-1]
        x = conv_1d(self._widening_factor * channels, init_scale=self._init_scale)(x)
        x = jax.nn.gelu(x)
        x = conv_1d(channels, init_scale=self._init_scale)(x)
        return hk.dropout(hk.next_rng_key(), self._dropout_prob if is_training else 0.0, x)


class SelfAttention(hk.Module):
    """`SelfAttention`: x += Attn(LN(x)) with `layer_norm`; x += MLP(LN(x)) with `layer_norm_1`."""

    def __init__(self, widening_factor=4, dropout_prob=0.0, dropout_attn_prob=0.0, num_heads=8,
                 att_init_scale=1.0, dense_init_scale=1.0, qk_channels=None, v_channels=None,
                 name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(self, inputs, *, attention_mask=None, is_training):
        dropout_prob = self._dropout_prob if is_training else 0.0
        dropout_attn_prob = self._dropout_attn_prob if is_training else 0.0
        qkv_inputs = layer_norm(inputs)
        attention = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale,
            qk_channels=self._qk_channels, v_channels=self._v_channels,
            dropout_prob=dropout_attn_prob)(qkv_inputs, qkv_inputs, attention_mask=attention_mask)
        x = inputs + hk.dropout(hk.next_rng_key(), dropout_prob, attention)
        mlp = MLP(widening_factor=self._widening_factor, dropout_prob=dropout_prob,
                  init_scale=self._dense_init_scale)
        return x + mlp(layer_norm(x), is_training=is_training)


class CrossAttention(hk.Module):
    """`CrossAttention`: LNs `layer_norm` (q), `layer_norm_1` (kv), `layer_norm_2` (pre-MLP).

    Output channels are C(q); qk channels default to C(kv) ('kv') or C(q) ('q').
    """

    def __init__(self, widening_factor=1, dropout_prob=0.0, dropout_attn_prob=0.0, num_heads=8,
                 att_init_scale=1.0, dense_init_scale=1.0, shape_for_attn='kv',
                 use_query_residual=True, qk_channels=None, v_channels=None, name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._shape_for_attn = shape_for_attn
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(self, inputs_q, inputs_kv, *, attention_mask=None, is_training):
        dropout_prob = self._dropout_prob if is_training else 0.0
        dropout_attn_prob = self._dropout_attn_prob if is_training else 0.0
        if self._shape_for_attn == 'q':
            qk_channels = inputs_q.shape[-1]
        elif self._shape_for_attn == 'kv':
            qk_channels = inputs_kv.shape[-1]
        else:
            raise ValueError(f'Unknown value {self._shape_for_attn} for shape_for_attention.')
        if self._qk_channels is not None:
            qk_channels = self._qk_channels
        attention = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale,
            dropout_prob=dropout_attn_prob, qk_channels=qk_channels,
            v_channels=self._v_channels, output_channels=inputs_q.shape[-1])(
                layer_norm(inputs_q), layer_norm(inputs_kv), attention_mask=attention_mask)
        attention = hk.dropout(hk.next_rng_key(), dropout_prob, attention)
        x = inputs_q + attention if self._use_query_residual else attention
        mlp = MLP(widening_factor=self._widening_factor, dropout_prob=dropout_prob,
                  init_scale=self._dense_init_scale)
        return x + mlp(layer_norm(x), is_training=is_training)


class Perceiver(hk.Module):
    """`Perceiver`: preprocessor -> encoder -> decoder -> postprocessor (no parameters).

    Records `encoder_inputs`, `inputs_without_pos`, `encoder_query`, `decoder_query`, `z`,
    `decoder_outputs` and `perceiver_outputs`.
    """

    def __init__(self, encoder, decoder, input_preprocessor=None, output_postprocessor=None,
                 name='perceiver'):
        super().__init__(name=name)
        self._input_preprocessor = input_preprocessor
        self._output_postprocessor = output_postprocessor
        self._decoder = decoder
        self._encoder = encoder

    def __call__(self, inputs, *, is_training, subsampled_output_points=None, pos=None,
                 input_mask=None, query_mask=None):
        modality_sizes = inputs_without_pos = None
        if self._input_preprocessor:
            inputs, modality_sizes, inputs_without_pos = self._input_preprocessor(
                inputs, pos=pos, is_training=is_training,
                network_input_is_1d=self._encoder._input_is_1d)
        record('encoder_inputs', inputs)
        record('inputs_without_pos', inputs_without_pos)

        encoder_query = self._encoder.latents(inputs)
        decoder_query = self._decoder.decoder_query(
            inputs, modality_sizes, inputs_without_pos, subsampled_points=subsampled_output_points)
        record('encoder_query', encoder_query)
        record('decoder_query', decoder_query)

        z = self._encoder(inputs, encoder_query, is_training=is_training, input_mask=input_mask)
        record('z', z)
        _, output_modality_sizes = self._decoder.output_shape(inputs)
        output_modality_sizes = output_modality_sizes or modality_sizes

        outputs = self._decoder(decoder_query, z, is_training=is_training, query_mask=query_mask)
        record('decoder_outputs', outputs)
        if self._output_postprocessor:
            outputs = self._output_postprocessor(
                outputs, is_training=is_training, modality_sizes=output_modality_sizes)
        record('perceiver_outputs', outputs)
        return outputs


class PerceiverEncoder(hk.Module):
    """`PerceiverEncoder`: latents `trainable_position_encoding` [M, C], one `cross_attention`,
    then `num_blocks` passes over `self_attention{,_1,...}` (weights shared across blocks).

    Records `encoder_cross_attention` and `encoder_self_attention_{k}` (latents [B, M, C]).
    """

    def __init__(self, num_self_attends_per_block=6, num_blocks=8, z_index_dim=512,
                 num_z_channels=1024, qk_channels=None, v_channels=None, num_cross_attend_heads=1,
                 num_self_attend_heads=8, cross_attend_widening_factor=1,
                 self_attend_widening_factor=1, dropout_prob=0.0, z_pos_enc_init_scale=0.02,
                 cross_attention_shape_for_attn='kv', use_query_residual=True,
                 name='perceiver_encoder'):
        super().__init__(name=name)
        if num_z_channels % num_self_attend_heads or num_z_channels % num_cross_attend_heads:
            raise ValueError(f'num_z_channels ({num_z_channels}) must be divisible by the '
                             'number of self- and cross-attend heads.')
        self._input_is_1d = True
        self._num_blocks = num_blocks
        self.z_pos_enc = position_encoding.TrainablePositionEncoding(
            index_dim=z_index_dim, num_channels=num_z_channels, init_scale=z_pos_enc_init_scale)
        self.cross_attend = CrossAttention(
            dropout_prob=dropout_prob, num_heads=num_cross_attend_heads,
            widening_factor=cross_attend_widening_factor,
            shape_for_attn=cross_attention_shape_for_attn, qk_channels=qk_channels,
            v_channels=v_channels, use_query_residual=use_query_residual)
        self.self_attends = [
            SelfAttention(num_heads=num_self_attend_heads, dropout_prob=dropout_prob,
                          qk_channels=qk_channels, v_channels=v_channels,
                          widening_factor=self_attend_widening_factor)
            for _ in range(num_self_attends_per_block)
        ]

    def latents(self, inputs):
        """Initial latents [B, M, C]."""
        return self.z_pos_enc(batch_size=inputs.shape[0])

    def __call__(self, inputs, z, *, is_training, input_mask=None):
        attention_mask = None
        if input_mask is not None:
            attention_mask = make_cross_attention_mask(
                query_mask=jnp.ones(z.shape[:2], dtype=jnp.int32), kv_mask=input_mask)
        z = self.cross_attend(z, inputs, is_training=is_training, attention_mask=attention_mask)
        record('encoder_cross_attention', z)
        step = 0
        for _ in range(self._num_blocks):
            for self_attend in self.self_attends:
                z = self_attend(z, is_training=is_training)
                record(f'encoder_self_attention_{step}', z)
                step += 1
        return z


class ProjectionDecoder(hk.Module):
    """`ProjectionDecoder` (no cross-attention): the mean of z over its M latents, then the
    Linear `logits` [C, num_classes] (zero weight init) built in `__init__`:
    z [B, M, C] -> [B, num_classes].

    `final_avg_before_project` is accepted and ignored, as in the official code (which always
    averages).
    """

    def __init__(self, num_classes, final_avg_before_project=False, name='projection_decoder'):
        super().__init__(name=name)
        self._final_avg_before_project = final_avg_before_project
        self._num_classes = num_classes
        self.final_layer = hk.Linear(num_classes, w_init=jnp.zeros, name='logits')

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None,
                      subsampled_points=None):
        return None

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self.final_layer(jnp.mean(z, axis=1, dtype=z.dtype))


class BasicDecoder(hk.Module):
    """`BasicDecoder`: queries from a position encoding built in `__init__` (`~/trainable_position_
    encoding`, or parameter-free Fourier features; `~/position_encoding_projector/linear` when
    `project_pos_dim` > 0), decoded by a `cross_attention` over z (widening factor 1, no dropout),
    then the optional final Linear `output`: query [B, O, Cq], z [B, M, C] -> [B, O, channels].
    """

    def __init__(self, output_num_channels, position_encoding_type='trainable',
                 output_index_dims=None, subsampled_index_dims=None, num_z_channels=1024,
                 qk_channels=None, v_channels=None, use_query_residual=False, output_w_init=None,
                 concat_preprocessed_input=False, num_heads=1, name='basic_decoder',
                 final_project=True, **position_encoding_kwargs):
        super().__init__(name=name)
        del num_z_channels  # Accepted and ignored, as in the official code.
        self._position_encoding_type = position_encoding_type
        self.output_pos_enc = None
        if position_encoding_type != 'none':
            self.output_pos_enc = position_encoding.build_position_encoding(
                position_encoding_type, index_dims=output_index_dims,
                **position_encoding_kwargs)
        self._output_index_dim = output_index_dims
        self._subsampled_index_dims = (
            output_index_dims if subsampled_index_dims is None else subsampled_index_dims)
        self._output_num_channels = output_num_channels
        self._output_w_init = output_w_init
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._final_project = final_project
        self._num_heads = num_heads
        self._concat_preprocessed_input = concat_preprocessed_input

    def output_shape(self, inputs):
        return (inputs[0], self._subsampled_index_dims, self._output_num_channels), None

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None,
                      subsampled_points=None):
        """Queries [B, O, C] (O = len(subsampled_points) when given, whose positions are
        -1 + 2*index/dim), preceded on channels by `inputs_without_pos` when
        `concat_preprocessed_input`. With position_encoding_type 'none' the queries must come from
        elsewhere (a `MultimodalDecoder`, or a `FlowDecoder` whose queries are its inputs)."""
        assert self._position_encoding_type != 'none', 'Queries come from elsewhere.'
        batch_size = inputs.shape[0]
        if subsampled_points is not None:
            pos = jnp.stack(jnp.unravel_index(subsampled_points, self._output_index_dim), axis=1)
            pos = -1 + 2 * pos / jnp.array(self._output_index_dim)[None, :]
            pos = jnp.broadcast_to(pos[None], [batch_size, pos.shape[0], pos.shape[1]])
            pos_emb = self.output_pos_enc(batch_size=batch_size, pos=pos)
            pos_emb = jnp.reshape(pos_emb, [pos_emb.shape[0], -1, pos_emb.shape[-1]])
        else:
            pos_emb = self.output_pos_enc(batch_size=batch_size)
        if self._concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError('inputs_without_pos is required when '
                                 'concat_preprocessed_input is True.')
            pos_emb = jnp.concatenate([inputs_without_pos, pos_emb], axis=-1)
        return pos_emb

    def __call__(self, query, z, *, is_training, query_mask=None):
        attention_mask = None
        if query_mask is not None:
            attention_mask = make_cross_attention_mask(
                query_mask=query_mask, kv_mask=jnp.ones(z.shape[:2], dtype=jnp.int32))
        cross_attend = CrossAttention(
            dropout_prob=0.0, num_heads=self._num_heads, widening_factor=1, shape_for_attn='kv',
            qk_channels=self._qk_channels, v_channels=self._v_channels,
            use_query_residual=self._use_query_residual)
        final_layer = hk.Linear(self._output_num_channels, w_init=self._output_w_init,
                                name='output')
        output = cross_attend(query, z, is_training=is_training, attention_mask=attention_mask)
        if self._final_project:
            output = final_layer(output)
        return output


class ClassificationDecoder(hk.Module):
    """`ClassificationDecoder`: a `basic_decoder` with one query; logits [B, num_classes]."""

    def __init__(self, num_classes, name='classification_decoder', **decoder_kwargs):
        super().__init__(name=name)
        self._num_classes = num_classes
        self.decoder = BasicDecoder(output_index_dims=(1,), output_num_channels=num_classes,
                                    **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None,
                      subsampled_points=None):
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos,
                                          subsampled_points=subsampled_points)

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self.decoder(query, z, is_training=is_training)[:, 0, :]


class MultimodalDecoder(hk.Module):
    """`MultimodalDecoder`: per-modality decoders build queries, each padded with
    `~decoder_query/{modality}_padding` [1, k] to max C + `min_padding_size`, concatenated in
    sorted modality order and decoded by one shared `basic_decoder` (no position encoding).
    """

    def __init__(self, modalities, num_outputs, output_num_channels, min_padding_size=2,
                 subsampled_index_dims=None, name='multimodal_decoder', **decoder_kwargs):
        super().__init__(name=name)
        self._modalities = modalities
        self._subsampled_index_dims = subsampled_index_dims
        self._min_padding_size = min_padding_size
        self._output_num_channels = output_num_channels
        self._num_outputs = num_outputs
        self._decoder = BasicDecoder(output_index_dims=(num_outputs,),
                                     output_num_channels=output_num_channels,
                                     position_encoding_type='none', **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes, inputs_without_pos=None,
                      subsampled_points=None):
        inputs = io_processors.restructure(modality_sizes, inputs)
        subsampled_points = subsampled_points or {}
        queries = {}
        for modality, decoder in self._modalities.items():
            queries[modality] = decoder.decoder_query(
                inputs=inputs[modality], modality_sizes=None,
                inputs_without_pos=(inputs_without_pos or {}).get(modality),
                subsampled_points=subsampled_points.get(modality))
        num_channels = max(q.shape[2] for q in queries.values()) + self._min_padding_size

        def embed(modality, x):
            x = jnp.reshape(x, [x.shape[0], int(np.prod(x.shape[1:-1])), x.shape[-1]])
            pad = position_encoding.TrainablePositionEncoding(
                1, num_channels=num_channels - x.shape[2], init_scale=0.02,
                name=f'{modality}_padding')(x.shape[0])
            pad = jnp.broadcast_to(pad, [x.shape[0], x.shape[1], num_channels - x.shape[2]])
            return jnp.concatenate([x, pad], axis=2)

        return jnp.concatenate(
            [embed(m, queries[m]) for m in sorted(self._modalities)], axis=1)

    def output_shape(self, inputs):
        if self._subsampled_index_dims is not None:
            num_outputs = sum(self._subsampled_index_dims.values())
        else:
            num_outputs = self._num_outputs
        return ((inputs.shape[0], num_outputs, self._output_num_channels),
                self._subsampled_index_dims)

    def __call__(self, query, z, *, is_training, query_mask=None):
        return self._decoder(query, z, is_training=is_training)


class BasicVideoAutoencodingDecoder(hk.Module):
    """`BasicVideoAutoencodingDecoder`: a `basic_decoder` over index dims (T, H, W)."""

    def __init__(self, output_shape, position_encoding_type,
                 name='basic_video_autoencoding_decoder', **decoder_kwargs):
        super().__init__(name=name)
        if len(output_shape) != 4:
            raise ValueError(f'Expected rank 4 output_shape, got {output_shape}.')
        self._output_shape = list(output_shape)
        self._output_num_channels = decoder_kwargs['output_num_channels']
        self.decoder = BasicDecoder(output_index_dims=tuple(self._output_shape[1:4]),
                                    position_encoding_type=position_encoding_type,
                                    **decoder_kwargs)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None,
                      subsampled_points=None):
        return self.decoder.decoder_query(inputs, modality_sizes=modality_sizes,
                                          inputs_without_pos=inputs_without_pos,
                                          subsampled_points=subsampled_points)

    def output_shape(self, inputs):
        return [inputs.shape[0]] + self._output_shape[1:] + [self._output_num_channels], None

    def __call__(self, query, z, *, is_training, query_mask=None):
        output = self.decoder(query, z, is_training=is_training)
        return jnp.reshape(output, self._output_shape + [output.shape[-1]])


class FlowDecoder(hk.Module):
    """`FlowDecoder`: queries are the preprocessed inputs [B, H*W, C]; a `basic_decoder`
    predicts [B, H*W, 2], divided by `rescale_factor` and reshaped to [B, H, W, 2].
    """

    def __init__(self, output_image_shape, output_num_channels=2, rescale_factor=100.0,
                 name='flow_decoder', **decoder_kwargs):
        super().__init__(name=name)
        self._output_image_shape = output_image_shape
        self._output_num_channels = output_num_channels
        self._rescale_factor = rescale_factor
        self.decoder = BasicDecoder(output_num_channels=output_num_channels, **decoder_kwargs)

    def output_shape(self, inputs):
        return ((inputs.shape[0],) + tuple(self._output_image_shape)
                + (self._output_num_channels,), None)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None,
                      subsampled_points=None):
        if subsampled_points is not None:
            raise ValueError("FlowDecoder doesn't support subsampling.")
        return inputs

    def __call__(self, query, z, *, is_training, query_mask=None):
        preds = self.decoder(query, z, is_training=is_training) / self._rescale_factor
        return preds.reshape(
            [preds.shape[0]] + list(self._output_image_shape) + [preds.shape[-1]])
