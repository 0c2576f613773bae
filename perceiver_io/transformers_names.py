"""Hugging Face transformers' Perceiver checkpoints: their state_dict names <-> the port's, and their
config.json <-> the port's configuration, as declarative rules per block. Torch-free.

transformers' published weights were converted from the same Haiku checkpoints, so every tensor has a
counterpart here. Their Linear weights are `[out, in]` like PyTorch's, so a name is all that changes for
the models imported so far (`ARCHITECTURES`). What transformers computes differently (its exact GELU, its
LayerNorm epsilon, its masking, the learned-position classifier's query residual) is not in the weights: a
model imported here computes with the official numerics (docs/official-numerics.md), whatever
transformers' config or classes say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .configs import ImageNetConfig, LanguageConfig
from .errors import ConfigError


@dataclass(frozen=True)
class NameRule:
    """One tensor: its name in a transformers state_dict and in the port's."""

    transformers_key: str
    torch_key: str


ATTENTION = (
    ("attention.self.query", "attention.query_proj"),
    ("attention.self.key", "attention.key_proj"),
    ("attention.self.value", "attention.value_proj"),
    ("attention.output.dense", "attention.output_proj"),
    ("layernorm", "mlp_norm"),
    ("mlp.dense1", "mlp.up_proj"),
    ("mlp.dense2", "mlp.down_proj"),
)
"""A transformers `PerceiverLayer` against the port's attention block: the Linear and LayerNorm modules
both kinds share (each has a weight and a bias)."""

CROSS_ATTENTION = (*ATTENTION, ("attention.self.layernorm1", "query_norm"), ("attention.self.layernorm2", "kv_norm"))
SELF_ATTENTION = (*ATTENTION, ("attention.self.layernorm1", "attention_norm"))


def block(modules: tuple[tuple[str, str], ...], transformers_prefix: str, torch_prefix: str) -> list[NameRule]:
    return [NameRule(f"{transformers_prefix}.{theirs}.{leaf}", f"{torch_prefix}.{ours}.{leaf}")
            for theirs, ours in modules for leaf in ("weight", "bias")]


def encoder(num_self_attends: int) -> list[NameRule]:
    """transformers' `PerceiverEmbeddings` (the latents) and `PerceiverEncoder`: one cross-attention and the
    self-attentions of one block, shared by every block as in the official encoder."""
    rules = [NameRule("perceiver.embeddings.latents", "perceiver.encoder.latents.embeddings"),
             *block(CROSS_ATTENTION, "perceiver.encoder.cross_attention", "perceiver.encoder.cross_attention")]
    for index in range(num_self_attends):
        prefix = f"perceiver.encoder.self_attends.{index}"  # the same in both
        rules += block(SELF_ATTENTION, prefix, prefix)
    return rules


def language_mlm(config: LanguageConfig) -> list[NameRule]:
    """transformers' `PerceiverForMaskedLM`: text preprocessor, encoder, basic decoder, embedding decoder."""
    return [
        NameRule("perceiver.input_preprocessor.embeddings.weight",
                 "perceiver.input_preprocessor.token_embedding.weight"),
        NameRule("perceiver.input_preprocessor.position_embeddings.weight",
                 "perceiver.input_preprocessor.position_encoding.embeddings"),
        *encoder(config.encoder.num_self_attends_per_block),
        NameRule("perceiver.decoder.output_position_encodings.position_embeddings",
                 "perceiver.decoder.queries.position_encoding.embeddings"),
        *block(CROSS_ATTENTION, "perceiver.decoder.decoding_cross_attention", "perceiver.decoder.cross_attention"),
        NameRule("embedding_decoder.bias", "embedding_decoder.bias"),
    ]


