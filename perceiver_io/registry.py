"""Everything about each task, in one record, and the one table of them (`TASKS`).

A `TaskSpec` holds what the rest of the project asks about a task: its config type and released
configuration, its PyTorch model class, its conversion rules (`perceiver_io.mapping`), the arrays of its
official call and synthetic ones (`perceiver_io.task_inputs`), its released checkpoint (file, size,
checksum, mirrors) and the pipeline that uses it. Every other list of tasks derives from `TASKS`:
`build_model`, the hub's `RELEASES`, the command line's choices, verify's inputs, the task lists of the
tests and benchmarks. A new task is one entry here (and its model, rules and inputs where their kind lives).

Torch-free: the model class and pipeline are named by import path and imported on first use, so that
converting a checkpoint does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from . import mapping, task_inputs
from .configs import (
    IMAGENET_CONV,
    IMAGENET_FOURIER,
    IMAGENET_LEARNED,
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
from .errors import ConfigError, MappingError
from .mapping import Rule
from .task_inputs import InputSpec

RELEASE_BASE_URL = "https://storage.googleapis.com/perceiver_io/"
BASE_URL_ENV = "PERCEIVER_IO_BASE_URL"
BYTES_PER_PARAMETER = 4  # float32


@dataclass(frozen=True)
class Release:
    """A released checkpoint: its file under the official bucket, the official manifest's parameter count
    (`total_param_count`), a sha256 where one is known, and optional mirrors: full URLs tried after the
    official one, and a Google Drive copy (`gdrive_id`), tried last."""

    file_name: str
    num_parameters: int
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()
    gdrive_id: str | None = None

    @property
    def approx_bytes(self) -> int:
        return BYTES_PER_PARAMETER * self.num_parameters

    def urls(self, base_url: str | None = None) -> list[str]:
        """The official URL (or the one under `base_url` / `$PERCEIVER_IO_BASE_URL`), then the mirrors."""
        base = base_url or os.environ.get(BASE_URL_ENV) or RELEASE_BASE_URL
        return [f"{base.rstrip('/')}/{self.file_name}", *self.mirrors]


@dataclass(frozen=True)
class TaskSpec:
    """One task. `model` and `pipeline` are `module:name` import paths (None: no PyTorch model yet, no
    pipeline); `rules(config)` lists every leaf of its checkpoints; `inputs(config)` the arrays of its
    official call; `synthetic_inputs(config)` deterministic arrays of that call; `release` its released
    checkpoint, None for a task without one (custom models)."""

    name: str
    summary: str
    config_type: type[OfficialConfig]
    released_config: OfficialConfig | None
    model: str | None
    rules: Callable[[Any], list[Rule]]
    inputs: Callable[[Any], dict[str, InputSpec]]
    synthetic_inputs: Callable[[Any], dict[str, Any]]
    release: Release | None = None
    pipeline: str | None = None

    def model_class(self) -> type:
        """The PyTorch model class (imports torch)."""
        if self.model is None:
            raise ConfigError(f"the {self.name} model is not ported to PyTorch yet; ported: {', '.join(ported())}")
        return _imported(self.model)

    def parse_config(self, config: OfficialConfig | Mapping[str, Any] | None = None) -> OfficialConfig:
        """The task's config from a config object, a dict in official keys, or None (the released one)."""
        if config is None:
            if self.released_config is None:
                raise ConfigError(f"task {self.name!r} has no released configuration; pass --config (official keys)")
            return self.released_config
        if isinstance(config, Mapping):
            config = self.config_type.from_official(config, self.name)  # errors name the task's keys
        if not isinstance(config, self.config_type):
            raise ConfigError(f"a {self.name} config must be a {self.config_type.__name__} or a dict, got "
                              f"{type(config).__name__}")
        if isinstance(config, ImageNetConfig) and config.variant != self.name:
            preprocessor = config.input_preprocessor
            raise ConfigError(f"the config describes an {config.variant} model (prep_type {preprocessor.prep_type!r}, "
                              f"{preprocessor.position_encoding_type} positions), not {self.name}; give --task "
                              f"{config.variant}")
        return config

    def conversion_rules(self, config: OfficialConfig) -> list[Rule]:
        """Every leaf of a checkpoint of this task under `config`, as rules naming distinct leaves and targets."""
        rules = self.rules(config)
        targets = [rule.torch_key for rule in rules]
        sources = [(rule.collection, rule.haiku_key) for rule in rules]
        if len(set(targets)) != len(targets) or len(set(sources)) != len(sources):
            raise MappingError(f"the {self.name} rules name a leaf or a target twice")
        return rules


