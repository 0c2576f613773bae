"""Input preprocessors: raw inputs to the encoder's input array [B,M,C], mirroring the official
`io_processors.py`. Each returns a `PreprocessorOutput` (inputs with positions, modality sizes, inputs
without positions), as the official preprocessors return their triple."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .configs import AudioPreprocessorConfig, ImagePreprocessorConfig, OneHotPreprocessorConfig, PositionedInputsConfig
from .conv import Conv2DDownsample, pad_same
from .errors import ConfigError, InputError
from .position_encoding import TrainablePositionEncoding, build_position_encoding


class PreprocessorOutput(NamedTuple):
    inputs: torch.Tensor
    modality_sizes: dict[str, int] | None
    inputs_without_pos: torch.Tensor | dict[str, torch.Tensor]


class TokenPreprocessor(nn.Module):
    """Token embedding plus a learned input position encoding (the language colab's `hk.Embed` and
    top-level `TrainablePositionEncoding`): ids [B,N] -> [B,N,C], N equal to `max_seq_len`; the
    output's `inputs_without_pos` are the token embeddings alone."""

    def __init__(self, vocab_size: int, num_channels: int, max_seq_len: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, num_channels)
        self.position_encoding = TrainablePositionEncoding(max_seq_len, num_channels)

    def forward(self, inputs: torch.Tensor) -> PreprocessorOutput:
        batch_size, seq_len = inputs.shape
        max_seq_len = self.position_encoding.embeddings.shape[0]
        if seq_len != max_seq_len:
            raise InputError(
                f"inputs have {seq_len} tokens but the model's position encoding has {max_seq_len}; "
                f"pad the inputs to {max_seq_len} (the tokenizer's pad) and pass an input_mask"
            )
        embedded = self.token_embedding(inputs)
        return PreprocessorOutput(embedded + self.position_encoding(batch_size), None, embedded)


