"""Decoders of the official `perceiver.py`, as functions of a `Scope`: how each builds its queries and
how it decodes the latents z [B,N,Cz] at them (NOTES §2, §4)."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from perceiver_io.configs import DecoderConfig

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
        raise ValueError(f"{module} has no position encoding to build queries from")
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
            raise ValueError(f"{module}: concat_preprocessed_input needs a preprocessor's inputs without positions")
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
        raise ValueError(f"{module}: output_num_channels is required with final_project")
    return linear(scope, f"{module}/output", out, config.output_num_channels, output_init)


def classification_config(config: DecoderConfig, num_classes: int) -> DecoderConfig:
    """The `BasicDecoder` inside the official `ClassificationDecoder`: one query, `num_classes` outputs."""
    return dataclasses.replace(config, output_index_dims=(1,), output_num_channels=num_classes)


def flow_decode(scope: Scope, module: str, config, query: jax.Array, z: jax.Array, image_shape) -> jax.Array:
    """The official `FlowDecoder` at `module`: its `~/basic_decoder` decodes the queries (the preprocessed
    inputs), divided by `rescale_factor` and reshaped to [B,*image_shape,C]. The output Linear starts at zero."""
    out = basic_decode(scope, f"{module}/~/basic_decoder", config, query, z, output_init=zeros)
    out = out / config.rescale_factor
    return out.reshape(out.shape[0], *image_shape, out.shape[-1])


def projection_decode(scope: Scope, num_classes: int, z: jax.Array) -> jax.Array:
    """The official `ProjectionDecoder`: the latents' mean through `projection_decoder/~/logits` (zero init)."""
    return linear(scope, "projection_decoder/~/logits", jnp.mean(z, axis=1), num_classes, zeros)


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


def query_count(config: DecoderConfig, subsampled_points: jax.Array | None) -> int:
    """How many queries a decoder makes: one per subsampled point, else one per output index."""
    return math.prod(config.index_dims) if subsampled_points is None else int(subsampled_points.shape[0])
