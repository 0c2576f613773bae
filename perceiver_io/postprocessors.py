"""Output postprocessors: decoder outputs to task outputs."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingDecoder(nn.Module):
    """Logits tied to an input embedding (official `EmbeddingDecoder`):
    x [B,N,C] @ embedding_matrix [V,C].T + bias [V] -> [B,N,V]."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, embedding_matrix: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, embedding_matrix, self.bias)
