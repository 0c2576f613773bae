"""Haiku module paths <-> PyTorch parameter names, as declarative rules per module type.

Each function below describes one official module: the leaves Haiku stores under its path and the
PyTorch parameters they fill, with the layout change between them. Composite modules are built from
their parts, up to one function per task (named by its `perceiver_io.registry.TaskSpec`) that lists
every leaf of a whole checkpoint. The same rules run in both directions (Haiku -> PyTorch in
`converters.convert`, PyTorch -> Haiku in `converters.export`). Torch-free.

Haiku naming (docs/official-numerics.md#haiku-parameter-names): a child made in the parent's `__init__`
is `parent/~/child`, one made in `__call__` is `parent/child`; repeated names get `_1`, `_2`, ... in
creation order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .configs import (
    AudioPostprocessorConfig,
    AudioPreprocessorConfig,
    ClassificationDecoderConfig,
    ClassificationPostprocessorConfig,
    DecoderConfig,
    EncoderConfig,
    FlowConfig,
    FlowDecoderConfig,
    IdentityPostprocessorConfig,
    ImageNetConfig,
    ImagePostprocessorConfig,
    ImagePreprocessorConfig,
    LanguageConfig,
    MultimodalConfig,
    OneHotPreprocessorConfig,
    PerceiverConfig,
    PositionedInputsConfig,
    ProjectionDecoderConfig,
    ProjectionPostprocessorConfig,
)
from .errors import MappingError
from .layout import BATCHNORM_VECTOR, CONV2D_WEIGHT, CONV_TRANSPOSE_WEIGHT, IDENTITY, LINEAR_WEIGHT, Layout


@dataclass(frozen=True)
class Rule:
    """One Haiku leaf (`module`, `name`, in `collection` 'params' or 'state') <-> one PyTorch tensor."""

    module: str
    name: str
    torch_key: str
    layout: Layout = IDENTITY
    collection: str = "params"

    @property
    def haiku_key(self) -> str:
        return f"{self.module}/{self.name}"


def numbered(name: str, index: int) -> str:
    """Haiku's name for the `index`-th module called `name` within one parent: name, name_1, name_2..."""
    return name if index == 0 else f"{name}_{index}"


def linear(module: str, torch: str) -> list[Rule]:
    return [Rule(module, "w", f"{torch}.weight", LINEAR_WEIGHT), Rule(module, "b", f"{torch}.bias")]


def layer_norm(module: str, torch: str) -> list[Rule]:
    return [Rule(module, "scale", f"{torch}.weight"), Rule(module, "offset", f"{torch}.bias")]


def trainable_position_encoding(module: str, torch: str) -> list[Rule]:
    return [Rule(module, "pos_embs", f"{torch}.embeddings")]


def attention(module: str, torch: str) -> list[Rule]:
    return [
        *linear(f"{module}/linear", f"{torch}.query_proj"),
        *linear(f"{module}/linear_1", f"{torch}.key_proj"),
        *linear(f"{module}/linear_2", f"{torch}.value_proj"),
        *linear(f"{module}/linear_3", f"{torch}.output_proj"),
    ]


def mlp(module: str, torch: str) -> list[Rule]:
    return [*linear(f"{module}/linear", f"{torch}.up_proj"), *linear(f"{module}/linear_1", f"{torch}.down_proj")]


def self_attention(module: str, torch: str) -> list[Rule]:
    return [
        *layer_norm(f"{module}/layer_norm", f"{torch}.attention_norm"),
        *attention(f"{module}/attention", f"{torch}.attention"),
        *layer_norm(f"{module}/layer_norm_1", f"{torch}.mlp_norm"),
        *mlp(f"{module}/mlp", f"{torch}.mlp"),
    ]


def cross_attention(module: str, torch: str) -> list[Rule]:
    return [
        *layer_norm(f"{module}/layer_norm", f"{torch}.query_norm"),
        *layer_norm(f"{module}/layer_norm_1", f"{torch}.kv_norm"),
        *attention(f"{module}/attention", f"{torch}.attention"),
        *layer_norm(f"{module}/layer_norm_2", f"{torch}.mlp_norm"),
        *mlp(f"{module}/mlp", f"{torch}.mlp"),
    ]


