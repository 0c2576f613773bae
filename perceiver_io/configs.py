"""Model configurations: the component schemas of the official building set and the six released
configurations, as dataclasses in the official colab keys (`OfficialConfig`, `perceiver_io.official_config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .errors import ConfigError
from .official_config import (
    DROPOUT_RATE,
    LAYER_COUNT,
    MAX_LAYERS,
    MAX_SIZE,
    NO_PROJECTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    OfficialConfig,
    Range,
    bounded,
)


@dataclass(frozen=True)
class TrainablePositionEncodingConfig(OfficialConfig):
    """Official `trainable_position_encoding_kwargs`."""

    official_name: ClassVar[str] = "trainable_position_encoding_kwargs"
    num_channels: int = 128
    init_scale: float = bounded(0.02, NON_NEGATIVE)


@dataclass(frozen=True)
class FourierPositionEncodingConfig(OfficialConfig):
    """Official `fourier_position_encoding_kwargs`; `max_resolution` defaults to the grid's size."""

    official_name: ClassVar[str] = "fourier_position_encoding_kwargs"
    num_bands: int
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False


@dataclass(frozen=True, kw_only=True)
class PositionedInputsConfig(OfficialConfig):
    """The arguments the official image and audio preprocessors share: how their `_build_network_inputs`
    encodes positions and joins them to the inputs (keyword-only, so that the preprocessors' own fields keep
    their positions)."""

    position_encoding_type: Literal["trainable", "fourier"] = "fourier"
    n_extra_pos_mlp: int = bounded(0, Range(0, MAX_LAYERS))
    concat_or_add_pos: Literal["concat", "add"] = "concat"
    project_pos_dim: int = bounded(-1, NO_PROJECTION)
    trainable_position_encoding_kwargs: TrainablePositionEncodingConfig | None = None
    fourier_position_encoding_kwargs: FourierPositionEncodingConfig | None = None


@dataclass(frozen=True)
class ImagePreprocessorConfig(PositionedInputsConfig):
    """Arguments of the official `ImagePreprocessor`."""

    official_name: ClassVar[str] = "input_preprocessor"
    prep_type: Literal["conv", "conv1x1", "patches", "pixels"] = "conv"
    spatial_downsample: int = 4
    temporal_downsample: int = 1
    num_channels: int = 64
    conv_after_patching: bool = False
    conv2d_use_batchnorm: bool = True
    name: str = "image_preprocessor"


@dataclass(frozen=True)
class AudioPreprocessorConfig(PositionedInputsConfig):
    """Arguments of the official `AudioPreprocessor`."""

    official_name: ClassVar[str] = "audio_preprocessor"
    prep_type: Literal["patches"] = "patches"
    samples_per_patch: int = 96
    name: str = "audio_preprocessor"


@dataclass(frozen=True)
class ImagePostprocessorConfig(OfficialConfig):
    """Arguments of the official `ImagePostprocessor` ('raft' is left out: it is broken upstream)."""

    official_name: ClassVar[str] = "image_postprocessor"
    postproc_type: Literal["pixels", "conv1x1", "conv", "patches"] = "pixels"
    spatial_upsample: int = 1
    temporal_upsample: int = 1
    n_outputs: int = bounded(-1, Range(1, MAX_SIZE, also=-1))  # -1: not given (only conv and conv1x1 need it)
    input_reshape_size: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EncoderConfig(OfficialConfig):
    """Arguments of the official `PerceiverEncoder` (its `name` is the checkpoint's module prefix)."""

    official_name: ClassVar[str] = "encoder_config"
    num_self_attends_per_block: int = bounded(6, LAYER_COUNT)
    num_blocks: int = bounded(8, LAYER_COUNT)
    z_index_dim: int = 512
    num_z_channels: int = 1024
    qk_channels: int | None = None
    v_channels: int | None = None
    num_cross_attend_heads: int = 1
    num_self_attend_heads: int = 8
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    dropout_prob: float = bounded(0.0, DROPOUT_RATE)
    z_pos_enc_init_scale: float = bounded(0.02, NON_NEGATIVE)
    cross_attention_shape_for_attn: Literal["kv", "q"] = "kv"
    use_query_residual: bool = True
    name: str = "perceiver_encoder"


