"""Decoders, mirroring the official `BasicDecoder`."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention, make_cross_attention_mask
from .configs import DecoderConfig
from .position_encoding import TrainablePositionEncoding


class BasicDecoder(nn.Module):
    """Queries cross-attend to the latents z, then an optional final Linear (official `BasicDecoder`).

    `decoder_query` builds the queries [B,O,Cq] (trainable position encodings, official leaf
    `basic_decoder/~/trainable_position_encoding`); forward(query, z [B,N,Cz], query_mask [B,O]) ->
    [B,O,output_num_channels] with `final_project`, else [B,O,Cq].
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        position_encoding = config.query_position_encoding
        self.output_position_encoding = TrainablePositionEncoding(
            config.num_queries, position_encoding.num_channels, position_encoding.init_scale
        )
        query_channels = position_encoding.num_channels
        self.cross_attention = CrossAttention(
            q_channels=query_channels,
            kv_channels=config.num_z_channels,
            num_heads=config.num_heads,
            qk_channels=config.qk_channels,
            v_channels=config.v_channels,
            widening_factor=1,
            use_query_residual=config.use_query_residual,
        )
        self.output = nn.Linear(query_channels, config.output_num_channels) if config.final_project else None

    def decoder_query(self, inputs: torch.Tensor) -> torch.Tensor:
        """Queries for a batch of preprocessed inputs [B,M,C]: [B,O,Cq]."""
        return self.output_position_encoding(inputs.shape[0])

    def forward(self, query: torch.Tensor, z: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        attention_mask = None
        if query_mask is not None:
            latent_mask = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
            attention_mask = make_cross_attention_mask(query_mask, latent_mask)
        out = self.cross_attention(query, z, attention_mask)
        return self.output(out) if self.output is not None else out
