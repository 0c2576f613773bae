"""Decoders of the official `perceiver.py`, as functions of a `Scope`: how each builds its queries and
how it decodes the latents z [B,N,Cz] at them (docs/official-numerics.md: #attention-numerics,
#preprocessors-and-postprocessors)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from perceiver_io.configs import ClassificationDecoderConfig, DecoderConfig, FlowDecoderConfig, ProjectionDecoderConfig
from perceiver_io.errors import ConfigError

from .attention import cross_attention, outer_mask
from .layers import Initializer, linear, truncated_normal, zeros
from .positions import point_positions, position_encoding
from .processors import Preprocessed
from .scope import Scope


def basic_queries(scope: Scope, module: str, config: DecoderConfig, preprocessed: Preprocessed, batch_size: int,
                  subsampled_points: jax.Array | None = None) -> jax.Array:
    """The official `BasicDecoder.decoder_query` of the decoder at `module`: its position encoding
    (`{module}/~/...`) over `output_index_dims`, at the positions of `subsampled_points` (flat indices) when
    given; after the inputs without positions when `concat_preprocessed_input`. -> [B,O,Cq]."""
    if config.position_encoding_type == "none":
        raise ConfigError(f"{module} has no position encoding to build queries from")
    index_dims = config.index_dims
    pos = None
    if subsampled_points is not None:
        subsampled_points = jnp.asarray(subsampled_points)
        pos = jnp.broadcast_to(point_positions(subsampled_points, index_dims),
                               (batch_size, subsampled_points.shape[0], len(index_dims)))
    queries = position_encoding(
        scope, f"{module}/~", config.position_encoding_type, index_dims, batch_size,
        project_pos_dim=config.project_pos_dim, trainable=config.trainable_position_encoding_kwargs,
        fourier=config.fourier_position_encoding_kwargs, pos=pos)
    if config.concat_preprocessed_input:
        if preprocessed.inputs_without_pos is None:
            raise ConfigError(f"{module}: concat_preprocessed_input needs a preprocessor's inputs without positions")
        queries = jnp.concatenate([preprocessed.inputs_without_pos, queries], axis=-1)
    return queries


def basic_decode(scope: Scope, module: str, config: DecoderConfig, query: jax.Array, z: jax.Array,
                 query_mask: jax.Array | None = None, output_init: Initializer | None = None) -> jax.Array:
    """The official `BasicDecoder.__call__`: the queries cross-attend to z (`{module}/cross_attention`,
    widening 1, masked by `query_mask` [B,O]), then the Linear `{module}/output` with `final_project`.
    -> [B,O,output_num_channels] (or [B,O,Cq])."""
    mask = None if query_mask is None else outer_mask(query_mask, jnp.ones(z.shape[:2], jnp.int32))
    out = cross_attention(scope, f"{module}/cross_attention", query, z, num_heads=config.num_heads,
                          qk_channels=config.qk_channels, v_channels=config.v_channels, widening_factor=1,
                          use_query_residual=config.use_query_residual, mask=mask)
    if not config.final_project:
        return out
    if config.output_num_channels is None:
        raise ConfigError(f"{module}: output_num_channels is required with final_project")
    return linear(scope, f"{module}/output", out, config.output_num_channels, output_init)


class Decoder(NamedTuple):
    """A decoder's two calls, as the official decoders have them: `queries()` builds its queries [B,O,Cq]
    (None for a decoder without queries), `decode(query, z)` decodes the latents z [B,N,Cz] at them."""

    queries: Callable[[], jax.Array | None]
    decode: Callable[[jax.Array | None, jax.Array], jax.Array]


def basic_decoder(scope: Scope, module: str, config: DecoderConfig, preprocessed: Preprocessed,
                  subsampled_points=None, query_mask=None) -> Decoder:
    """The official `BasicDecoder` at `module` (queries from its position encoding)."""
    batch_size = preprocessed.inputs.shape[0]
    return Decoder(lambda: basic_queries(scope, module, config, preprocessed, batch_size, subsampled_points),
                   lambda query, z: basic_decode(scope, module, config, query, z, query_mask))


def classification_decoder(scope: Scope, config: DecoderConfig, num_classes: int, preprocessed: Preprocessed,
                           subsampled_points=None) -> Decoder:
    """The official `ClassificationDecoder` (`classification_decoder` unless named): its `~/basic_decoder`
    with one query and `num_classes` outputs, the query's output taken: -> [B,num_classes]."""
    module = f"{config.name or 'classification_decoder'}/~/basic_decoder"
    head = dataclasses.replace(config, output_index_dims=(1,), output_num_channels=num_classes)
    basic = basic_decoder(scope, module, head, preprocessed, subsampled_points)
    return Decoder(basic.queries, lambda query, z: basic.decode(query, z)[:, 0, :])