@dataclass(frozen=True)
class DecoderConfig(OfficialConfig):
    """Arguments of the official `BasicDecoder`. `name` is the Haiku module name; None means the official
    default of the decoder's class (`basic_decoder`, `classification_decoder`, `flow_decoder`)."""

    official_name: ClassVar[str] = "decoder_config"
    output_num_channels: int | None = None
    position_encoding_type: Literal["trainable", "fourier", "none"] = "trainable"
    output_index_dims: int | tuple[int, ...] | None = None
    subsampled_index_dims: int | tuple[int, ...] | None = None
    num_z_channels: int = 1024
    qk_channels: int | None = None
    v_channels: int | None = None
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    num_heads: int = 1
    final_project: bool = True
    project_pos_dim: int = bounded(-1, NO_PROJECTION)
    trainable_position_encoding_kwargs: TrainablePositionEncodingConfig | None = None
    fourier_position_encoding_kwargs: FourierPositionEncodingConfig | None = None
    name: str | None = None

    @property
    def index_dims(self) -> tuple[int, ...]:
        dims = self.output_index_dims
        if dims is None:
            raise ConfigError("decoder output_index_dims is required to build decoder queries")
        return (dims,) if isinstance(dims, int) else tuple(dims)

    @property
    def num_queries(self) -> int:
        return math.prod(self.index_dims)


@dataclass(frozen=True)
class LanguageConfig(OfficialConfig):
    """The masked-language-modelling colab's configuration (`masked_language_modelling.ipynb`)."""

    official_name: ClassVar[str] = "language_mlm"
    d_model: int = field(metadata={"key": "D_MODEL"})
    d_latents: int = field(metadata={"key": "D_LATENTS"})
    max_seq_len: int = field(metadata={"key": "MAX_SEQ_LEN"})
    encoder: EncoderConfig = field(metadata={"key": "encoder_config"})
    decoder: DecoderConfig = field(metadata={"key": "decoder_config"})
    vocab_size: int = 262


LANGUAGE_MLM = LanguageConfig(
    d_model=768,
    d_latents=1280,
    max_seq_len=2048,
    vocab_size=262,
    encoder=EncoderConfig(
        num_self_attends_per_block=26,
        num_blocks=1,
        z_index_dim=256,
        num_z_channels=1280,
        num_self_attend_heads=8,
        num_cross_attend_heads=8,
        qk_channels=8 * 32,
        v_channels=1280,
        use_query_residual=True,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
    ),
    decoder=DecoderConfig(
        output_num_channels=1280,
        position_encoding_type="trainable",
        output_index_dims=2048,
        num_z_channels=1280,
        qk_channels=8 * 32,
        v_channels=768,
        num_heads=8,
        final_project=False,
        use_query_residual=False,
        trainable_position_encoding_kwargs=TrainablePositionEncodingConfig(num_channels=768),
    ),
)
"""The released masked-language model (`language_perceiver_io_bytes.pickle`), 201,108,230 parameters."""


@dataclass(frozen=True)
class ImageNetConfig(OfficialConfig):
    """The ImageNet colab's configuration (`imagenet_classification.ipynb`, one of three model types).

    `decoder` holds the official `ClassificationDecoder` keyword arguments (a `BasicDecoder`'s, without
    `output_num_channels` and `output_index_dims`, which the classifier sets).
    """

    official_name: ClassVar[str] = "imagenet"
    input_preprocessor: ImagePreprocessorConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    num_classes: int = 1000
    image_size: tuple[int, int] = (224, 224)

    @property
    def variant(self) -> str:
        """The released model type this config is, and so its task: `imagenet_conv` with the conv stem,
        `imagenet_learned` with learned input positions, otherwise `imagenet_fourier` (the three differ
        only by their configs)."""
        preprocessor = self.input_preprocessor
        if preprocessor.prep_type == "conv":
            return "imagenet_conv"
        return "imagenet_learned" if preprocessor.position_encoding_type == "trainable" else "imagenet_fourier"