def classification_decoder(prefix: str) -> list[NameRule]:
    """transformers' `PerceiverClassificationDecoder` at `prefix`: its inner basic decoder's query table,
    cross-attention and final Linear (the official `ClassificationDecoder`'s `basic_decoder`)."""
    return [
        NameRule(f"{prefix}.decoder.output_position_encodings.position_embeddings",
                 "perceiver.decoder.basic_decoder.queries.position_encoding.embeddings"),
        *block(CROSS_ATTENTION, f"{prefix}.decoder.decoding_cross_attention",
               "perceiver.decoder.basic_decoder.cross_attention"),
        *(NameRule(f"{prefix}.decoder.final_layer.{leaf}", f"perceiver.decoder.basic_decoder.output.{leaf}")
          for leaf in ("weight", "bias")),
    ]


def imagenet_fourier(config: ImageNetConfig) -> list[NameRule]:
    """transformers' `PerceiverForImageClassificationFourier`: pixels with Fourier positions (no
    parameters), the encoder, a classification decoder."""
    return [*encoder(config.encoder.num_self_attends_per_block), *classification_decoder("perceiver.decoder")]


def imagenet_learned(config: ImageNetConfig) -> list[NameRule]:
    """transformers' `PerceiverForImageClassificationLearned`: a 1x1 convolution (`[out, in, 1, 1]` in both),
    a learned position table with its projection, the encoder, a classification decoder."""
    ours = "perceiver.input_preprocessor"
    return [
        *(NameRule(f"{ours}.convnet_1x1.{leaf}", f"{ours}.convnet_1x1.{leaf}") for leaf in ("weight", "bias")),
        NameRule(f"{ours}.position_embeddings.position_embeddings",
                 f"{ours}.network_inputs.position_encoding.base.embeddings"),
        *(NameRule(f"{ours}.positions_projection.{leaf}", f"{ours}.network_inputs.position_encoding.linear.{leaf}")
          for leaf in ("weight", "bias")),
        *encoder(config.encoder.num_self_attends_per_block),
        *classification_decoder("perceiver.decoder"),
    ]


def imagenet_learned_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The ImageNet colab's learned-position configuration (official keys) of a transformers config. Its
    decoder has no query residual, as the released model; transformers' class adds one whatever its config
    (its departure, `tests/test_transformers_import.py` measures it)."""
    return {
        "input_preprocessor": {"prep_type": "conv1x1", "spatial_downsample": 1, "num_channels": 256,
                               "position_encoding_type": "trainable", "concat_or_add_pos": "concat",
                               "project_pos_dim": 256, "trainable_position_encoding_kwargs": {"num_channels": 256}},
        **_classifier(hf, query_residual=False),
    }


TRANSFORMERS_FOURIER_POSITIONS = {"num_bands": 64, "max_resolution": [224, 224], "concat_pos": True,
                                  "sine_only": False}
"""transformers' `PerceiverForImageClassificationFourier` fixes its input positions as the released model's,
whatever its image size."""


def imagenet_fourier_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The ImageNet colab's Fourier configuration (official keys) of a transformers config."""
    return {
        "input_preprocessor": {"prep_type": "pixels", "spatial_downsample": 1, "position_encoding_type": "fourier",
                               "fourier_position_encoding_kwargs": TRANSFORMERS_FOURIER_POSITIONS},
        **_classifier(hf, query_residual=True),
        "image_size": TRANSFORMERS_FOURIER_POSITIONS["max_resolution"],  # transformers' class never reads its own
    }


def _classifier(hf: Mapping[str, Any], query_residual: bool) -> dict[str, Any]:
    """The encoder, classification decoder, classes and image size of an ImageNet configuration."""
    return {
        "encoder": encoder_config(hf),
        "decoder": {"num_z_channels": hf["d_latents"], "position_encoding_type": "trainable",
                    "trainable_position_encoding_kwargs": {"num_channels": hf["d_latents"]},
                    "use_query_residual": query_residual},
        "num_classes": len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2),
        "image_size": [hf["image_size"]] * 2 if isinstance(hf["image_size"], int) else hf["image_size"],
    }