def flow_decoder(scope: Scope, config: FlowDecoderConfig, image_shape: Sequence[int],
                 preprocessed: Preprocessed) -> Decoder:
    """The official `FlowDecoder` (`flow_decoder` unless named): the queries are the preprocessed inputs; its
    `~/basic_decoder` decodes them (the output Linear starts at zero), divided by `rescale_factor` and
    reshaped to [B,*image_shape,C]."""
    module = f"{config.name or 'flow_decoder'}/~/basic_decoder"

    def decode(query, z):
        out = basic_decode(scope, module, config, query, z, output_init=zeros) / config.rescale_factor
        return out.reshape(out.shape[0], *image_shape, out.shape[-1])

    return Decoder(lambda: preprocessed.inputs, decode)


def projection_decoder(scope: Scope, num_classes: int) -> Decoder:
    """The official `ProjectionDecoder`: no queries; the latents' mean through `projection_decoder/~/logits`
    (zero init): -> [B,num_classes]."""
    def decode(query, z):
        return linear(scope, "projection_decoder/~/logits", jnp.mean(z, axis=1), num_classes, zeros)

    return Decoder(lambda: None, decode)


def multimodal_queries(scope: Scope, modality_queries: Mapping[str, jax.Array], min_padding_size: int) -> jax.Array:
    """The official `MultimodalDecoder.decoder_query` from each modality's queries [B,O_m,C_m]: padded with
    `multimodal_decoder/~decoder_query/{m}_padding` [1,k] to max(C_m) + min_padding_size channels and
    concatenated in sorted modality order."""
    width = max(query.shape[-1] for query in modality_queries.values()) + min_padding_size
    parts = []
    for name in sorted(modality_queries):
        query = modality_queries[name]
        batch, count, channels = query.shape
        padding = scope.param(f"multimodal_decoder/~decoder_query/{name}_padding", "pos_embs", (1, width - channels),
                              truncated_normal(0.02))
        parts.append(jnp.concatenate([query, jnp.broadcast_to(padding, (batch, count, width - channels))], axis=-1))
    return jnp.concatenate(parts, axis=1)


@functools.singledispatch
def custom_decoder(config, scope: Scope, preprocessed: Preprocessed, query_mask, subsampled_points) -> Decoder:
    """A custom model's decoder of `config`'s type, under its official default name."""
    raise ConfigError(f"no reference for the decoder {type(config).__name__}")


@custom_decoder.register(DecoderConfig)
def _basic(config: DecoderConfig, scope: Scope, preprocessed: Preprocessed, query_mask, subsampled_points) -> Decoder:
    return basic_decoder(scope, config.name or "basic_decoder", config, preprocessed, subsampled_points, query_mask)


@custom_decoder.register(ClassificationDecoderConfig)
def _classification(config: ClassificationDecoderConfig, scope: Scope, preprocessed: Preprocessed, query_mask,
                    subsampled_points) -> Decoder:
    return classification_decoder(scope, config, config.num_classes, preprocessed, subsampled_points)


@custom_decoder.register(FlowDecoderConfig)
def _flow(config: FlowDecoderConfig, scope: Scope, preprocessed: Preprocessed, query_mask,
          subsampled_points) -> Decoder:
    return flow_decoder(scope, config, config.output_image_shape, preprocessed)


@custom_decoder.register(ProjectionDecoderConfig)
def _projection(config: ProjectionDecoderConfig, scope: Scope, preprocessed: Preprocessed, query_mask,
                subsampled_points) -> Decoder:
    return projection_decoder(scope, config.num_classes)