def perceiver_encoder(config: EncoderConfig, torch: str) -> list[Rule]:
    """Official `PerceiverEncoder`; its top-level name (`perceiver_encoder`, or `encoder` in the video
    model) is the config's `name`."""
    module = config.name
    rules = [
        *trainable_position_encoding(f"{module}/~/trainable_position_encoding", f"{torch}.latents"),
        *cross_attention(f"{module}/~/cross_attention", f"{torch}.cross_attention"),
    ]
    for index in range(config.num_self_attends_per_block):
        rules += self_attention(f"{module}/~/{numbered('self_attention', index)}", f"{torch}.self_attends.{index}")
    return rules


def position_encoding(encoding_type: str, project_pos_dim: int, module: str, torch: str) -> list[Rule]:
    """Official `build_position_encoding`'s modules, created under the Haiku path `module` (e.g.
    `image_preprocessor/~_build_network_inputs`): a trainable table and/or a projector's Linear.
    Fourier encodings have no parameters."""
    projected = project_pos_dim > 0
    rules = []
    if encoding_type == "trainable":
        rules += trainable_position_encoding(
            f"{module}/trainable_position_encoding", f"{torch}.base" if projected else torch
        )
    if projected:
        rules += linear(f"{module}/position_encoding_projector/linear", f"{torch}.linear")
    return rules


def network_inputs(config: PositionedInputsConfig, module: str, torch: str) -> list[Rule]:
    """A preprocessor's `_build_network_inputs`: its position encoding and `n_extra_pos_mlp` Linears,
    all made in that method (Haiku path `{module}/~_build_network_inputs`)."""
    built = f"{module}/~_build_network_inputs"
    rules = position_encoding(config.position_encoding_type, config.project_pos_dim, built, f"{torch}.position_encoding")
    for index in range(config.n_extra_pos_mlp):
        rules += linear(f"{built}/{numbered('linear', index)}", f"{torch}.extra_pos_mlps.{index}")
    return rules


def batchnorm(module: str, torch: str) -> list[Rule]:
    """`hk.BatchNorm`: scale/offset parameters and the `mean_ema`/`var_ema` state, every leaf kept."""
    rules = [
        Rule(module, "scale", f"{torch}.weight", BATCHNORM_VECTOR),
        Rule(module, "offset", f"{torch}.bias", BATCHNORM_VECTOR),
    ]
    for statistic in ("mean", "var"):
        ema = f"{module}/~/{statistic}_ema"
        rules += [
            Rule(ema, "average", f"{torch}.{statistic}_average", BATCHNORM_VECTOR, "state"),
            Rule(ema, "hidden", f"{torch}.{statistic}_hidden", BATCHNORM_VECTOR, "state"),
            Rule(ema, "counter", f"{torch}.{statistic}_counter", IDENTITY, "state"),
        ]
    return rules


def conv2d_downsample(config: ImagePreprocessorConfig, module: str, torch: str) -> list[Rule]:
    """Official `Conv2DDownsample`: per layer `conv` (and `batchnorm`), numbered within the stem."""
    rules = []
    for index in range(round(math.log(config.spatial_downsample, 4))):
        rules.append(Rule(f"{module}/~/{numbered('conv', index)}", "w", f"{torch}.{index}.conv.weight", CONV2D_WEIGHT))
        if config.conv2d_use_batchnorm:
            rules += batchnorm(f"{module}/~/{numbered('batchnorm', index)}", f"{torch}.{index}.batchnorm")
    return rules


def image_preprocessor(config: ImagePreprocessorConfig, torch: str) -> list[Rule]:
    """Official `ImagePreprocessor` (top-level name `config.name`)."""
    module = config.name
    rules = []
    if config.prep_type == "conv":
        rules += conv2d_downsample(config, f"{module}/~/conv2_d_downsample", f"{torch}.convnet")
    elif config.prep_type == "conv1x1":
        rules += [
            Rule(f"{module}/~/conv2_d", "w", f"{torch}.convnet_1x1.weight", CONV2D_WEIGHT),
            Rule(f"{module}/~/conv2_d", "b", f"{torch}.convnet_1x1.bias"),
        ]
    elif config.prep_type == "patches" and config.conv_after_patching:
        rules += linear(f"{module}/patches_linear", f"{torch}.patches_linear")
    return rules + network_inputs(config, module, f"{torch}.network_inputs")


def basic_decoder(config: DecoderConfig, module: str, torch: str) -> list[Rule]:
    """Official `BasicDecoder` at Haiku path `module`: its query encoding (made in `__init__`), then
    `cross_attention` and `output` (made in `__call__`)."""
    rules = [
        *position_encoding(
            config.position_encoding_type, config.project_pos_dim, f"{module}/~", f"{torch}.queries.position_encoding"
        ),
        *cross_attention(f"{module}/cross_attention", f"{torch}.cross_attention"),
    ]
    if config.final_project:
        rules += linear(f"{module}/output", f"{torch}.output")
    return rules


