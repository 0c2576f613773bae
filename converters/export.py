"""PyTorch models back to Haiku: a model trained or fine-tuned here, written as a Haiku checkpoint that
the Haiku code (the official one) loads, and the JAX reference runs, with the same outputs.

The conversion rules run in reverse (`convert.export_tree`): every PyTorch parameter and buffer goes
back to its official module path, leaf name and layout, BatchNorm statistics included.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from perceiver_io.checkpoint_file import HAIKU_LAYOUT
from perceiver_io.errors import InputError
from perceiver_io.tasks import task_of

from .convert import HaikuTree, export_tree
from .haiku_pickle import save_haiku_npz, save_haiku_pickle


def model_to_haiku(model: nn.Module) -> tuple[str, HaikuTree, HaikuTree]:
    """(task, params, state) of a task model, in Haiku's names and layouts."""
    task = task_of(model)
    params, state = export_tree(model.state_dict(), task, model.config)
    return task, params, state


def export_haiku_checkpoint(model: nn.Module, path: str | os.PathLike, overwrite: bool = False, *,
                            container: bool | None = None) -> Path:
    """Writes `model` as a Haiku checkpoint: `.npz` (keys `params/<module>/<leaf>`, `state/...`) or, for
    any other suffix, a pickle in the released format: `{'params': ..., 'state': ...}` when `container`, bare
    params when not. By default, the layout of the checkpoint the model was converted from (its
    `haiku_layout`, which `perceiver_io.load` reads from a converted file and `save` keeps), else the
    container only for a model with state, as the released files are. Atomic; an existing file is kept
    unless `overwrite`."""
    path = Path(path)
    _, params, state = model_to_haiku(model)
    if container is None and getattr(model, "haiku_layout", None) in HAIKU_LAYOUT.values():
        container = model.haiku_layout == HAIKU_LAYOUT[True]
    if path.suffix.lower() == ".npz":
        save_haiku_npz(path, params, state, overwrite=overwrite)
    else:
        if container is False and state:
            raise InputError(f"{path}: the model has state ({len(state)} modules), which bare params cannot hold; "
                             "export it with container=True")
        with_state = bool(state) if container is None else container
        save_haiku_pickle(path, params, state if with_state else None, overwrite=overwrite)
    return path
