"""The released task models as thin compositions of the shared blocks, with the official call signatures,
and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .configs import LANGUAGE_MLM, ConfigError, LanguageConfig, OfficialConfig
from .decoders import BasicDecoder
from .encoder import PerceiverEncoder
from .perceiver import Perceiver
from .postprocessors import EmbeddingDecoder
from .preprocessors import TokenPreprocessor


class LanguagePerceiver(nn.Module):
    """Masked language model on UTF-8 bytes (the official `masked_language_modelling` colab).

    forward(inputs int [B,N], input_mask [B,N] (1 = token, 0 = padding)) -> logits [B,N,vocab_size].
    As in the colab, `input_mask` masks the encoder's keys and the decoder's queries; logits are tied to
    the input embedding.
    """

    def __init__(self, config: LanguageConfig = LANGUAGE_MLM):
        super().__init__()
        decoder_channels = (
            config.decoder.output_num_channels
            if config.decoder.final_project
            else config.decoder.query_position_encoding.num_channels
        )
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
        self.input_preprocessor = TokenPreprocessor(config.vocab_size, config.d_model, config.max_seq_len)
        self.perceiver = Perceiver(
            PerceiverEncoder(config.encoder, input_channels=config.d_model), BasicDecoder(config.decoder)
        )
        self.embedding_decoder = EmbeddingDecoder(config.vocab_size)

    def forward(self, inputs: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        embedded = self.input_preprocessor(inputs)
        out = self.perceiver(embedded, input_mask=input_mask, query_mask=input_mask)
        return self.embedding_decoder(out, self.input_preprocessor.token_embedding.weight)


@dataclass(frozen=True)
class Task:
    """A released task: its model class, config type and released configuration."""

    name: str
    model_type: type[nn.Module]
    config_type: type[OfficialConfig]
    released_config: OfficialConfig


TASKS: dict[str, Task] = {
    "language_mlm": Task("language_mlm", LanguagePerceiver, LanguageConfig, LANGUAGE_MLM),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def parse_config(task: str, config: OfficialConfig | Mapping[str, Any] | None = None) -> OfficialConfig:
    """The task's config from a config object, a dict in official keys, or None (the released one)."""
    spec = get_task(task)
    if config is None:
        return spec.released_config
    if isinstance(config, spec.config_type):
        return config
    if isinstance(config, Mapping):
        return spec.config_type.from_official(config)
    raise ConfigError(f"a {task} config must be a {spec.config_type.__name__} or a dict, got {type(config).__name__}")


def build_model(task: str, config: OfficialConfig | Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model of `task` (the released configuration unless `config` is given)."""
    config = parse_config(task, config)
    try:
        return get_task(task).model_type(config)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"invalid {task} configuration: {error}") from error
