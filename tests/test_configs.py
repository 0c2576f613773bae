from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perceiver_io.configs import (
    LANGUAGE_MLM,
    EncoderConfig,
    FourierPositionEncodingConfig,
    ImagePreprocessorConfig,
    LanguageConfig,
)
from perceiver_io.errors import ConfigError
from perceiver_io.official_config import MAX_LAYERS, MAX_SIZE, OfficialConfig
from perceiver_io.registry import TASKS, parse_config
from perceiver_io.tasks import build_model

from .conftest import DATA, GOLDEN, manifest


def test_released_language_config_is_the_official_one():
    official = manifest("language_mlm")["config"]
    assert LanguageConfig.from_official(official) == LANGUAGE_MLM


def test_official_keys_round_trip(golden_language):
    config = LanguageConfig.from_official(golden_language.config)
    assert LanguageConfig.from_official(config.to_official()) == config

    def assert_contains(written, given, where="config"):
        for key, value in given.items():
            if isinstance(value, dict):
                assert_contains(written[key], value, f"{where}.{key}")
            else:
                assert written[key] == value, f"{where}.{key}"

    assert_contains(config.to_official(), golden_language.config)


def test_unknown_and_missing_keys_are_named(golden_language):
    with pytest.raises(ConfigError, match=r"language_mlm\.encoder_config: unknown keys \['num_blockz'\]"):
        LanguageConfig.from_official({**golden_language.config, "encoder_config": {"num_blockz": 1}})
    config = dict(golden_language.config)
    del config["D_MODEL"]
    with pytest.raises(ConfigError, match=r"missing required keys \['D_MODEL'\]"):
        LanguageConfig.from_official(config)


def test_impossible_configurations_are_config_errors(golden_language):
    config = {**golden_language.config, "D_MODEL": 40}
    with pytest.raises(ConfigError, match="tied embedding"):
        build_model("language_mlm", config)
    encoder = {**golden_language.config["encoder_config"], "num_self_attend_heads": 5}
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        build_model("language_mlm", {**golden_language.config, "encoder_config": encoder})


RELEASED = [task for task, spec in TASKS.items() if spec.released_config is not None]
CUSTOM = json.loads((DATA / "custom_reference_trees.json").read_text())["models"]
BASES = {task: json.loads((GOLDEN / task / "reduced_config.json").read_text()) for task in RELEASED} | {
    name: model["config"] for name, model in CUSTOM.items()
}
"""The golden reduced configs by task, and the recorded custom configs, by name."""


def _task(base: str) -> str:
    return "perceiver" if base in CUSTOM else base


def _replaced(config: dict, path: tuple, value) -> dict:
    config = copy.deepcopy(config)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return config


def _where(task: str, path: tuple) -> str:
    """The key path as errors name it: the task, then official keys joined by dots, list positions in brackets."""
    keys = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path)
    return task + keys


@pytest.mark.parametrize("task", RELEASED)
def test_released_and_golden_configs_parse_to_the_same_objects(task):
    released = TASKS[task].released_config
    assert parse_config(task, manifest(task)["config"]) == released
    assert parse_config(task, released.to_official()) == released
    assert parse_config(task, released) is released
    golden = parse_config(task, BASES[task])
    assert parse_config(task, golden.to_official()) == golden