def _imagenet(input_preprocessor: ImagePreprocessorConfig, decoder_query_residual: bool) -> ImageNetConfig:
    return ImageNetConfig(
        input_preprocessor=input_preprocessor,
        encoder=EncoderConfig(
            num_self_attends_per_block=6,
            num_blocks=8,
            z_index_dim=512,
            num_z_channels=1024,
            num_cross_attend_heads=1,
            num_self_attend_heads=8,
            cross_attend_widening_factor=1,
            self_attend_widening_factor=1,
            dropout_prob=0.0,
            z_pos_enc_init_scale=0.02,
            cross_attention_shape_for_attn="kv",
            use_query_residual=True,
        ),
        decoder=DecoderConfig(
            num_z_channels=1024,
            position_encoding_type="trainable",
            trainable_position_encoding_kwargs=TrainablePositionEncodingConfig(num_channels=1024, init_scale=0.02),
            use_query_residual=decoder_query_residual,
        ),
        num_classes=1000,
        image_size=(224, 224),
    )


IMAGENET_LEARNED = _imagenet(
    ImagePreprocessorConfig(
        position_encoding_type="trainable",
        trainable_position_encoding_kwargs=TrainablePositionEncodingConfig(num_channels=256, init_scale=0.02),
        prep_type="conv1x1",
        project_pos_dim=256,
        num_channels=256,
        spatial_downsample=1,
        concat_or_add_pos="concat",
    ),
    decoder_query_residual=False,
)
"""`imagenet_learned_position_encoding.pystate`: conv1x1 + learned positions, 62,255,848 parameters."""

IMAGENET_FOURIER = _imagenet(
    ImagePreprocessorConfig(
        position_encoding_type="fourier",
        fourier_position_encoding_kwargs=FourierPositionEncodingConfig(
            num_bands=64, max_resolution=(224, 224), concat_pos=True, sine_only=False
        ),
        prep_type="pixels",
        spatial_downsample=1,
    ),
    decoder_query_residual=True,
)
"""`imagenet_fourier_position_encoding.pystate`: pixels + Fourier positions, 48,440,627 parameters."""

IMAGENET_CONV = _imagenet(
    ImagePreprocessorConfig(
        position_encoding_type="fourier",
        fourier_position_encoding_kwargs=FourierPositionEncodingConfig(
            num_bands=64, max_resolution=(56, 56), concat_pos=True, sine_only=False
        ),
        prep_type="conv",
    ),
    decoder_query_residual=True,
)
"""`imagenet_conv_preprocessing.pystate`: conv stem + Fourier positions, 48,646,522 parameters + BatchNorm state."""


@dataclass(frozen=True)
class FlowDecoderConfig(DecoderConfig):
    """Arguments of the official `FlowDecoder`: a `BasicDecoder`'s plus `rescale_factor` (its output is
    divided by it). The queries are the preprocessed inputs, so the position encoding is never used."""

    official_name: ClassVar[str] = "decoder"
    output_num_channels: int | None = 2
    rescale_factor: float = bounded(100.0, POSITIVE)
    output_image_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class FlowConfig(OfficialConfig):
    """The optical-flow colab's configuration (`optical_flow.ipynb`)."""

    official_name: ClassVar[str] = "optical_flow"
    input_preprocessor: ImagePreprocessorConfig
    encoder: EncoderConfig
    decoder: FlowDecoderConfig
    flow_scale_factor: float = bounded(20, POSITIVE, key="FLOW_SCALE_FACTOR")
    train_size: tuple[int, int] = field(default=(368, 496), metadata={"key": "TRAIN_SIZE"})


OPTICAL_FLOW = FlowConfig(
    input_preprocessor=ImagePreprocessorConfig(
        position_encoding_type="fourier",
        fourier_position_encoding_kwargs=FourierPositionEncodingConfig(
            num_bands=64, max_resolution=(368, 496), sine_only=False, concat_pos=True
        ),
        n_extra_pos_mlp=0,
        prep_type="patches",
        spatial_downsample=1,
        conv_after_patching=True,
        temporal_downsample=2,
    ),
    encoder=EncoderConfig(
        num_self_attends_per_block=24,
        num_blocks=1,
        z_index_dim=2048,
        num_cross_attend_heads=1,
        num_z_channels=512,
        num_self_attend_heads=16,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
        dropout_prob=0.0,
        z_pos_enc_init_scale=0.02,
        cross_attention_shape_for_attn="kv",
        name="perceiver_encoder",
    ),
    decoder=FlowDecoderConfig(
        rescale_factor=100.0,
        use_query_residual=False,
        output_num_channels=2,
        position_encoding_type="fourier",
        fourier_position_encoding_kwargs=FourierPositionEncodingConfig(
            concat_pos=True, max_resolution=(368, 496), num_bands=64, sine_only=False
        ),
    ),
    flow_scale_factor=20,
    train_size=(368, 496),
)
"""`optical_flow_checkpoint.pystate`: 41,057,134 parameters."""