def encoder_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The official `encoder_config` of a transformers `PerceiverConfig` (config.json fields)."""
    return {
        "num_self_attends_per_block": hf["num_self_attends_per_block"],
        "num_blocks": hf["num_blocks"],
        "z_index_dim": hf["num_latents"],
        "num_z_channels": hf["d_latents"],
        "qk_channels": hf.get("qk_channels"),
        "v_channels": hf.get("v_channels"),
        "num_cross_attend_heads": hf["num_cross_attention_heads"],
        "num_self_attend_heads": hf["num_self_attention_heads"],
        "cross_attend_widening_factor": hf.get("cross_attention_widening_factor", 1),
        "self_attend_widening_factor": hf.get("self_attention_widening_factor", 1),
        "cross_attention_shape_for_attn": hf.get("cross_attention_shape_for_attention", "kv"),
        "use_query_residual": hf.get("use_query_residual", True),
    }


TRANSFORMERS_DECODER_QK_CHANNELS = 8 * 32
TRANSFORMERS_DECODER_HEADS = 8
"""transformers' `PerceiverForMaskedLM` fixes its decoder's qk width and heads (as the released model has
them) instead of reading them from its config."""


def language_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The language colab's configuration (official keys) of a transformers `PerceiverForMaskedLM` config."""
    return {
        "D_MODEL": hf["d_model"],
        "D_LATENTS": hf["d_latents"],
        "MAX_SEQ_LEN": hf["max_position_embeddings"],
        "vocab_size": hf["vocab_size"],
        "encoder_config": encoder_config(hf),
        "decoder_config": {
            "output_num_channels": hf["d_latents"],
            "position_encoding_type": "trainable",
            "output_index_dims": hf["max_position_embeddings"],
            "num_z_channels": hf["d_latents"],
            "qk_channels": TRANSFORMERS_DECODER_QK_CHANNELS,
            "v_channels": hf["d_model"],
            "num_heads": TRANSFORMERS_DECODER_HEADS,
            "final_project": False,
            "use_query_residual": False,
            "trainable_position_encoding_kwargs": {"num_channels": hf["d_model"]},
        },
    }


ARCHITECTURES = {
    "PerceiverForMaskedLM": ("language_mlm", language_config, language_mlm),
    "PerceiverForImageClassificationFourier": ("imagenet_fourier", imagenet_fourier_config, imagenet_fourier),
    "PerceiverForImageClassificationLearned": ("imagenet_learned", imagenet_learned_config, imagenet_learned),
}
"""transformers' model class (config.json `architectures`) -> (the port's task, its config in official keys,
its name rules)."""


GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "gelu_python_tanh",
                    "gelu_accurate")
"""transformers' names of the GELU forms: the official MLP's activation, computed here in its tanh form."""


def transformers_model(hf: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any], Any]:
    """(task, official config, rules function) of a transformers config.json's contents."""
    if not isinstance(hf, Mapping):
        raise ConfigError(f"{where}: expected a JSON object of transformers config fields, found {type(hf).__name__}")
    if hf.get("model_type") != "perceiver":
        raise ConfigError(f"{where}: model_type is {hf.get('model_type')!r}, not a transformers Perceiver "
                          "('perceiver')")
    if hf.get("hidden_act", "gelu") not in GELU_ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not a GELU, the official models' "
                          "activation; this port computes GELU only")
    architectures = hf.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise ConfigError(f"{where}: architectures must be a list of class names, found {architectures!r}"[:500])
    known = [name for name in architectures if name in ARCHITECTURES]
    if not known:
        raise ConfigError(f"{where}: architectures {architectures} name no transformers Perceiver this port imports "
                          f"yet; it imports {', '.join(ARCHITECTURES)}")
    task, config, rules = ARCHITECTURES[known[0]]
    try:
        return task, config(hf), rules
    except KeyError as missing:
        raise ConfigError(f"{where}: the transformers config lacks {missing}") from None
    except (TypeError, AttributeError, ValueError) as error:
        raise ConfigError(f"{where}: a field of the transformers config has the wrong type ({error})"[:500]) from None
