"""The Perceiver IO encoder, mirroring the official `PerceiverEncoder`."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention, make_cross_attention_mask
from .configs import EncoderConfig
from .position_encoding import TrainablePositionEncoding


class PerceiverEncoder(nn.Module):
    """Trainable latents [N,C] cross-attend once to the inputs [B,M,Ci], then `num_blocks` passes
    through a stack of `num_self_attends_per_block` self-attentions whose weights are shared across
    blocks. Output z [B,N,C].
    """

    def __init__(self, config: EncoderConfig, input_channels: int):
        super().__init__()
        self.config = config
        channels = config.num_z_channels
        self.latents = TrainablePositionEncoding(config.z_index_dim, channels, config.z_pos_enc_init_scale)
        self.cross_attention = CrossAttention(
            q_channels=channels,
            kv_channels=input_channels,
            num_heads=config.num_cross_attend_heads,
            qk_channels=config.qk_channels,
            v_channels=config.v_channels,
            widening_factor=config.cross_attend_widening_factor,
            use_query_residual=config.use_query_residual,
            shape_for_attn=config.cross_attention_shape_for_attn,
            dropout_prob=config.dropout_prob,
        )
        self.self_attends = nn.ModuleList(
            SelfAttention(
                channels,
                num_heads=config.num_self_attend_heads,
                qk_channels=config.qk_channels,
                v_channels=config.v_channels,
                widening_factor=config.self_attend_widening_factor,
                dropout_prob=config.dropout_prob,
            )
            for _ in range(config.num_self_attends_per_block)
        )

    def forward(
        self, inputs: torch.Tensor, latents: torch.Tensor, input_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """inputs [B,M,Ci], latents [B,N,C] (from `self.latents`), input_mask [B,M] (nonzero = valid)."""
        attention_mask = None
        if input_mask is not None:
            latent_mask = torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)
            attention_mask = make_cross_attention_mask(latent_mask, input_mask)
        z = self.cross_attention(latents, inputs, attention_mask)
        for _ in range(self.config.num_blocks):
            for self_attend in self.self_attends:
                z = self_attend(z)
        return z
