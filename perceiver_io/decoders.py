"""Decoders, mirroring the official `BasicDecoder` and `ClassificationDecoder`."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .attention import CrossAttention, make_cross_attention_mask
from .configs import ConfigError, DecoderConfig, FlowDecoderConfig
from .position_encoding import build_position_encoding, subsampled_positions


class BasicDecoder(nn.Module):
    """Queries cross-attend to the latents z, then an optional final Linear (official `BasicDecoder`).

    `decoder_query` builds the queries [B,O,Cq] from a position encoding over `output_index_dims`
    ('trainable' or 'fourier'; with 'none' the caller brings queries of `query_channels`).
    forward(query, z [B,N,z_channels], query_mask [B,O]) -> [B,O,output_num_channels] with
    `final_project`, else [B,O,Cq]. As in the official code, the config's `num_z_channels` is not used:
    the latents' width is the encoder's.
    """

    def __init__(self, config: DecoderConfig, z_channels: int, query_channels: int | None = None):
        super().__init__()
        self.config = config
        if config.position_encoding_type == "none":
            if query_channels is None:
                raise ConfigError("a decoder without position encoding needs the width of the queries it is given")
            self.output_position_encoding = None
        else:
            self.output_position_encoding = build_position_encoding(
                config.position_encoding_type,
                config.index_dims,
                trainable=config.trainable_position_encoding_kwargs,
                fourier=config.fourier_position_encoding_kwargs,
            )
            query_channels = self.output_position_encoding.num_channels
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

    def decoder_query(
        self,
        inputs: torch.Tensor,
        modality_sizes: dict[str, int] | None = None,
        inputs_without_pos: torch.Tensor | None = None,
        subsampled_points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries for a batch of preprocessed inputs [B,M,C]: [B,O,Cq], or [B,len(points),Cq] for
        `subsampled_points` (flat indices into `output_index_dims`)."""
        if self.output_position_encoding is None:
            raise ConfigError("this decoder has no position encoding to build queries from")
        batch_size = inputs.shape[0]
        index_dims = self.config.index_dims
        pos = None
        if subsampled_points is not None:
            pos = subsampled_positions(subsampled_points.to(inputs.device), index_dims)
            pos = pos.expand(batch_size, -1, -1)
        return self.output_position_encoding(batch_size, index_dims, pos, inputs.device, inputs.dtype)

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

    def __init__(self, config: DecoderConfig, z_channels: int, num_classes: int):
        super().__init__()
        self.basic_decoder = BasicDecoder(
            dataclasses.replace(config, output_num_channels=num_classes, output_index_dims=(1,)), z_channels
        )

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
            raise ValueError("the flow decoder predicts every pixel; it does not take subsampled points")
        return inputs

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        flow = self.basic_decoder(query, z) / self.config.rescale_factor
        return flow.reshape(flow.shape[0], *self.output_image_shape, flow.shape[-1])
