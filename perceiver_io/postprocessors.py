"""Output postprocessors: decoder outputs to task outputs, mirroring the official `io_processors.py`.
Each is called as `postprocessor(x, modality_sizes)`, as the official `Perceiver` calls them."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .configs import (
    AudioPostprocessorConfig,
    ClassificationPostprocessorConfig,
    IdentityPostprocessorConfig,
    ImagePostprocessorConfig,
    ProjectionPostprocessorConfig,
)
from .conv import Conv2DUpsample, Conv3DUpsample
from .errors import ConfigError, InputError


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

    def forward(self, x: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        return self.linear(x)


class AudioPostprocessor(ProjectionPostprocessor):
    """Official `AudioPostprocessor`: a Linear to `samples_per_patch` samples per token, then the patches
    joined: [B,N,C] -> [B,N*samples_per_patch]."""

    def forward(self, x: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        return self.linear(x).reshape(x.shape[0], -1)


class ClassificationPostprocessor(ProjectionPostprocessor):
    """Official `ClassificationPostprocessor`: a Linear to the classes, first token: [B,N,C] -> [B,classes]."""

    def forward(self, x: torch.Tensor, modality_sizes=None) -> torch.Tensor:
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


class IdentityPostprocessor(nn.Module):
    """Official `IdentityPostprocessor`: returns its input."""

    def forward(self, x, modality_sizes=None):
        return x


def reverse_space_to_depth(x: torch.Tensor, temporal_block_size: int = 1, spatial_block_size: int = 1) -> torch.Tensor:
    """Official `reverse_space_to_depth`: [B,H,W,(s s C)] -> [B,H*s,W*s,C], or [B,T,H,W,(t s s C)] ->
    [B,T*t,H*s,W*s,C] (channels ordered (dt, dh, dw, c))."""
    s, t = spatial_block_size, temporal_block_size
    if x.ndim == 4:
        b, h, w, c = x.shape
        return x.reshape(b, h, w, s, s, c // (s * s)).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, -1)
    if x.ndim == 5:
        b, n, h, w, c = x.shape
        x = x.reshape(b, n, h, w, t, s, s, c // (t * s * s)).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(b, n * t, h * s, w * s, -1)
    raise InputError(f"reverse_space_to_depth takes rank-4 or rank-5 inputs, got shape {tuple(x.shape)}")


class ImagePostprocessor(nn.Module):
    """Official `ImagePostprocessor` over channels-last outputs, optionally reshaped first to
    [B,*input_reshape_size,C]: 'pixels' (unchanged), 'conv1x1' (a 1x1 convolution `conv2_d`), 'conv'
    (`Conv2DUpsample`, per frame for video, or `Conv3DUpsample` when upsampling in time), 'patches'
    (`reverse_space_to_depth`)."""

    def __init__(self, config: ImagePostprocessorConfig, in_channels: int):
        super().__init__()
        self.config = config
        self.conv1x1 = self.convnet = None
        if config.postproc_type == "pixels":
            if config.spatial_upsample != 1 or config.temporal_upsample != 1:
                raise ConfigError("'pixels' image postprocessing does not upsample")
        elif config.postproc_type == "conv1x1":
            if config.temporal_upsample != 1 or config.n_outputs == -1:
                raise ConfigError("'conv1x1' image postprocessing needs n_outputs and does not upsample in time")
            self.conv1x1 = nn.Conv2d(in_channels, config.n_outputs, kernel_size=1, stride=config.spatial_upsample)
        elif config.postproc_type == "conv":
            if config.n_outputs == -1:
                raise ConfigError("'conv' image postprocessing needs n_outputs")
            if config.temporal_upsample != 1:
                self.convnet = Conv3DUpsample(
                    in_channels,
                    config.n_outputs,
                    round(math.log2(config.temporal_upsample)),
                    round(math.log2(config.spatial_upsample)),
                )
            else:
                self.convnet = Conv2DUpsample(in_channels, config.n_outputs)

    def forward(self, x: torch.Tensor, modality_sizes=None) -> torch.Tensor:
        config = self.config
        if config.input_reshape_size is not None:
            x = x.reshape(x.shape[0], *config.input_reshape_size, x.shape[-1])
        if self.convnet is not None:
            if x.ndim == 5 and config.temporal_upsample == 1:
                frames = self.convnet(x.flatten(0, 1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
                return frames.unflatten(0, x.shape[:2])
            channels_first = x.movedim(-1, 1)
            return self.convnet(channels_first).movedim(1, -1)
        if self.conv1x1 is not None:
            return self.conv1x1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if config.postproc_type == "patches":
            return reverse_space_to_depth(x, config.temporal_upsample, config.spatial_upsample)
        return x


@functools.singledispatch
def custom_postprocessor(config, channels: int) -> nn.Module | None:
    """A custom model's output postprocessor of `config`'s type, over decoder outputs of `channels`; None
    for a model without one."""
    raise ConfigError(f"no PyTorch output postprocessor for {type(config).__name__}")


@custom_postprocessor.register(type(None))
def _no_postprocessor(config: None, channels: int) -> None:
    return None


@custom_postprocessor.register(IdentityPostprocessorConfig)
def _identity_postprocessor(config: IdentityPostprocessorConfig, channels: int) -> IdentityPostprocessor:
    return IdentityPostprocessor()


@custom_postprocessor.register(ProjectionPostprocessorConfig)
def _projection_postprocessor(config: ProjectionPostprocessorConfig, channels: int) -> ProjectionPostprocessor:
    return ProjectionPostprocessor(channels, config.num_outputs)


@custom_postprocessor.register(ClassificationPostprocessorConfig)
def _classification_postprocessor(config: ClassificationPostprocessorConfig,
                                  channels: int) -> ClassificationPostprocessor:
    return ClassificationPostprocessor(channels, config.num_classes)


@custom_postprocessor.register(AudioPostprocessorConfig)
def _audio_postprocessor(config: AudioPostprocessorConfig, channels: int) -> AudioPostprocessor:
    return AudioPostprocessor(channels, config.samples_per_patch)


@custom_postprocessor.register(ImagePostprocessorConfig)
def _image_postprocessor(config: ImagePostprocessorConfig, channels: int) -> ImagePostprocessor:
    return ImagePostprocessor(config, channels)