@dataclass(frozen=True)
class MultimodalConfig(OfficialConfig):
    """The video-autoencoding colab's configuration (`video_autoencoding.ipynb`: video, audio, label).

    The colab builds its modules from these flat values; the properties below derive them in one place
    for the model and the conversion rules. `decoder_num_z_channels` and `modality_output_num_channels`
    are passed by the colab but have no effect (the official code ignores them), and are kept as data.
    """

    official_name: ClassVar[str] = "multimodal_autoencoding"
    encoder: EncoderConfig
    num_frames: int = field(default=16, metadata={"key": "NUM_FRAMES"})
    audio_samples_per_frame: int = field(default=1920, metadata={"key": "AUDIO_SAMPLES_PER_FRAME"})
    samples_per_patch: int = field(default=16, metadata={"key": "SAMPLES_PER_PATCH"})
    num_classes: int = field(default=700, metadata={"key": "NUM_CLASSES"})
    img_sz: int = field(default=56, metadata={"key": "IMG_SZ"})
    image_hw: int = field(default=224, metadata={"key": "IMAGE_HW"})
    nchunks: int = field(default=128, metadata={"key": "NCHUNKS"})
    preproc_min_padding_size: int = bounded(4, Range(0, MAX_SIZE))
    audio_num_bands: int = 192
    image_num_bands: int = 32
    image_spatial_downsample: int = 4
    mask_probs: dict[str, float] | None = bounded(None, PROBABILITY)
    decoder_num_z_channels: int = 1024
    modality_output_num_channels: int = 512
    decoder_output_num_channels: int = 512
    label_query_channels: int = 1024

    @property
    def num_audio_samples(self) -> int:
        return self.num_frames * self.audio_samples_per_frame

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The video's (T, H, W), which the image queries cover at full resolution."""
        return (self.num_frames, self.image_hw, self.image_hw)

    @property
    def audio_fourier(self) -> FourierPositionEncodingConfig:
        return FourierPositionEncodingConfig(self.audio_num_bands, (self.num_audio_samples,), True, False)

    @property
    def audio_preprocessor(self) -> AudioPreprocessorConfig:
        return AudioPreprocessorConfig(
            samples_per_patch=self.samples_per_patch,
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=self.audio_fourier,
        )

    @property
    def image_fourier(self) -> FourierPositionEncodingConfig:
        return FourierPositionEncodingConfig(self.image_num_bands, (self.num_frames, self.img_sz, self.img_sz), True, False)

    @property
    def image_preprocessor(self) -> ImagePreprocessorConfig:
        return ImagePreprocessorConfig(
            prep_type="patches",
            spatial_downsample=self.image_spatial_downsample,
            temporal_downsample=1,
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=self.image_fourier,
        )

    @property
    def modality_queries(self) -> dict[str, DecoderConfig]:
        """Per modality, the decoder whose queries the colab uses (their other arguments have no effect)."""
        return {
            "audio": DecoderConfig(
                position_encoding_type="fourier",
                output_index_dims=(self.num_audio_samples // self.samples_per_patch,),
                fourier_position_encoding_kwargs=self.audio_fourier,
            ),
            "image": DecoderConfig(
                position_encoding_type="fourier",
                output_index_dims=self.image_shape,
                fourier_position_encoding_kwargs=self.image_fourier,
            ),
            "label": DecoderConfig(
                position_encoding_type="trainable",
                output_index_dims=(1,),
                trainable_position_encoding_kwargs=TrainablePositionEncodingConfig(self.label_query_channels, 0.02),
            ),
        }

    @property
    def shared_decoder(self) -> DecoderConfig:
        """The `MultimodalDecoder`'s one decoder over all queries (official defaults: one head)."""
        return DecoderConfig(
            output_num_channels=self.decoder_output_num_channels,
            position_encoding_type="none",
            use_query_residual=False,
        )


MULTIMODAL_AUTOENCODING = MultimodalConfig(
    encoder=EncoderConfig(
        num_self_attends_per_block=8,
        num_blocks=1,
        z_index_dim=28 * 28,
        num_z_channels=512,
        num_cross_attend_heads=1,
        num_self_attend_heads=8,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
        dropout_prob=0.0,
        z_pos_enc_init_scale=0.02,
        cross_attention_shape_for_attn="kv",
        name="encoder",
    ),
    mask_probs={"image": 0.0, "audio": 0.0, "label": 1.0},
)
"""`video_autoencoding_checkpoint.pystate`: 19,858,855 parameters."""


@dataclass(frozen=True)
class OneHotPreprocessorConfig(OfficialConfig):
    """The official `OneHotPreprocessor` (no arguments, no parameters)."""

    official_name: ClassVar[str] = "one_hot_preprocessor"


@dataclass(frozen=True)
class ClassificationDecoderConfig(DecoderConfig):
    """Arguments of the official `ClassificationDecoder`: a `BasicDecoder`'s plus `num_classes`."""

    official_name: ClassVar[str] = "classification_decoder"
    num_classes: int = 1000


@dataclass(frozen=True)
class ProjectionDecoderConfig(OfficialConfig):
    """Arguments of the official `ProjectionDecoder` (`final_avg_before_project` has no effect there)."""

    official_name: ClassVar[str] = "projection_decoder"
    num_classes: int
    final_avg_before_project: bool = False


@dataclass(frozen=True)
class IdentityPostprocessorConfig(OfficialConfig):
    official_name: ClassVar[str] = "identity_postprocessor"


@dataclass(frozen=True)
class ProjectionPostprocessorConfig(OfficialConfig):
    official_name: ClassVar[str] = "projection_postprocessor"
    num_outputs: int


@dataclass(frozen=True)
class ClassificationPostprocessorConfig(OfficialConfig):
    official_name: ClassVar[str] = "classification_postprocessor"
    num_classes: int


@dataclass(frozen=True)
class AudioPostprocessorConfig(OfficialConfig):
    official_name: ClassVar[str] = "audio_postprocessor"
    samples_per_patch: int = 96
    postproc_type: Literal["patches"] = "patches"


PREPROCESSORS = {"image": ImagePreprocessorConfig, "audio": AudioPreprocessorConfig, "one_hot": OneHotPreprocessorConfig}
DECODERS = {
    "basic": DecoderConfig,
    "classification": ClassificationDecoderConfig,
    "projection": ProjectionDecoderConfig,
    "flow": FlowDecoderConfig,
}
POSTPROCESSORS = {
    "identity": IdentityPostprocessorConfig,
    "projection": ProjectionPostprocessorConfig,
    "classification": ClassificationPostprocessorConfig,
    "audio": AudioPostprocessorConfig,
    "image": ImagePostprocessorConfig,
}


@dataclass(frozen=True)
class PerceiverConfig(OfficialConfig):
    """A custom Perceiver IO from the official building set: an optional preprocessor, the encoder, a
    decoder and an optional postprocessor, each `{"type": ..., **official arguments}`.

    `input_shape` is one example's input shape without the batch axis ([H,W,C] images, [T,H,W,C] video,
    [S,1] audio, [N,C] features without preprocessor, [C] one-hot). The Haiku modules carry the official
    default names (`image_preprocessor`, `perceiver_encoder` unless the encoder's `name` says otherwise,
    `basic_decoder`, `classification_decoder`, `projection_decoder`, `flow_decoder`, `*_postprocessor`).
    """

    official_name: ClassVar[str] = "perceiver"
    input_shape: tuple[int, ...]
    encoder: EncoderConfig
    decoder: OfficialConfig = field(metadata={"tagged": DECODERS})
    input_preprocessor: OfficialConfig | None = field(default=None, metadata={"tagged": PREPROCESSORS})
    output_postprocessor: OfficialConfig | None = field(default=None, metadata={"tagged": POSTPROCESSORS})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.decoder, FlowDecoderConfig) and self.decoder.output_image_shape is None:
            raise ConfigError("perceiver.decoder.output_image_shape: a custom model's flow decoder needs the "
                              "[H, W] of its output (the flow task takes its TRAIN_SIZE)")
