"""A Hugging Face transformers-format folder (config.json with model.safetensors, its shards, or
pytorch_model.bin) as the port's task, configuration and state_dict, with a ledger: every tensor of the
folder used once (`perceiver_io.transformers_names`), every parameter of the port filled once
(`perceiver_io.serialization.load_state_dict_strictly`).

Weights are read safely: safetensors files, or a pickled `.bin` through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from perceiver_io.configs import OfficialConfig
from perceiver_io.errors import CheckpointFormatError, ConfigError, MappingError, one_line
from perceiver_io.registry import parse_config
from perceiver_io.transformers_names import transformers_model

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
MAX_CONFIG_BYTES = 1 << 20
"""A transformers config.json is a few KB; anything over a MiB is not one."""


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES} bytes: not a transformers config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ConfigError(f"{path} is not valid JSON ({type(error).__name__}: {error})") from None


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt", device="cpu") as weights:
            return {name: weights.get_tensor(name) for name in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file ({error})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weights by name: model.safetensors, its shards, or pytorch_model.bin."""
    if (folder / SAFETENSORS_FILE).is_file():
        return _safetensors(folder / SAFETENSORS_FILE)
    if (folder / SAFETENSORS_INDEX).is_file():
        index = _read_json(folder / SAFETENSORS_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        names = list(weight_map.values()) if isinstance(weight_map, dict) else []
        shards = sorted(set(names)) if all(isinstance(name, str) for name in names) else []
        if not shards or any(Path(shard).name != shard or shard in (".", "..") for shard in shards):
            raise CheckpointFormatError(f"{folder / SAFETENSORS_INDEX} names no shards in this folder")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_safetensors(folder / shard))
        return tensors
    if (folder / PICKLE_FILE).is_file():
        try:
            tensors = torch.load(folder / PICKLE_FILE, map_location="cpu", weights_only=True)
        except Exception as error:  # torch's unpickler refuses anything but tensors and plain containers
            raise CheckpointFormatError(f"{folder / PICKLE_FILE} is not a plain state_dict of tensors, and nothing "
                                        f"in it was run ({one_line(error)})") from None
        if not isinstance(tensors, dict) or not all(isinstance(value, torch.Tensor) for value in tensors.values()):
            raise CheckpointFormatError(f"{folder / PICKLE_FILE} is not a state_dict of tensors")
        return tensors
    raise CheckpointFormatError(f"{folder} holds {CONFIG_FILE} but no weights ({SAFETENSORS_FILE}, "
                                f"{SAFETENSORS_INDEX} or {PICKLE_FILE})")


def transformers_state_dict(folder: str | Path) -> tuple[str, OfficialConfig, dict[str, torch.Tensor]]:
    """The task, configuration and the port's state_dict of a transformers-format folder. Raises
    MappingError naming, in transformers' names, the tensors the configuration needs and the folder lacks,
    and those it has and nothing uses."""
    folder = Path(folder)
    task, official, rules = transformers_model(_read_json(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
    config = parse_config(task, official)
    tensors = read_weights(folder)
    targets = {rule.transformers_key: rule.torch_key for rule in rules(config)}
    missing, unused = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or unused:
        raise MappingError(f"{folder}: its weights do not fit the {task} model its {CONFIG_FILE} describes: missing "
                           f"{missing}, unused {unused}")
    return task, config, {targets[name]: tensor for name, tensor in tensors.items()}
