"""Loading models (released names, converted files, original Haiku files) and saving converted files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from . import hub
from .checkpoint_file import (
    HAIKU_LAYOUT,
    PlannedTensor,
    checkpoint_metadata,
    is_safetensors_file,
    read_metadata,
    write_checkpoint,
)
from .configs import OfficialConfig
from .errors import CheckpointFileError, ConfigError, InputError
from .hf_hub import is_repository_id, is_transformers_folder, repository_folder
from .inputs import dtype_name
from .placement import resolve_device, resolve_dtype
from .registry import TASKS
from .tasks import build_model, task_of


def load_state_dict_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Loads `state_dict` into `model`, requiring every key filled exactly once with the right shape.

    Raises CheckpointFileError listing the missing, unexpected and mis-shaped keys, naming `source`.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shared = sorted(set(expected) & set(state_dict))
    mismatched = [
        f"{key}: expected {tuple(expected[key].shape)}, found {tuple(state_dict[key].shape)}"
        for key in shared
        if expected[key].shape != state_dict[key].shape
    ]
    mistyped = [
        f"{key}: expected {'floating' if expected[key].is_floating_point() else 'integer'} values, found "
        f"{dtype_name(state_dict[key].dtype)}"
        for key in shared
        if expected[key].is_floating_point() != state_dict[key].is_floating_point()
    ]
    if missing or unexpected or mismatched or mistyped:
        raise CheckpointFileError(
            f"{source} does not fit the {type(model).__name__} its metadata describes: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {mismatched}" + (f", wrong dtypes {mistyped}" if mistyped else "")
        )
    floating = sorted({dtype_name(value.dtype) for value in state_dict.values() if value.is_floating_point()})
    if len(floating) > 1:
        raise CheckpointFileError(f"{source} mixes floating dtypes {floating}; a model computes in one")
    model.load_state_dict(state_dict, strict=True, assign=True)


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    task: str | None = None,
    config: OfficialConfig | Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> nn.Module:
    """A model in eval mode on `device` ('cpu', 'cuda', 'cuda:1', a torch.device), cast to `dtype` if given
    ('float32', 'bfloat16', 'float16', or the torch dtype), from any of:

    - the name of a released checkpoint (`perceiver_io.hub.RELEASES`, e.g. "language_mlm"): the released
      file is downloaded into the cache (`cache_dir`, default `perceiver_io.hub.get_cache_dir()`) and
      converted there once; later calls read the converted file without touching the network;
    - a converted file (a `.safetensors` name, or any name with a safetensors header), which carries its
      task and configuration in its header;
    - a Hugging Face transformers-format folder (config.json with model.safetensors or pytorch_model.bin,
      as `save_pretrained` writes), its task and configuration read from config.json; the model computes
      with the official numerics, not transformers' (`perceiver_io.transformers_names`);
    - a Hugging Face Hub repository id (`deepmind/language-perceiver`) at `revision` (default main), fetched
      into huggingface_hub's own cache (`perceiver_io.hf_hub`; `HF_HUB_OFFLINE=1` keeps to the cache), then
      imported as a folder;
    - an original Haiku checkpoint (any other file, e.g. `.pickle`, `.pystate`, `.npz`), converted in
      memory. It needs `task=`, and `config=` (official keys) unless it has the released configuration.
    """
    device = resolve_device(device)
    dtype = None if dtype is None else resolve_dtype(dtype)
    if revision is not None and not (isinstance(name_or_path, str) and is_repository_id(name_or_path)):
        raise ConfigError(f"revision= is for a Hugging Face Hub id; {name_or_path!r} is not one")
    if isinstance(name_or_path, str) and name_or_path not in hub.RELEASES and is_repository_id(name_or_path):
        if task is not None or config is not None:
            raise ConfigError(f"{name_or_path} is a Hugging Face Hub id: its config.json gives the task and "
                              "configuration; pass neither task= nor config=")
        name_or_path = repository_folder(name_or_path, revision)
    if isinstance(name_or_path, str) and name_or_path in hub.RELEASES:
        if task is not None or config is not None:
            raise ConfigError(f"the released checkpoint {name_or_path!r} has its own task and configuration; "
                              "pass neither task= nor config=")
        name_or_path = hub.download_converted(name_or_path, cache_dir=cache_dir)
    path = Path(name_or_path)
    if is_transformers_folder(path):
        if task is not None or config is not None:
            raise ConfigError(f"{path} is a transformers-format folder: its config.json gives the task and "
                              "configuration; pass neither task= nor config=")
        model = _load_transformers(path, device)
    elif path.suffix == ".safetensors" or is_safetensors_file(path):
        if task is not None or config is not None:
            raise ConfigError(f"{path} carries its task and configuration in its header; pass neither task= "
                              "nor config=")
        model = _load_converted(path, device)
    else:
        model = _load_haiku(path, device, task, config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def _load_converted(path: Path, target: torch.device) -> nn.Module:
    """Rebuilds a model from a converted checkpoint file alone (task and config are in its header)."""
    metadata = read_metadata(path)
    task = metadata.get("task")
    if task not in TASKS:
        raise CheckpointFileError(f"{path}: unknown task {task!r} in its metadata; known: {list(TASKS)}")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointFileError(f"{path}: its metadata has no readable 'config'") from None
    with torch.device("meta"):
        try:
            model = build_model(task, config)
        except ConfigError as error:
            raise CheckpointFileError(f"{path}: its config is not valid: {error}") from None
    try:  # safetensors places tensors on CPU or CUDA only, and names them "cpu" or "cuda:N"
        with safe_open(path, framework="pt", device=str(target) if target.type == "cuda" else "cpu") as f:
            state_dict = {key: f.get_tensor(key).to(target) for key in f.keys()}
    except SafetensorError as error:
        raise CheckpointFileError(f"{path} is damaged or truncated: {error}") from None
    load_state_dict_strictly(model, state_dict, str(path))
    if metadata.get("haiku_layout") in HAIKU_LAYOUT.values():
        model.haiku_layout = metadata["haiku_layout"]  # kept by save, given back by export
    return model


def _load_transformers(path: Path, device: torch.device) -> nn.Module:
    """Imports a transformers-format folder (see `converters.transformers_import`)."""
    from converters.transformers_import import transformers_state_dict

    task, config, state_dict = transformers_state_dict(path)
    with torch.device("meta"):
        model = build_model(task, config)
    load_state_dict_strictly(model, {key: value.to(device) for key, value in state_dict.items()}, str(path))
    return model


def _load_haiku(
    path: Path, device: torch.device, task: str | None, config: OfficialConfig | Mapping[str, Any] | None
) -> nn.Module:
    """Converts an original Haiku checkpoint in memory (see `converters.convert.convert_tree`)."""
    if not path.exists():
        raise CheckpointFileError(
            f"{path} does not exist, and is not the name of a released checkpoint ({', '.join(hub.RELEASES)})"
        )
    if task is None:
        raise ConfigError(
            f"{path} is not a converted .safetensors file, so it is read as an original Haiku checkpoint, which "
            f"needs task= (one of {', '.join(TASKS)}) and, unless it has the released configuration, "
            "config= in official keys"
        )
    from converters.convert import convert_tree

    arrays = convert_tree(path, task, config)
    with torch.device("meta"):
        model = build_model(task, config)
    state_dict = {
        key: torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)
        for key, array in arrays.items()
    }
    load_state_dict_strictly(model, state_dict, str(path))
    return model


def save(model: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes a task model (e.g. fine-tuned) to a converted checkpoint file that `load` reads back, with the
    Haiku layout of the checkpoint it came from (`haiku_layout`, set by `load`), for a later export."""
    task = task_of(model)
    state_dict = model.state_dict()
    if any(value.is_meta for value in state_dict.values()):
        raise InputError("the model is on the meta device, so it has no values to save; load its weights first")
    tensors = [_planned(key, value) for key, value in state_dict.items()]
    layout = getattr(model, "haiku_layout", None)
    metadata = checkpoint_metadata(task, model.config.to_json(), **({"haiku_layout": layout} if layout else {}))
    return write_checkpoint(path, tensors, metadata, overwrite)


def _planned(key: str, value: torch.Tensor) -> PlannedTensor:
    """`value` to be written under `key`; bfloat16, which numpy lacks, as its bits (int16) marked BF16."""
    value = value.detach()
    if value.dtype == torch.bfloat16:
        return PlannedTensor(key, tuple(value.shape), np.dtype(np.int16),
                             lambda: value.view(torch.int16).cpu().numpy(), stored_as="BF16")
    return PlannedTensor(key, tuple(value.shape), np.dtype(dtype_name(value.dtype)),
                         lambda: value.cpu().numpy())
