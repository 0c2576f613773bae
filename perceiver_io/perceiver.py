"""The Perceiver composition, mirroring the official `Perceiver`: preprocess the inputs, encode them into
latents, build the decoder queries, decode, postprocess."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import PerceiverEncoder
from .preprocessors import PreprocessorOutput


class Perceiver(nn.Module):
    """inputs -> outputs, in the official call order: preprocessor (optional), latents, decoder queries,
    encoder (masked by `input_mask` [B,M]), decoder (masked by `query_mask` [B,O]), postprocessor
    (optional; it receives the decoder's per-modality output sizes).

    Without a preprocessor, `inputs` is the encoder's input array [B,M,C]. `encode` and `decode` are the
    two halves, so that one encoding can be decoded in chunks of queries (`subsampled_points`).
    """

    def __init__(
        self,
        encoder: PerceiverEncoder,
        decoder: nn.Module,
        input_preprocessor: nn.Module | None = None,
        output_postprocessor: nn.Module | None = None,
    ):
        super().__init__()
        self.input_preprocessor = input_preprocessor
        self.encoder = encoder
        self.decoder = decoder
        self.output_postprocessor = output_postprocessor

    def encode(self, inputs, input_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, PreprocessorOutput]:
        """The latents z [B,N,C] and the preprocessed inputs."""
        if self.input_preprocessor is not None:
            preprocessed = self.input_preprocessor(inputs)
        else:
            preprocessed = PreprocessorOutput(inputs, None, inputs)
        latents = self.encoder.latents(preprocessed.inputs.shape[0])
        return self.encoder(preprocessed.inputs, latents, input_mask), preprocessed

    def decode(
        self,
        z: torch.Tensor,
        preprocessed: PreprocessorOutput,
        query_mask: torch.Tensor | None = None,
        subsampled_points=None,
    ):
        """Decodes the latents at the decoder's queries (or at `subsampled_points` of them)."""
        query = self.decoder.decoder_query(
            preprocessed.inputs, preprocessed.modality_sizes, preprocessed.inputs_without_pos, subsampled_points
        )
        out = self.decoder(query, z, query_mask)
        if self.output_postprocessor is None:
            return out
        output_sizes = getattr(self.decoder, "output_sizes", None)  # a multimodal decoder's own split
        sizes = output_sizes(subsampled_points) if output_sizes else preprocessed.modality_sizes
        return self.output_postprocessor(out, sizes)

    def forward(self, inputs, input_mask=None, query_mask=None, subsampled_points=None):
        z, preprocessed = self.encode(inputs, input_mask)
        return self.decode(z, preprocessed, query_mask, subsampled_points)
