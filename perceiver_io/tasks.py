"""The task models as thin compositions of the shared blocks, with the official call signatures; each
names its task (`task`), whose record in `perceiver_io.registry` names the model class back."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .configs import (
    IMAGENET_FOURIER,
    LANGUAGE_MLM,
    MULTIMODAL_AUTOENCODING,
    OPTICAL_FLOW,
    FlowConfig,
    ImageNetConfig,
    LanguageConfig,
    MultimodalConfig,
    OfficialConfig,
    PerceiverConfig,
)
from .decoders import (
    BasicDecoder,
    ClassificationDecoder,
    DecoderQueries,
    FlowDecoder,
    MultimodalDecoder,
    custom_decoder,
)
from .encoder import PerceiverEncoder
from .errors import ConfigError, InputError
from .inputs import check_call
from .perceiver import Perceiver
from .postprocessors import (
    AudioPostprocessor,
    ClassificationPostprocessor,
    EmbeddingDecoder,
    MultimodalPostprocessor,
    ProjectionPostprocessor,
    custom_postprocessor,
)
from .preprocessors import (
    AudioPreprocessor,
    ImagePreprocessor,
    MultimodalPreprocessor,
    OneHotPreprocessor,
    TokenPreprocessor,
    custom_preprocessor,
    patches_for_flow,
)
from .registry import TASKS, get_task


class LanguagePerceiver(nn.Module):
    """Masked language model on UTF-8 bytes (the official `masked_language_modelling` colab).

    forward(inputs int [B,N], input_mask [B,N] (1 = token, 0 = padding)) -> logits [B,N,vocab_size].
    As in the colab, `input_mask` masks the encoder's keys and the decoder's queries; logits are tied to
    the input embedding.
    """

    task = "language_mlm"

    def __init__(self, config: LanguageConfig = LANGUAGE_MLM):
        super().__init__()
        decoder = BasicDecoder(config.decoder, config.encoder.num_z_channels)
        decoder_channels = config.decoder.output_num_channels if config.decoder.final_project else decoder.query_channels
        if decoder_channels != config.d_model:
            raise ConfigError(
                f"the decoder outputs {decoder_channels} channels but the tied embedding has D_MODEL="
                f"{config.d_model}; set decoder_config.trainable_position_encoding_kwargs.num_channels "
                "(or output_num_channels with final_project) to D_MODEL"
            )
        if config.decoder.num_queries != config.max_seq_len:
            raise ConfigError(
                f"decoder_config.output_index_dims ({config.decoder.num_queries}) must equal MAX_SEQ_LEN "
                f"({config.max_seq_len}): the model predicts one token per input position"
            )
        self.config = config
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=config.d_model),
            decoder,
            input_preprocessor=TokenPreprocessor(config.vocab_size, config.d_model, config.max_seq_len),
        )
        self.embedding_decoder = EmbeddingDecoder(config.vocab_size)

    def forward(self, inputs: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.perceiver.input_preprocessor.token_embedding.weight
        check_model_call(self, {"inputs": inputs, "input_mask": input_mask}, weight)
        out = self.perceiver(inputs, input_mask=input_mask, query_mask=input_mask)
        return self.embedding_decoder(out, weight)


class ImageClassifier(nn.Module):
    """ImageNet classifier (the official `imagenet_classification` colab, any of its three model types).

    forward(images float [B,H,W,3], channels last, normalised as the colab: (x - mean*255) / (std*255))
    -> logits [B,num_classes].

    `task` is the model type its config is (`ImageNetConfig.variant`): `imagenet_learned`,
    `imagenet_fourier` or `imagenet_conv`.
    """

    def __init__(self, config: ImageNetConfig = IMAGENET_FOURIER):
        super().__init__()
        self.config = config
        preprocessor = ImagePreprocessor(config.input_preprocessor, in_channels=3, image_shape=config.image_size)
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=preprocessor.num_channels),
            ClassificationDecoder(config.decoder, config.encoder.num_z_channels, config.num_classes),
            input_preprocessor=preprocessor,
        )

    @property
    def task(self) -> str:
        return self.config.variant

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_model_call(self, {"images": images}, next(self.parameters()))
        return self.perceiver(images)


class OpticalFlow(nn.Module):
    """Optical flow between two frames (the official `optical_flow` colab).

    forward(images [B,2,H,W,3] in [-1,1] (x/255*2-1), frames of the training size) -> flow [B,H,W,2] in
    pixels, equal to the colab function's output: the decoder's output times FLOW_SCALE_FACTOR (20).
    `raw_flow` gives the decoder's output itself (the model's prediction divided by rescale_factor, 100).
    Frames of other sizes go through `perceiver_io.flow.tiled_flow`.
    """

    task = "optical_flow"

    def __init__(self, config: FlowConfig = OPTICAL_FLOW):
        super().__init__()
        self.config = config
        preprocessor = ImagePreprocessor(config.input_preprocessor, in_channels=27, image_shape=(2, *config.train_size))
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=preprocessor.num_channels),
            FlowDecoder(config.decoder, config.encoder.num_z_channels, preprocessor.num_channels, config.train_size),
            input_preprocessor=preprocessor,
        )

    def raw_flow(self, images: torch.Tensor) -> torch.Tensor:
        check_model_call(self, {"images": images}, next(self.parameters()))
        return self.perceiver(patches_for_flow(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.raw_flow(images) * self.config.flow_scale_factor


class VideoAutoencoder(nn.Module):
    """Multimodal autoencoder of video, audio and label (the official `video_autoencoding` colab).

    forward(images [B,T,H,W,3] in [0,1], audio [B,S,1] in [-1,1], subsampled_points {'image': idx,
    'audio': idx, 'label': None}) -> {'audio': [B,n_a*spp], 'image': [B,n_i,3], 'label': [B,classes]}, the
    outputs at the subsampled points (flat indices into the (T,H,W) grid and the audio patches), or at
    every point when `subsampled_points` is None. The label input is zeros, as in the colab; the released
    model replaces it by its mask token. `reconstruct` decodes a whole clip in chunks.

    As in the official decoder, queries at every point sit at linspace(-1, 1) positions, while subsampled
    ones sit at -1 + 2 * coordinate / n: a call without `subsampled_points` does not give what
    `reconstruct` (the colab's chunked decoding) gives.
    """

    task = "multimodal_autoencoding"

    def __init__(self, config: MultimodalConfig = MULTIMODAL_AUTOENCODING):
        super().__init__()
        self.config = config
        preprocessor = MultimodalPreprocessor(
            {
                "audio": AudioPreprocessor(config.audio_preprocessor, config.num_audio_samples),
                "image": ImagePreprocessor(config.image_preprocessor, in_channels=3, image_shape=config.image_shape),
                "label": OneHotPreprocessor(config.num_classes),
            },
            config.preproc_min_padding_size,
            config.mask_probs,
        )
        decoder = MultimodalDecoder(
            {name: DecoderQueries(queries) for name, queries in config.modality_queries.items()},
            config.shared_decoder,
            config.encoder.num_z_channels,
        )
        channels = config.decoder_output_num_channels
        postprocessor = MultimodalPostprocessor(
            {
                "audio": AudioPostprocessor(channels, config.samples_per_patch),
                "image": ProjectionPostprocessor(channels, 3),
                "label": ClassificationPostprocessor(channels, config.num_classes),
            }
        )
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=preprocessor.num_channels),
            decoder,
            input_preprocessor=preprocessor,
            output_postprocessor=postprocessor,
        )

    def _inputs(self, images: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        config = self.config
        check_model_call(self, {"images": images, "audio": audio}, next(self.parameters()))
        label = torch.zeros(images.shape[0], config.num_classes, dtype=images.dtype, device=images.device)
        return {"audio": audio, "image": images, "label": label}

    def forward(self, images: torch.Tensor, audio: torch.Tensor, subsampled_points: dict | None = None):
        return self.perceiver(self._inputs(images, audio), subsampled_points=subsampled_points)

    def chunks(self, num_chunks: int | None = None) -> list[dict[str, torch.Tensor | None]]:
        """The subsampled points of each chunk, as the colab's `autoencode_video` takes them: consecutive
        ranges of image points and of audio patches (split as evenly as possible when not divisible)."""
        num_chunks = self.config.nchunks if num_chunks is None else num_chunks
        if not isinstance(num_chunks, int) or num_chunks < 1:
            raise InputError(f"num_chunks must be a positive integer, got {num_chunks!r}")
        image_points = torch.arange(math.prod(self.config.image_shape))
        audio_points = torch.arange(self.config.num_audio_samples // self.config.samples_per_patch)
        return [
            {"image": image, "audio": audio, "label": None}
            for image, audio in zip(torch.tensor_split(image_points, num_chunks), torch.tensor_split(audio_points, num_chunks))
        ]

    def reconstruct(self, images: torch.Tensor, audio: torch.Tensor, num_chunks: int | None = None) -> dict:
        """The whole clip decoded in `num_chunks` chunks (default: the colab's NCHUNKS, 128), the encoder run
        once: {'image': [B,T,H,W,3], 'audio': [B,S,1], 'label': [B,classes]}. Under `torch.inference_mode()`
        or `torch.no_grad()` (`reconstruct_video` runs it so), the decoder's memory is bounded by one chunk;
        with gradients on, every chunk's graph is kept for the backward pass."""
        z, preprocessed = self.perceiver.encode(self._inputs(images, audio))
        pieces: dict[str, list[torch.Tensor]] = {"image": [], "audio": []}
        for points in self.chunks(num_chunks):
            output = self.perceiver.decode(z, preprocessed, subsampled_points=points)
            for name in pieces:
                pieces[name].append(output[name])
        return {
            "image": torch.cat(pieces["image"], dim=1).reshape(images.shape),
            "audio": torch.cat(pieces["audio"], dim=1).reshape(audio.shape),
            "label": output["label"],
        }


class CustomPerceiver(nn.Module):
    """Any Perceiver IO of the official building set (a `PerceiverConfig`), for checkpoints of models
    trained in Haiku with the official modules. forward(inputs, input_mask, query_mask, subsampled_points)
    is the official `Perceiver.__call__`."""

    task = "perceiver"

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        self.config = config
        preprocessor = custom_preprocessor(config.input_preprocessor, config.input_shape)
        input_channels = preprocessor.num_channels if preprocessor is not None else config.input_shape[-1]
        feature_channels = preprocessor.feature_channels if preprocessor is not None else config.input_shape[-1]
        decoder = custom_decoder(config.decoder, config.encoder.num_z_channels, input_channels, feature_channels)
        output_channels = getattr(decoder, "output_channels", None) or config.decoder.output_num_channels
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=input_channels),
            decoder,
            input_preprocessor=preprocessor,
            output_postprocessor=custom_postprocessor(config.output_postprocessor, output_channels),
        )

    def forward(self, inputs, input_mask=None, query_mask=None, subsampled_points=None):
        return self.perceiver(inputs, input_mask, query_mask, subsampled_points)


def check_model_call(model: nn.Module, arrays: Mapping[str, torch.Tensor | None], like: torch.Tensor) -> None:
    """Checks a task model's call against its task's input specs (`perceiver_io.inputs.check_call`)."""
    check_call(get_task(model.task).inputs(model.config), arrays, like)


def build_model(task: str, config: OfficialConfig | Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model of `task` (the released configuration unless `config` is given)."""
    spec = get_task(task)
    return spec.model_class()(spec.parse_config(config))


def task_of(model: nn.Module) -> str:
    """The task a task model was built as (its `task`, kept from build to save to load)."""
    task = getattr(model, "task", None)
    spec = TASKS.get(task) if isinstance(task, str) else None
    if spec is None or spec.model is None or type(model) is not spec.model_class():
        raise ConfigError(f"{type(model).__name__} is not one of the task models {list(TASKS)}")
    return task
