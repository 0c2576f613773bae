from __future__ import annotations

import pytest

from perceiver_io.configs import LANGUAGE_MLM, ConfigError, LanguageConfig
from perceiver_io.tasks import build_model

from .conftest import manifest


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
