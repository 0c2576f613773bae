"""Haiku module paths <-> PyTorch parameter names, as declarative rules per module type.

Each function below describes one official module: the leaves Haiku stores under its path and the
PyTorch parameters they fill, with the layout change between them. Composite modules are built from
their parts, so `task_rules(task, config)` lists every leaf of a whole checkpoint. The same rules run
in both directions (Haiku -> PyTorch in `convert`, PyTorch -> Haiku in `export`).

Haiku naming (NOTES §7): a child made in the parent's `__init__` is `parent/~/child`, one made in
`__call__` is `parent/child`; repeated names get `_1`, `_2`, ... in creation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from perceiver_io.configs import DecoderConfig, EncoderConfig, LanguageConfig, OfficialConfig

from .errors import MappingError
from .layout import IDENTITY, LINEAR_WEIGHT, Layout


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


def basic_decoder(config: DecoderConfig, module: str, torch: str) -> list[Rule]:
    """Official `BasicDecoder` at Haiku path `module`."""
    rules = [
        *trainable_position_encoding(f"{module}/~/trainable_position_encoding", f"{torch}.output_position_encoding"),
        *cross_attention(f"{module}/cross_attention", f"{torch}.cross_attention"),
    ]
    if config.final_project:
        rules += linear(f"{module}/output", f"{torch}.output")
    return rules


def language_mlm(config: LanguageConfig) -> list[Rule]:
    """The language colab: top-level `embed`, `trainable_position_encoding`, encoder, `basic_decoder`
    and `embedding_decoder` (its bias; its matrix is `embed` itself)."""
    return [
        Rule("embed", "embeddings", "input_preprocessor.token_embedding.weight"),
        *trainable_position_encoding("trainable_position_encoding", "input_preprocessor.position_encoding"),
        *perceiver_encoder(config.encoder, "perceiver.encoder"),
        *basic_decoder(config.decoder, config.decoder.name, "perceiver.decoder"),
        Rule("embedding_decoder", "bias", "embedding_decoder.bias"),
    ]


TASK_RULES: dict[str, Callable[[OfficialConfig], list[Rule]]] = {
    "language_mlm": language_mlm,
}


def task_rules(task: str, config: OfficialConfig) -> list[Rule]:
    """Every leaf of a `task` checkpoint with `config`, as rules; the rules' targets are distinct."""
    if task not in TASK_RULES:
        raise MappingError(f"no conversion rules for task {task!r}; known: {sorted(TASK_RULES)}")
    rules = TASK_RULES[task](config)
    targets = [rule.torch_key for rule in rules]
    sources = [(rule.collection, rule.haiku_key) for rule in rules]
    if len(set(targets)) != len(targets) or len(set(sources)) != len(sources):
        raise MappingError(f"the {task} rules name a leaf or a target twice")
    return rules