def language_mlm(config: LanguageConfig) -> list[Rule]:
    """The language colab: top-level `embed`, `trainable_position_encoding`, encoder, `basic_decoder`
    and `embedding_decoder` (its bias; its matrix is `embed` itself)."""
    return [
        Rule("embed", "embeddings", "perceiver.input_preprocessor.token_embedding.weight"),
        *trainable_position_encoding("trainable_position_encoding", "perceiver.input_preprocessor.position_encoding"),
        *perceiver_encoder(config.encoder, "perceiver.encoder"),
        *basic_decoder(config.decoder, config.decoder.name or "basic_decoder", "perceiver.decoder"),
        Rule("embedding_decoder", "bias", "embedding_decoder.bias"),
    ]


def imagenet(config: ImageNetConfig) -> list[Rule]:
    """The ImageNet colab: `image_preprocessor`, the encoder and `classification_decoder`, whose
    `basic_decoder` is made in its `__init__`."""
    return [
        *image_preprocessor(config.input_preprocessor, "perceiver.input_preprocessor"),
        *perceiver_encoder(config.encoder, "perceiver.encoder"),
        *inner_basic_decoder(config.decoder, "classification_decoder"),
    ]


def optical_flow(config: FlowConfig) -> list[Rule]:
    """The optical-flow colab: `image_preprocessor` (`patches_linear`), the encoder and `flow_decoder`,
    whose `basic_decoder` is made in its `__init__`."""
    return [
        *image_preprocessor(config.input_preprocessor, "perceiver.input_preprocessor"),
        *perceiver_encoder(config.encoder, "perceiver.encoder"),
        *inner_basic_decoder(config.decoder, "flow_decoder"),
    ]


def multimodal_autoencoding(config: MultimodalConfig) -> list[Rule]:
    """The video-autoencoding colab: `multimodal_preprocessor` (per-modality paddings and mask tokens),
    the encoder (named `encoder` there: the config's name), the label queries of the top-level
    `classification_decoder` (only its queries are used), `multimodal_decoder` (query paddings, made in
    `decoder_query`, and its shared `basic_decoder`), and the three postprocessors."""
    modalities = sorted(config.modality_queries)
    rules = [*perceiver_encoder(config.encoder, "perceiver.encoder")]
    for modality in modalities:
        rules += trainable_position_encoding(
            f"multimodal_preprocessor/{modality}_padding", f"perceiver.input_preprocessor.padding.{modality}"
        )
        if config.mask_probs is not None:
            rules += trainable_position_encoding(
                f"multimodal_preprocessor/{modality}_mask_token", f"perceiver.input_preprocessor.mask_tokens.{modality}"
            )
        rules += trainable_position_encoding(
            f"multimodal_decoder/~decoder_query/{modality}_padding", f"perceiver.decoder.padding.{modality}"
        )
    rules += position_encoding(
        "trainable", -1, "classification_decoder/~/basic_decoder/~",
        "perceiver.decoder.modality_queries.label.position_encoding",
    )
    rules += basic_decoder(config.shared_decoder, "multimodal_decoder/~/basic_decoder", "perceiver.decoder.basic_decoder")
    for modality, postprocessor in (("audio", "audio"), ("image", "projection"), ("label", "classification")):
        rules += linear(f"{postprocessor}_postprocessor/linear", f"perceiver.output_postprocessor.modalities.{modality}.linear")
    return rules


def image_postprocessor(config: ImagePostprocessorConfig, module: str, torch: str) -> list[Rule]:
    """Official `ImagePostprocessor`: `conv2_d` (conv1x1), or the `conv2_d_upsample` (transposed
    convolutions made in its `__init__`) or `conv3_d_upsample` (made in its `__call__`) network."""
    if config.postproc_type == "conv1x1":
        return [
            Rule(f"{module}/~/conv2_d", "w", f"{torch}.conv1x1.weight", CONV2D_WEIGHT),
            Rule(f"{module}/~/conv2_d", "b", f"{torch}.conv1x1.bias"),
        ]
    if config.postproc_type != "conv":
        return []
    if config.temporal_upsample == 1:
        convolutions = [
            (f"{module}/~/conv2_d_upsample/~/transp_conv_{index}", f"{torch}.convnet.transp_conv_{index}.conv")
            for index in (1, 2)
        ]
    else:
        count = max(round(math.log2(config.temporal_upsample)), round(math.log2(config.spatial_upsample)))
        convolutions = [
            (f"{module}/~/conv3_d_upsample/conv3d_transpose_{index}", f"{torch}.convnet.layers.{index}.conv")
            for index in range(count)
        ]
    return [
        rule
        for haiku, target in convolutions
        for rule in (Rule(haiku, "w", f"{target}.weight", CONV_TRANSPOSE_WEIGHT), Rule(haiku, "b", f"{target}.bias"))
    ]