G, P = "language_mlm", "image_patches_subsampled_queries"
BAD = [
    (G, ("D_MODEL",), 32.0, "an integer in [1, 16777216]"),  # was: TypeError, 'float' object is not iterable
    (G, ("D_MODEL",), "32", "an integer"),  # was: a misleading tied-embedding message, as the next four
    (G, ("D_MODEL",), -32, "an integer in [1, 16777216]"),
    (G, ("D_MODEL",), 0, "an integer in [1, 16777216]"),
    (G, ("D_MODEL",), True, "an integer"),
    (G, ("D_MODEL",), 1e30, "an integer"),
    (G, ("vocab_size",), -1, "an integer in [1, 16777216]"),  # was: RuntimeError, negative dimension
    (G, ("encoder_config", "num_self_attend_heads"), 0, "an integer in [1, 16777216]"),  # was: ZeroDivisionError
    (G, ("encoder_config",), None, "a mapping"),  # was: AttributeError
    (G, ("encoder_config", "num_blocks"), -1, "an integer in [1, 1024]"),  # was: accepted, no self-attention run
    (G, ("encoder_config", "num_blocks"), 0, "an integer in [1, 1024]"),
    (G, ("encoder_config", "num_self_attends_per_block"), 10**12, "an integer in [1, 1024]"),  # was: OOM-killed
    (G, ("encoder_config", "num_self_attends_per_block"), MAX_LAYERS + 1, "an integer in [1, 1024]"),
    (G, ("D_LATENTS",), MAX_SIZE + 1, "an integer in [1, 16777216]"),
    (G, ("encoder_config", "use_query_residual"), "yes", "true or false"),  # was: stored as a string
    (G, ("encoder_config", "dropout_prob"), 1.0, "a number in [0, 1)"),
    (G, ("encoder_config", "dropout_prob"), float("nan"), "a number in [0, 1)"),
    (G, ("encoder_config", "cross_attention_shape_for_attn"), "k", "one of 'kv', 'q'"),
    (G, ("decoder_config", "qk_channels"), -8, "an integer in [1, 16777216] or null"),
    ("multimodal_autoencoding", ("mask_probs", "label"), 1.5, "a number in [0, 1]"),
    ("optical_flow", ("decoder", "rescale_factor"), 0, "a number in (0, inf)"),
    ("optical_flow", ("TRAIN_SIZE",), [12, 16, 3], "a list of 2"),
    (P, ("input_preprocessor", "spatial_downsample"), 0, "an integer in [1, 16777216]"),  # was: ZeroDivisionError
    (P, ("input_shape",), "abc", "a list of one or more"),  # was: TypeError
    (P, ("input_shape", 0), -64, "an integer in [1, 16777216]"),  # was: reached the converter's ledger
    (P, ("decoder", "output_index_dims", 1), True, "an integer"),
    (P, ("input_shape",), [], "a list of one or more"),
    (P, ("encoder", "num_blocks"), "2", "an integer in [1, 1024]"),  # was: accepted
    (P, ("input_preprocessor", "prep_type"), "patch", "one of 'conv', 'conv1x1', 'patches', 'pixels'"),
    (P, ("input_preprocessor", "project_pos_dim"), -2, "an integer in [-1, 16777216]"),
    (P, ("decoder",), None, "a mapping"),
    ("image_pixels_add_conv1x1_postprocessor", ("output_postprocessor", "n_outputs"), 0, "[1, 16777216] or -1"),
]


