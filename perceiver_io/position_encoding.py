"""Position encodings, mirroring `perceiver/position_encoding.py` of the official code."""

from __future__ import annotations

import torch
from torch import nn


class TrainablePositionEncoding(nn.Module):
    """A learned table `embeddings [index_dim, C]` broadcast over the batch (official
    `TrainablePositionEncoding`, leaf `pos_embs`); forward(batch_size) -> [B, index_dim, C].

    Initialised as the official one: truncated normal (at +-2 std) with std `init_scale`.
    """

    def __init__(self, index_dim: int, num_channels: int, init_scale: float = 0.02):
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(index_dim, num_channels))
        nn.init.trunc_normal_(self.embeddings, std=init_scale, a=-2 * init_scale, b=2 * init_scale)

    @property
    def num_channels(self) -> int:
        return self.embeddings.shape[-1]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embeddings.expand(batch_size, -1, -1)
