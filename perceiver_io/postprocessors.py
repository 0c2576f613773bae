"""Output postprocessors: decoder outputs to task outputs, mirroring the official `io_processors.py`."""

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


class ProjectionPostprocessor(nn.Module):
    """Official `ProjectionPostprocessor`: a Linear, [B,N,C] -> [B,N,num_outputs]."""

    def __init__(self, channels: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class AudioPostprocessor(ProjectionPostprocessor):
    """Official `AudioPostprocessor`: a Linear to `samples_per_patch` samples per token, then the patches
    joined: [B,N,C] -> [B,N*samples_per_patch]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).reshape(x.shape[0], -1)


class ClassificationPostprocessor(ProjectionPostprocessor):
    """Official `ClassificationPostprocessor`: a Linear to the classes, first token: [B,N,C] -> [B,classes]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)[:, 0, :]


class MultimodalPostprocessor(nn.Module):
    """Official `MultimodalPostprocessor`: split [B,sum N_m,C] by modality in sorted order (official
    `restructure`), then each modality's postprocessor: -> {m: output}."""

    def __init__(self, modalities: dict[str, nn.Module]):
        super().__init__()
        self.modalities = nn.ModuleDict(modalities)

    def forward(self, x: torch.Tensor, modality_sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        names = sorted(modality_sizes)
        parts = torch.split(x, [modality_sizes[name] for name in names], dim=1)
        return {name: self.modalities[name](part) for name, part in zip(names, parts)}