@pytest.mark.parametrize(
    "base, path, value, expected", BAD, ids=[f"{_where(_task(b), p)}={v!r}"[:70] for b, p, v, _ in BAD]
)
def test_bad_values_are_config_errors_naming_the_key(base, path, value, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(_task(base), _replaced(BASES[base], path, value))
    message = str(error.value)
    assert message.startswith(f"{_where(_task(base), path)}: expected "), message
    assert expected in message and message.endswith(f"found {value!r}"), message


@pytest.mark.parametrize(
    "base, path, value",
    [
        (G, ("encoder_config", "qk_channels"), None),
        (G, ("encoder_config", "dropout_prob"), 0.1),
        (G, ("encoder_config", "num_self_attends_per_block"), 1),
        ("imagenet_learned", ("input_preprocessor", "project_pos_dim"), -1),
        ("imagenet_learned", ("input_preprocessor", "project_pos_dim"), 0),
        ("imagenet_learned", ("input_preprocessor", "n_extra_pos_mlp"), 0),
        ("imagenet_learned", ("encoder", "dropout_prob"), 0),
        ("multimodal_autoencoding", ("preproc_min_padding_size",), 0),
        ("multimodal_autoencoding", ("mask_probs", "image"), 1),
        ("optical_flow", ("FLOW_SCALE_FACTOR",), 20),
        ("raw_masked_queries_patches_postprocessor", ("output_postprocessor", "n_outputs"), -1),
    ],
)
def test_special_values_of_the_official_code_stay_valid(base, path, value):
    config = _replaced(BASES[base], path, value)
    stored = parse_config(_task(base), config).to_official()
    for key in path:
        stored = stored[key]
    assert stored == value
    build_model(_task(base), config)


def test_config_objects_built_in_python_are_checked_when_made():
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(LANGUAGE_MLM, d_model=-1)
    assert str(error.value) == "language_mlm.D_MODEL: expected an integer in [1, 16777216], found -1"
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(LANGUAGE_MLM.encoder, num_blocks=0)
    assert str(error.value) == "encoder_config.num_blocks: expected an integer in [1, 1024], found 0"
    with pytest.raises(ConfigError) as error:
        ImagePreprocessorConfig(prep_type="bogus")
    assert str(error.value).startswith("input_preprocessor.prep_type: expected one of 'conv',")
    made = ImagePreprocessorConfig(prep_type="patches", fourier_position_encoding_kwargs={"num_bands": 4})
    assert made.fourier_position_encoding_kwargs == FourierPositionEncodingConfig(num_bands=4)


def test_a_custom_flow_decoder_needs_its_output_shape():
    config = _replaced(BASES["flow"], ("decoder", "output_image_shape"), None)
    with pytest.raises(ConfigError, match=r"^perceiver.decoder.output_image_shape: a custom model's flow decoder"):
        parse_config("perceiver", config)


def test_a_range_is_the_fields_own_not_its_names():
    @dataclasses.dataclass(frozen=True)
    class OtherConfig(OfficialConfig):
        num_blocks: int = 1

    assert OtherConfig(num_blocks=MAX_LAYERS + 1).num_blocks == MAX_LAYERS + 1  # a size, as any undeclared integer
    with pytest.raises(ConfigError, match=r"encoder_config.num_blocks: expected an integer in \[1, 1024\]"):
        EncoderConfig(num_blocks=MAX_LAYERS + 1)


def _leaves(value, path=()):
    """(path, value) of every value in a config dict at any depth, but the "type" tags of custom modules."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if key != "type":
            yield (*path, key), item
            yield from _leaves(item, (*path, key))


LEAVES = [(base, path, value) for base, config in BASES.items() for path, value in _leaves(config) if value is not None]
NOT_A_NUMBER_IN_RANGE = st.booleans() | st.text(max_size=3) | st.integers(max_value=-2) | st.sampled_from(
    [float("nan"), float("inf")]
)
WRONG = {  # values that no field with an example of that type takes (float fields' examples may be integers)
    bool: st.integers() | st.text(max_size=3),
    int: NOT_A_NUMBER_IN_RANGE,
    float: NOT_A_NUMBER_IN_RANGE,
    str: st.booleans() | st.integers(),
    list: st.booleans() | st.text(max_size=3) | st.lists(st.text(max_size=2), min_size=1, max_size=2),
    dict: st.booleans() | st.integers() | st.lists(st.integers(), max_size=2),
}


@given(leaf=st.sampled_from(LEAVES), data=st.data())
def test_any_value_of_the_wrong_type_or_range_is_a_config_error_naming_its_key(leaf, data):
    base, path, example = leaf
    value = data.draw(WRONG[type(example)], label="value")
    with pytest.raises(ConfigError) as error:
        parse_config(_task(base), _replaced(BASES[base], path, value))
    assert re.match(re.escape(_where(_task(base), path)) + r"(\[\d+\])?: ", str(error.value)), error.value


def test_a_bad_config_exits_2_naming_the_key(golden_language, tmp_path, capsys):
    from converters.cli import main

    config = tmp_path / "bad.json"
    config.write_text(json.dumps(_replaced(golden_language.config, ("encoder_config", "num_blocks"), 0)))
    output = tmp_path / "out.safetensors"
    code = main([str(golden_language.checkpoint), "-o", str(output), "--task", G, "--config", str(config)])
    assert code == 2 and not output.exists()
    expected = "language_mlm.encoder_config.num_blocks: expected an integer in [1, 1024], found 0"
    assert expected in capsys.readouterr().err
