"""The Perceiver composition, mirroring the official `Perceiver`: preprocess the inputs, encode them into
latents, build the decoder queries, decode."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import PerceiverEncoder
from .preprocessors import PreprocessorOutput


class Perceiver(nn.Module):
    """inputs -> decoder outputs, in the official call order: preprocessor (optional), latents, decoder
    queries, encoder (masked by `input_mask` [B,M]), decoder (masked by `query_mask` [B,O]).

    Without a preprocessor, `inputs` is the encoder's input array [B,M,C].
    """

    def __init__(self, encoder: PerceiverEncoder, decoder: nn.Module, input_preprocessor: nn.Module | None = None):
        super().__init__()
        self.input_preprocessor = input_preprocessor
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self,
        inputs,
        input_mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        subsampled_points=None,
    ) -> torch.Tensor:
        if self.input_preprocessor is not None:
            preprocessed = self.input_preprocessor(inputs)
        else:
            preprocessed = PreprocessorOutput(inputs, None, inputs)
        inputs = preprocessed.inputs
        latents = self.encoder.latents(inputs.shape[0])
        query = self.decoder.decoder_query(
            inputs, preprocessed.modality_sizes, preprocessed.inputs_without_pos, subsampled_points
        )
        z = self.encoder(inputs, latents, input_mask)
        return self.decoder(query, z, query_mask)