def space_to_depth(frames: torch.Tensor, temporal_block_size: int = 1, spatial_block_size: int = 1) -> torch.Tensor:
    """Official `space_to_depth`: [B,H,W,C] -> [B,H/s,W/s,(s s C)], or [B,T,H,W,C] ->
    [B,T/t,H/s,W/s,(t s s C)], channels ordered (dt, dh, dw, c) as the official einops pattern."""
    s, t = spatial_block_size, temporal_block_size
    if frames.ndim == 4:
        b, h, w, c = frames.shape
        x = frames.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // s, w // s, s * s * c)
    if frames.ndim == 5:
        b, n, h, w, c = frames.shape
        x = frames.reshape(b, n // t, t, h // s, s, w // s, s, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, n // t, h // s, w // s, t * s * s * c)
    raise InputError(f"space_to_depth takes [B,H,W,C] or [B,T,H,W,C] frames, got shape {tuple(frames.shape)}")


class NetworkInputs(nn.Module):
    """The official preprocessors' `_build_network_inputs`: a position encoding over the feature grid,
    deepened by `n_extra_pos_mlp` residual Linear layers (ReLU between them), then concatenated to the
    features or added: features [B,N,C] over a grid -> [B,N,C + Cpos] (or [B,N,C]).

    `grid` (the feature grid's size) is needed by a trainable encoding, whose size is fixed; a Fourier
    encoding only needs the grid's number of dimensions and follows the input's size.
    """

    def __init__(
        self,
        config: PositionedInputsConfig,
        feature_channels: int,
        grid: Sequence[int] | None,
        num_dims: int,
    ):
        super().__init__()
        if config.position_encoding_type == "trainable" and grid is None:
            raise ConfigError(f"the trainable position encoding of {config.name} needs the input's size")
        self.concat_or_add_pos = config.concat_or_add_pos
        self.position_encoding = build_position_encoding(
            config.position_encoding_type,
            grid or (1,) * num_dims,
            config.project_pos_dim,
            config.trainable_position_encoding_kwargs,
            config.fourier_position_encoding_kwargs,
        )
        position_channels = self.position_encoding.num_channels
        self.extra_pos_mlps = nn.ModuleList(
            nn.Linear(position_channels, position_channels) for _ in range(config.n_extra_pos_mlp)
        )
        if self.concat_or_add_pos == "add" and position_channels != feature_channels:
            raise ConfigError(
                f"adding positions needs as many position channels ({position_channels}) as features ({feature_channels})"
            )
        self.num_channels = feature_channels + (position_channels if self.concat_or_add_pos == "concat" else 0)

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        pos = self.position_encoding(features.shape[0], grid, device=features.device, dtype=features.dtype)
        for index, mlp in enumerate(self.extra_pos_mlps):
            pos = pos + mlp(pos)
            if index < len(self.extra_pos_mlps) - 1:
                pos = torch.relu(pos)
        return torch.cat([features, pos], dim=-1) if self.concat_or_add_pos == "concat" else features + pos


def patches_for_flow(frames: torch.Tensor) -> torch.Tensor:
    """Official `patches_for_flow`: the zero-padded 3x3 neighbourhood of every pixel of every frame,
    channels ordered (kh, kw, c): [B,T,H,W,C] -> [B,T,H,W,9C]."""
    height, width = frames.shape[2:4]
    padded = torch.nn.functional.pad(frames, (0, 0, 1, 1, 1, 1))
    return torch.cat([padded[:, :, i: i + height, j: j + width] for i in range(3) for j in range(3)], dim=-1)


class ImagePreprocessor(nn.Module):
    """Official `ImagePreprocessor`: featurise images [B,H,W,C] (or frames [B,T,H,W,C]) with `prep_type`
    conv / conv1x1 / patches / pixels, flatten the grid to [B,N,C'] and concatenate (or add) a position
    encoding over that grid.

    `image_shape` (the spatial or spatio-temporal input size) is needed for a trainable position
    encoding, whose size is fixed; Fourier encodings follow the input's size.
    """

    def __init__(self, config: ImagePreprocessorConfig, in_channels: int = 3, image_shape: Sequence[int] | None = None):
        super().__init__()
        self.config = config
        s = config.spatial_downsample
        self.convnet = self.convnet_1x1 = self.patches_linear = None
        if config.prep_type == "conv":
            num_layers = round(math.log(s, 4))
            if 4**num_layers != s or config.temporal_downsample != 1:
                raise ConfigError("prep_type 'conv' needs a power of 4 spatial_downsample and temporal_downsample 1")
            self.convnet = Conv2DDownsample(num_layers, in_channels, config.num_channels, config.conv2d_use_batchnorm)
            feature_channels = config.num_channels
        elif config.prep_type == "conv1x1":
            if config.temporal_downsample != 1:
                raise ConfigError("prep_type 'conv1x1' does not downsample in time")
            self.convnet_1x1 = nn.Conv2d(in_channels, config.num_channels, kernel_size=1, stride=s)
            feature_channels = config.num_channels
        elif config.prep_type == "patches":
            feature_channels = in_channels * s * s * config.temporal_downsample
            if config.conv_after_patching:
                self.patches_linear = nn.Linear(feature_channels, config.num_channels)
                feature_channels = config.num_channels
        else:
            feature_channels = in_channels
        grid = self.feature_grid(image_shape) if image_shape is not None else None
        self.network_inputs = NetworkInputs(config, feature_channels, grid, len(image_shape) if image_shape else 2)
        self.feature_channels = feature_channels
        self.num_channels = self.network_inputs.num_channels

    def feature_grid(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The index grid after featurisation of an input of spatial (or T,H,W) size `image_shape`."""
        config, s = self.config, self.config.spatial_downsample
        *time, height, width = image_shape
        if config.prep_type == "conv":
            for _ in range(round(math.log(s, 4))):
                height, width = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
        elif config.prep_type == "patches":
            height, width = height // s, width // s
            time = [t // config.temporal_downsample for t in time]
            if time == [1]:
                time = []
        else:
            height, width = math.ceil(height / s), math.ceil(width / s)
            time = [math.ceil(t / config.temporal_downsample) for t in time]
        return (*time, height, width)

    def _featurise(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.prep_type in ("conv", "conv1x1"):
            frames = x.flatten(0, 1) if x.ndim == 5 else x
            net = self.convnet if self.convnet is not None else self.convnet_1x1
            if self.convnet_1x1 is not None:
                frames_nchw = pad_same(frames.permute(0, 3, 1, 2), 1, config.spatial_downsample)
            else:
                frames_nchw = frames.permute(0, 3, 1, 2)
            features = net(frames_nchw).permute(0, 2, 3, 1)
            return features.unflatten(0, x.shape[:2]) if x.ndim == 5 else features
        if config.prep_type == "patches":
            features = space_to_depth(x, config.temporal_downsample, config.spatial_downsample)
            if features.ndim == 5 and features.shape[1] == 1:
                features = features.squeeze(1)
            return self.patches_linear(features) if self.patches_linear is not None else features
        s, t = config.spatial_downsample, config.temporal_downsample
        return x[:, ::s, ::s] if x.ndim == 4 else x[:, ::t, ::s, ::s]

    def forward(self, images: torch.Tensor) -> PreprocessorOutput:
        features = self._featurise(images)
        batch_size, grid = features.shape[0], tuple(features.shape[1:-1])
        features = features.reshape(batch_size, math.prod(grid), features.shape[-1])
        return PreprocessorOutput(self.network_inputs(features, grid), None, features)


class AudioPreprocessor(nn.Module):
    """Official `AudioPreprocessor` ('patches'): audio [B,S,1] -> patches of `samples_per_patch`
    consecutive samples [B,S/spp,spp], with a position encoding concatenated (or added).

    `num_samples` is needed for a trainable position encoding, whose size is fixed."""

    def __init__(self, config: AudioPreprocessorConfig, num_samples: int | None = None):
        super().__init__()
        self.config = config
        spp = config.samples_per_patch
        grid = (num_samples // spp,) if num_samples is not None else None
        self.network_inputs = NetworkInputs(config, spp, grid, 1)
        self.feature_channels = spp
        self.num_channels = self.network_inputs.num_channels

    def forward(self, audio: torch.Tensor) -> PreprocessorOutput:
        patches = audio.reshape(audio.shape[0], -1, self.config.samples_per_patch)
        return PreprocessorOutput(self.network_inputs(patches, (patches.shape[1],)), None, patches)


class OneHotPreprocessor(nn.Module):
    """Official `OneHotPreprocessor`: [B,C] -> one token [B,1,C], without position encoding."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.feature_channels = self.num_channels = num_channels

    def forward(self, labels: torch.Tensor) -> PreprocessorOutput:
        tokens = labels[:, None, :]
        return PreprocessorOutput(tokens, None, tokens)


class MultimodalPreprocessor(nn.Module):
    """Official `MultimodalPreprocessor`: preprocess each modality, pad its tokens with a learned vector
    `padding[m]` [1,k] to max(C_m) + `min_padding_size` channels, optionally replace tokens by a learned
    `mask_tokens[m]` [1,C] with probability `mask_probs[m]`, and concatenate in sorted modality order.

    inputs {m: tensor} -> PreprocessorOutput([B,sum N_m,C], {m: N_m}, {m: inputs without positions}).
    Masking with probability 0 or 1 draws nothing; other probabilities draw from `generator` (torch's
    default one when None), so they cannot reproduce JAX's random numbers.
    """

    def __init__(
        self,
        modalities: dict[str, nn.Module],
        min_padding_size: int = 2,
        mask_probs: dict[str, float] | None = None,
    ):
        super().__init__()
        self.modalities = nn.ModuleDict(modalities)
        self.num_channels = max(m.num_channels for m in modalities.values()) + min_padding_size
        self.padding = nn.ModuleDict(
            {name: TrainablePositionEncoding(1, self.num_channels - m.num_channels) for name, m in modalities.items()}
        )
        self.mask_probs = dict(mask_probs) if mask_probs is not None else None
        self.mask_tokens = None
        if mask_probs is not None:
            if set(mask_probs) != set(modalities):
                raise ConfigError(f"mask_probs names {sorted(mask_probs)}, the modalities are {sorted(modalities)}")
            self.mask_tokens = nn.ModuleDict({name: TrainablePositionEncoding(1, self.num_channels) for name in modalities})
        self.generator: torch.Generator | None = None

    def _mask(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        probability = self.mask_probs[name]
        if probability <= 0:
            return tokens
        token = self.mask_tokens[name](tokens.shape[0]).to(tokens.dtype)
        if probability >= 1:
            return token.expand_as(tokens).clone()
        drawn = torch.rand(tokens.shape[:2], generator=self.generator, device=tokens.device) < probability
        return torch.where(drawn[..., None], token, tokens)

    def forward(self, inputs: dict[str, torch.Tensor]) -> PreprocessorOutput:
        missing = sorted(set(self.modalities) - set(inputs))
        if missing:
            raise InputError(f"missing modalities {missing}; expected {sorted(self.modalities)}")
        tokens, sizes, without_pos = [], {}, {}
        for name in sorted(self.modalities):
            output = self.modalities[name](inputs[name])
            x = output.inputs
            padding = self.padding[name](x.shape[0]).to(x.dtype).expand(-1, x.shape[1], -1)
            x = torch.cat([x, padding], dim=-1)
            if self.mask_tokens is not None:
                x = self._mask(name, x)
            tokens.append(x)
            sizes[name] = x.shape[1]
            without_pos[name] = output.inputs_without_pos
        return PreprocessorOutput(torch.cat(tokens, dim=1), sizes, without_pos)


@functools.singledispatch
def custom_preprocessor(config, input_shape: tuple[int, ...]) -> nn.Module | None:
    """A custom model's input preprocessor of `config`'s type for one example's `input_shape` (no batch
    axis); None for a model without one, whose inputs are the encoder's [N,C] already."""
    raise ConfigError(f"no PyTorch input preprocessor for {type(config).__name__}")


@custom_preprocessor.register(type(None))
def _no_preprocessor(config: None, input_shape: tuple[int, ...]) -> None:
    return None


@custom_preprocessor.register(ImagePreprocessorConfig)
def _image_preprocessor(config: ImagePreprocessorConfig, input_shape: tuple[int, ...]) -> ImagePreprocessor:
    return ImagePreprocessor(config, in_channels=input_shape[-1], image_shape=input_shape[:-1])


@custom_preprocessor.register(AudioPreprocessorConfig)
def _audio_preprocessor(config: AudioPreprocessorConfig, input_shape: tuple[int, ...]) -> AudioPreprocessor:
    return AudioPreprocessor(config, num_samples=input_shape[0])


@custom_preprocessor.register(OneHotPreprocessorConfig)
def _one_hot_preprocessor(config: OneHotPreprocessorConfig, input_shape: tuple[int, ...]) -> OneHotPreprocessor:
    return OneHotPreprocessor(input_shape[-1])