def inner_basic_decoder(config: DecoderConfig, default_name: str) -> list[Rule]:
    """A decoder that makes its `basic_decoder` in its `__init__` (`ClassificationDecoder`, `FlowDecoder`):
    Haiku path `{name}/~/basic_decoder`, its name the config's or the class's official default."""
    return basic_decoder(config, f"{config.name or default_name}/~/basic_decoder", "perceiver.decoder.basic_decoder")


@functools.singledispatch
def custom_preprocessor_rules(config) -> list[Rule]:
    """The leaves of a custom model's input preprocessor of `config`'s type (under its official name)."""
    raise MappingError(f"no conversion rules for the input preprocessor {type(config).__name__}")


@custom_preprocessor_rules.register(type(None))
@custom_preprocessor_rules.register(OneHotPreprocessorConfig)
def _no_preprocessor_leaves(config) -> list[Rule]:
    return []


@custom_preprocessor_rules.register(ImagePreprocessorConfig)
def _image_preprocessor(config: ImagePreprocessorConfig) -> list[Rule]:
    return image_preprocessor(config, "perceiver.input_preprocessor")


@custom_preprocessor_rules.register(AudioPreprocessorConfig)
def _audio_preprocessor(config: AudioPreprocessorConfig) -> list[Rule]:
    return network_inputs(config, config.name, "perceiver.input_preprocessor.network_inputs")


@functools.singledispatch
def custom_decoder_rules(config) -> list[Rule]:
    """The leaves of a custom model's decoder of `config`'s type (under its official name)."""
    raise MappingError(f"no conversion rules for the decoder {type(config).__name__}")


@custom_decoder_rules.register(DecoderConfig)
def _basic_decoder(config: DecoderConfig) -> list[Rule]:
    return basic_decoder(config, config.name or "basic_decoder", "perceiver.decoder")


@custom_decoder_rules.register(ClassificationDecoderConfig)
def _classification_decoder(config: ClassificationDecoderConfig) -> list[Rule]:
    return inner_basic_decoder(config, "classification_decoder")


@custom_decoder_rules.register(FlowDecoderConfig)
def _flow_decoder(config: FlowDecoderConfig) -> list[Rule]:
    return inner_basic_decoder(config, "flow_decoder")


@custom_decoder_rules.register(ProjectionDecoderConfig)
def _projection_decoder(config: ProjectionDecoderConfig) -> list[Rule]:
    return linear("projection_decoder/~/logits", "perceiver.decoder.logits")


@functools.singledispatch
def custom_postprocessor_rules(config) -> list[Rule]:
    """The leaves of a custom model's output postprocessor of `config`'s type (under its official name)."""
    raise MappingError(f"no conversion rules for the output postprocessor {type(config).__name__}")


@custom_postprocessor_rules.register(type(None))
@custom_postprocessor_rules.register(IdentityPostprocessorConfig)
def _no_postprocessor_leaves(config) -> list[Rule]:
    return []


@custom_postprocessor_rules.register(ProjectionPostprocessorConfig)
@custom_postprocessor_rules.register(ClassificationPostprocessorConfig)
@custom_postprocessor_rules.register(AudioPostprocessorConfig)
def _linear_postprocessor(config) -> list[Rule]:
    return linear(f"{config.official_name}/linear", "perceiver.output_postprocessor.linear")


@custom_postprocessor_rules.register(ImagePostprocessorConfig)
def _image_postprocessor(config: ImagePostprocessorConfig) -> list[Rule]:
    return image_postprocessor(config, "image_postprocessor", "perceiver.output_postprocessor")


def custom_perceiver(config: PerceiverConfig) -> list[Rule]:
    """A custom model of the official building set, its modules under their official default names."""
    return [
        *custom_preprocessor_rules(config.input_preprocessor),
        *perceiver_encoder(config.encoder, "perceiver.encoder"),
        *custom_decoder_rules(config.decoder),
        *custom_postprocessor_rules(config.output_postprocessor),
    ]
