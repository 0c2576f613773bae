"""The official building set of custom models: each module kind a custom config can name (its `"type"`) is
registered, by its config type, with its PyTorch builder, its conversion rules and its JAX reference, the
three places where a new kind is written besides its config."""

from __future__ import annotations

import importlib.util

import pytest

from perceiver_io import decoders, mapping, postprocessors, preprocessors
from perceiver_io.configs import DECODERS, POSTPROCESSORS, PREPROCESSORS

PARTS = {
    "input_preprocessor": (PREPROCESSORS, preprocessors.custom_preprocessor, mapping.custom_preprocessor_rules,
                           "processors:preprocess"),
    "decoder": (DECODERS, decoders.custom_decoder, mapping.custom_decoder_rules, "decoders:custom_decoder"),
    "output_postprocessor": (POSTPROCESSORS, postprocessors.custom_postprocessor, mapping.custom_postprocessor_rules,
                             "processors:postprocess"),
}
"""Per part of a custom model: its kinds by tag, the PyTorch builder, the conversion rules, and the JAX
reference (`converters.jax_reference.<module>:<function>`)."""


def _unregistered(kinds, function) -> list[str]:
    return [f"{tag!r} ({config_type.__name__})" for tag, config_type in kinds.items()
            if config_type not in function.registry]


@pytest.mark.parametrize("part", PARTS)
def test_every_kind_has_a_pytorch_module_and_conversion_rules(part):
    kinds, builder, rules, _ = PARTS[part]
    assert not _unregistered(kinds, builder), f"{part}: no PyTorch builder for {_unregistered(kinds, builder)}"
    assert not _unregistered(kinds, rules), f"{part}: no conversion rules for {_unregistered(kinds, rules)}"


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="the JAX reference needs jax")
@pytest.mark.parametrize("part", PARTS)
def test_every_kind_has_a_jax_reference(part):
    kinds, *_, reference = PARTS[part]
    module, _, name = reference.partition(":")
    function = getattr(importlib.import_module(f"converters.jax_reference.{module}"), name)
    assert not _unregistered(kinds, function), f"{part}: no JAX reference for {_unregistered(kinds, function)}"