def _imported(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _imagenet(name: str, summary: str, config: ImageNetConfig, release: Release) -> TaskSpec:
    return TaskSpec(name, summary, ImageNetConfig, config, "perceiver_io.tasks:ImageClassifier", mapping.imagenet,
                    task_inputs.imagenet_inputs, task_inputs.synthetic_imagenet, release,
                    "perceiver_io.pipelines:classify_image")


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec(
        "language_mlm", "masked language modelling on UTF-8 bytes", LanguageConfig, LANGUAGE_MLM,
        "perceiver_io.tasks:LanguagePerceiver", mapping.language_mlm, task_inputs.language_inputs,
        task_inputs.synthetic_language, Release("language_perceiver_io_bytes.pickle", 201_108_230),
        "perceiver_io.pipelines:fill_mask"),
    _imagenet("imagenet_learned", "ImageNet classification, learned positions and a 1x1 conv", IMAGENET_LEARNED,
              Release("imagenet_learned_position_encoding.pystate", 62_255_848)),
    _imagenet("imagenet_fourier", "ImageNet classification, Fourier positions on pixels", IMAGENET_FOURIER,
              Release("imagenet_fourier_position_encoding.pystate", 48_440_627)),
    _imagenet("imagenet_conv", "ImageNet classification, conv stem and Fourier positions", IMAGENET_CONV,
              Release("imagenet_conv_preprocessing.pystate", 48_646_522)),
    TaskSpec(
        "optical_flow", "optical flow between two frames", FlowConfig, OPTICAL_FLOW, "perceiver_io.tasks:OpticalFlow",
        mapping.optical_flow, task_inputs.flow_inputs, task_inputs.synthetic_flow,
        Release("optical_flow_checkpoint.pystate", 41_057_134), "perceiver_io.flow:tiled_flow"),
    TaskSpec(
        "multimodal_autoencoding", "video, audio and label autoencoding", MultimodalConfig, MULTIMODAL_AUTOENCODING,
        "perceiver_io.tasks:VideoAutoencoder", mapping.multimodal_autoencoding, task_inputs.multimodal_inputs,
        task_inputs.synthetic_multimodal, Release("video_autoencoding_checkpoint.pystate", 19_858_855),
        "perceiver_io.pipelines:reconstruct_video"),
    TaskSpec(
        "perceiver", "a custom Perceiver of the official building set (--config)", PerceiverConfig, None,
        "perceiver_io.tasks:CustomPerceiver", mapping.custom_perceiver, task_inputs.custom_inputs,
        task_inputs.synthetic_custom),
)}
"""Every task, the six released ones first."""

class _Releases(Mapping[str, Release]):
    """The `release` of every task that has one, read from `TASKS` at each use: a view, not a copy."""

    def __getitem__(self, name: str) -> Release:
        release = TASKS[name].release if name in TASKS else None
        if release is None:
            raise KeyError(name)
        return release

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in TASKS.items() if spec.release is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


RELEASES: Mapping[str, Release] = _Releases()
"""The six checkpoints DeepMind released with Perceiver IO, by the name `perceiver_io.load` takes (the
task's)."""


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def parse_config(task: str, config: OfficialConfig | Mapping[str, Any] | None = None) -> OfficialConfig:
    """`get_task(task).parse_config(config)`."""
    return get_task(task).parse_config(config)


def ported() -> list[str]:
    """The tasks with a PyTorch model."""
    return [name for name, spec in TASKS.items() if spec.model is not None]
