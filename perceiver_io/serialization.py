"""Loading and saving models as converted checkpoint files (see `checkpoint_file`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from .checkpoint_file import CheckpointFileError, PlannedTensor, checkpoint_metadata, read_metadata, write_checkpoint
from .configs import ConfigError
from .tasks import TASKS, build_model


def load_state_dict_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Loads `state_dict` into `model`, requiring every key filled exactly once with the right shape.

    Raises CheckpointFileError listing the missing, unexpected and mis-shaped keys, naming `source`.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: expected {tuple(expected[key].shape)}, found {tuple(state_dict[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if expected[key].shape != state_dict[key].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointFileError(
            f"{source} does not fit the {type(model).__name__} its metadata describes: "
            f"missing {missing}, unexpected {unexpected}, wrong shapes {mismatched}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rebuilds a model from a converted checkpoint file alone (task and config are in its header).

    Returns the model in eval mode on `device`, cast to `dtype` if given.
    """
    path = Path(path)
    metadata = read_metadata(path)
    task = metadata.get("task")
    if task not in TASKS:
        raise CheckpointFileError(f"{path}: unknown task {task!r} in its metadata; known: {sorted(TASKS)}")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointFileError(f"{path}: its metadata has no readable 'config'") from None
    with torch.device("meta"):
        try:
            model = build_model(task, config)
        except ConfigError as error:
            raise CheckpointFileError(f"{path}: its config is not valid: {error}") from None
    with safe_open(path, framework="pt", device=str(device)) as f:
        state_dict = {key: f.get_tensor(key) for key in f.keys()}
    load_state_dict_strictly(model, state_dict, str(path))
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def task_of(model: nn.Module) -> str:
    for name, task in TASKS.items():
        if type(model) is task.model_type:
            return name
    raise ConfigError(f"{type(model).__name__} is not one of the task models {sorted(TASKS)}")


def save(model: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes a task model (e.g. fine-tuned) to a converted checkpoint file that `load` reads back."""
    task = task_of(model)
    tensors = [
        PlannedTensor(key, tuple(value.shape), np.dtype(str(value.dtype).removeprefix("torch.")),
                      lambda value=value: value.detach().cpu().numpy())
        for key, value in model.state_dict().items()
    ]
    return write_checkpoint(path, tensors, checkpoint_metadata(task, model.config.to_json()), overwrite)
