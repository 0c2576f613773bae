"""Decoders, mirroring the official `BasicDecoder`, `ClassificationDecoder`, `FlowDecoder` and
`MultimodalDecoder`."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import nn

from .attention import CrossAttention, make_cross_attention_mask
from .configs import ClassificationDecoderConfig, DecoderConfig, FlowDecoderConfig, ProjectionDecoderConfig
from .errors import ConfigError, InputError
from .inputs import check_index_range
from .position_encoding import TrainablePositionEncoding, build_position_encoding, subsampled_positions


class DecoderQueries(nn.Module):
    """The queries of a decoder, as the official `BasicDecoder.decoder_query` builds them: a position
    encoding over `output_index_dims` ('trainable' or 'fourier'), after the preprocessed inputs without
    positions when `concat_preprocessed_input` (their width is `input_channels`).

    forward(inputs [B,M,C], subsampled_points, inputs_without_pos) -> [B,O,Cq], or [B,len(points),Cq]
    for flat `subsampled_points` into `output_index_dims` (positions -1 + 2 * coordinate / n).
    """

    def __init__(self, config: DecoderConfig, input_channels: int | None = None):
        super().__init__()
        self.index_dims = config.index_dims
        self.concat_preprocessed_input = config.concat_preprocessed_input
        self.position_encoding = build_position_encoding(
            config.position_encoding_type,
            self.index_dims,
            config.project_pos_dim,
            trainable=config.trainable_position_encoding_kwargs,
            fourier=config.fourier_position_encoding_kwargs,
        )
        self.num_channels = self.position_encoding.num_channels
        if self.concat_preprocessed_input:
            if input_channels is None:
                raise ConfigError("concat_preprocessed_input needs the width of the preprocessed inputs")
            self.num_channels += input_channels

    def forward(self, inputs: torch.Tensor, subsampled_points=None, inputs_without_pos=None) -> torch.Tensor:
        batch_size = inputs.shape[0]
        pos = None
        if subsampled_points is not None:
            points = torch.as_tensor(subsampled_points)  # checked where it is (chunks() makes them on the CPU)
            if points.ndim != 1 or points.is_floating_point() or points.dtype == torch.bool:
                raise InputError(f"subsampled_points: expected flat integer indices [N] into the "
                                 f"{'x'.join(map(str, self.index_dims))} grid, got {points.dtype} {list(points.shape)}")
            check_index_range("subsampled_points", points, math.prod(self.index_dims))
            pos = subsampled_positions(points.to(inputs.device), self.index_dims)
            pos = pos.expand(batch_size, -1, -1)
        queries = self.position_encoding(batch_size, self.index_dims, pos, inputs.device, inputs.dtype)
        if self.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise InputError("concat_preprocessed_input needs the preprocessed inputs without positions")
            queries = torch.cat([inputs_without_pos, queries], dim=-1)
        return queries


class BasicDecoder(nn.Module):
    """Queries cross-attend to the latents z, then an optional final Linear (official `BasicDecoder`).

    `decoder_query` builds the queries [B,O,Cq] (`DecoderQueries`; with position encoding 'none' the
    caller brings queries of `query_channels`). forward(query, z [B,N,z_channels], query_mask [B,O])
    -> [B,O,output_num_channels] with `final_project`, else [B,O,Cq]. As in the official code, the
    config's `num_z_channels` is not used: the latents' width is the encoder's.
    """

    def __init__(
        self,
        config: DecoderConfig,
        z_channels: int,
        query_channels: int | None = None,
        input_channels: int | None = None,
    ):
        super().__init__()
        self.config = config
        if config.position_encoding_type == "none":
            if query_channels is None:
                raise ConfigError("a decoder without position encoding needs the width of the queries it is given")
            self.queries = None
        else:
            self.queries = DecoderQueries(config, input_channels)
            query_channels = self.queries.num_channels
        if config.final_project and config.output_num_channels is None:
            raise ConfigError("decoder output_num_channels is required with final_project")
        self.query_channels = query_channels
        self.cross_attention = CrossAttention(
            q_channels=query_channels,
            kv_channels=z_channels,
            num_heads=config.num_heads,
            qk_channels=config.qk_channels,
            v_channels=config.v_channels,
            widening_factor=1,
            use_query_residual=config.use_query_residual,
        )
        self.output = nn.Linear(query_channels, config.output_num_channels) if config.final_project else None
        self.output_channels = config.output_num_channels if config.final_project else query_channels

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        if self.queries is None:
            raise ConfigError("this decoder has no position encoding to build queries from")
        return self.queries(inputs, subsampled_points, inputs_without_pos)

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        attention_mask = None
        if query_mask is not None:
            latent_mask = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
            attention_mask = make_cross_attention_mask(query_mask, latent_mask)
        out = self.cross_attention(query, z, attention_mask)
        return self.output(out) if self.output is not None else out


class ClassificationDecoder(nn.Module):
    """One trainable query decoded into `num_classes` logits (official `ClassificationDecoder`, a
    `basic_decoder` with `output_index_dims=(1,)`): z [B,N,Cz] -> [B,num_classes]."""

    def __init__(self, config: DecoderConfig, z_channels: int, num_classes: int, input_channels: int | None = None):
        super().__init__()
        self.basic_decoder = BasicDecoder(
            dataclasses.replace(config, output_num_channels=num_classes, output_index_dims=(1,)),
            z_channels,
            input_channels=input_channels,
        )
        self.output_channels = num_classes

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return self.basic_decoder.decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.basic_decoder(query, z)[:, 0, :]


class FlowDecoder(nn.Module):
    """Official `FlowDecoder`: the queries are the preprocessed inputs themselves [B,H*W,Cq]; a
    `basic_decoder` (no query position encoding, no query residual) predicts [B,H*W,2], divided by
    `rescale_factor` and reshaped to [B,*output_image_shape,2]."""

    def __init__(
        self, config: FlowDecoderConfig, z_channels: int, query_channels: int, output_image_shape: tuple[int, int]
    ):
        super().__init__()
        self.config = config
        self.output_image_shape = tuple(output_image_shape)
        self.basic_decoder = BasicDecoder(
            dataclasses.replace(config, position_encoding_type="none"), z_channels, query_channels
        )

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        if subsampled_points is not None:
            raise InputError("the flow decoder predicts every pixel; it does not take subsampled points")
        return inputs

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        flow = self.basic_decoder(query, z) / self.config.rescale_factor
        return flow.reshape(flow.shape[0], *self.output_image_shape, flow.shape[-1])


class MultimodalDecoder(nn.Module):
    """Official `MultimodalDecoder`: each modality's `DecoderQueries` builds its queries, which are padded
    with a learned vector `padding[m]` [1,k] up to max(Cq) + `min_padding_size` channels, concatenated in
    sorted modality order and decoded by one shared `basic_decoder` (no query position encoding):
    z [B,N,Cz] -> [B,sum O_m,output_num_channels]."""

    def __init__(
        self,
        modality_queries: dict[str, DecoderQueries],
        config: DecoderConfig,
        z_channels: int,
        min_padding_size: int = 2,
    ):
        super().__init__()
        self.modalities = sorted(modality_queries)
        self.modality_queries = nn.ModuleDict(modality_queries)
        query_channels = max(q.num_channels for q in modality_queries.values()) + min_padding_size
        self.padding = nn.ModuleDict(
            {m: TrainablePositionEncoding(1, query_channels - q.num_channels) for m, q in modality_queries.items()}
        )
        self.basic_decoder = BasicDecoder(
            dataclasses.replace(config, position_encoding_type="none"), z_channels, query_channels
        )

    def output_sizes(self, subsampled_points: dict | None = None) -> dict[str, int]:
        """Queries per modality: the number of subsampled points, else the whole output grid."""
        subsampled_points = subsampled_points or {}
        return {
            m: len(subsampled_points[m]) if subsampled_points.get(m) is not None else math.prod(queries.index_dims)
            for m, queries in self.modality_queries.items()
        }

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        subsampled_points = subsampled_points or {}
        parts = []
        for modality in self.modalities:
            query = self.modality_queries[modality](inputs, subsampled_points.get(modality), None)
            padding = self.padding[modality](query.shape[0]).to(query.dtype)
            parts.append(torch.cat([query, padding.expand(-1, query.shape[1], -1)], dim=-1))
        return torch.cat(parts, dim=1)

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.basic_decoder(query, z, query_mask)


class ProjectionDecoder(nn.Module):
    """Official `ProjectionDecoder`: no queries; the latents' mean, then a Linear `logits` (zero init):
    z [B,N,C] -> [B,num_classes]."""

    def __init__(self, z_channels: int, num_classes: int):
        super().__init__()
        self.logits = nn.Linear(z_channels, num_classes)
        nn.init.zeros_(self.logits.weight)
        self.output_channels = num_classes

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return None

    def forward(self, query, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(z.mean(dim=1))


@functools.singledispatch
def custom_decoder(config, z_channels: int, preprocessed_channels: int, feature_channels: int) -> nn.Module:
    """A custom model's decoder of `config`'s type, decoding latents of `z_channels`; `preprocessed_channels`
    is the width of the preprocessed inputs (a flow decoder's queries), `feature_channels` that of the inputs
    without positions (concatenated to the queries with `concat_preprocessed_input`)."""
    raise ConfigError(f"no PyTorch decoder for {type(config).__name__}")


@custom_decoder.register(DecoderConfig)
def _basic_decoder(config: DecoderConfig, z_channels: int, preprocessed_channels: int,
                   feature_channels: int) -> BasicDecoder:
    return BasicDecoder(config, z_channels, input_channels=feature_channels)


@custom_decoder.register(ClassificationDecoderConfig)
def _classification_decoder(config: ClassificationDecoderConfig, z_channels: int, preprocessed_channels: int,
                            feature_channels: int) -> ClassificationDecoder:
    return ClassificationDecoder(config, z_channels, config.num_classes, feature_channels)


@custom_decoder.register(FlowDecoderConfig)
def _flow_decoder(config: FlowDecoderConfig, z_channels: int, preprocessed_channels: int,
                  feature_channels: int) -> FlowDecoder:
    return FlowDecoder(config, z_channels, preprocessed_channels, config.output_image_shape)


@custom_decoder.register(ProjectionDecoderConfig)
def _projection_decoder(config: ProjectionDecoderConfig, z_channels: int, preprocessed_channels: int,
                        feature_channels: int) -> ProjectionDecoder:
    return ProjectionDecoder(z_channels, config.num_classes)
