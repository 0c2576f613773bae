"""The Perceiver composition, mirroring the official `Perceiver`: encode the inputs into latents,
build the decoder queries, decode."""

from __future__ import annotations

import torch
from torch import nn

from .decoders import BasicDecoder
from .encoder import PerceiverEncoder


class Perceiver(nn.Module):
    """inputs [B,M,C] -> decoder outputs [B,O,Co], the official call order:
    latents, decoder queries, encoder (masked by `input_mask` [B,M]), decoder (masked by `query_mask` [B,O]).
    """

    def __init__(self, encoder: PerceiverEncoder, decoder: BasicDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self,
        inputs: torch.Tensor,
        input_mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        latents = self.encoder.latents(inputs.shape[0])
        query = self.decoder.decoder_query(inputs)
        z = self.encoder(inputs, latents, input_mask)
        return self.decoder(query, z, query_mask)
