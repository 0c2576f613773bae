"""Input preprocessors: raw inputs to the encoder's input array [B,M,C]."""

from __future__ import annotations

import torch
from torch import nn

from .position_encoding import TrainablePositionEncoding


class TokenPreprocessor(nn.Module):
    """Token embedding plus a learned input position encoding (the language colab's `hk.Embed` and
    top-level `TrainablePositionEncoding`): ids [B,N] -> [B,N,C], N at most `max_seq_len`."""

    def __init__(self, vocab_size: int, num_channels: int, max_seq_len: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, num_channels)
        self.position_encoding = TrainablePositionEncoding(max_seq_len, num_channels)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = inputs.shape
        max_seq_len = self.position_encoding.embeddings.shape[0]
        if seq_len != max_seq_len:
            raise ValueError(
                f"inputs have {seq_len} tokens but the model's position encoding has {max_seq_len}; "
                f"pad the inputs to {max_seq_len} (the tokenizer's pad_to) and pass an input_mask"
            )
        return self.token_embedding(inputs) + self.position_encoding(batch_size)
