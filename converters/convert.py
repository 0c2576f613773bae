"""Haiku parameter trees -> PyTorch state_dicts (and back), with a ledger.

The ledger holds conversion to account: every source leaf is used exactly once, every PyTorch
parameter and buffer is filled exactly once, every shape agrees, and every dtype fits: floating
parameters all in the checkpoint's one floating dtype, integer buffers (EMA counters) in an integer one.
Any miss is one error listing the unused, unfilled, mis-shaped and mis-typed keys, before anything is
written.

Conversion needs numpy only. The PyTorch side of the ledger (the state_dict's names, shapes and whether
each is floating) comes from the model built on the meta device, which needs torch; a process that has
not imported torch reads it from a small cache instead (`shapes/` in the `perceiver_io.hub` cache
folder), keyed by the task, the configuration, the source of `perceiver_io` and the version of torch,
and fills that cache the first time. Importing torch and building the model (whose first `normal_` on
the meta device imports torch._dynamo) would take longer than the rest of a full-size conversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from perceiver_io import mapping
from perceiver_io.atomic import atomic_output, check_output
from perceiver_io.cache import get_cache_dir
from perceiver_io.checkpoint_file import (
    HAIKU_LAYOUT,
    LateValue,
    PlannedTensor,
    c_contiguous,
    checkpoint_metadata,
    write_checkpoint,
)
from perceiver_io.configs import OfficialConfig
from perceiver_io.errors import ConversionError, MappingError
from perceiver_io.registry import get_task, parse_config

from .haiku_pickle import HaikuCheckpoint, load_haiku_checkpoint

HaikuTree = dict[str, dict[str, np.ndarray]]


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


class TorchTarget(NamedTuple):
    """A tensor of the PyTorch model's state_dict: its shape, and whether it is floating (else integer)."""

    shape: tuple[int, ...]
    floating: bool


def expected_torch_tensors(task: str, config: OfficialConfig) -> dict[str, TorchTarget]:
    """The PyTorch model's state_dict by name, from the model built on the meta device, or, in a process
    without torch, from the shape cache (filled the first time)."""
    if "torch" in sys.modules:
        return _meta_model_tensors(task, config)
    cached = shape_cache_path(task, config)
    try:
        entry = json.loads(cached.read_text())
        if entry["task"] == task and entry["config"] == config.to_json():
            return {key: TorchTarget(tuple(shape), floating) for key, (shape, floating) in entry["tensors"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    tensors = _meta_model_tensors(task, config)
    _write_atomically(cached, json.dumps({"task": task, "config": config.to_json(), "tensors": tensors}))
    return tensors


def _write_atomically(path: Path, text: str) -> None:
    """Writes a cache file; if the cache cannot be written, the next conversion just imports torch again."""
    try:
        with atomic_output(path, overwrite=True, text=True) as out:
            out.write(text)
    except OSError:
        pass


def shape_cache_path(task: str, config: OfficialConfig) -> Path:
    """Where the state_dict shapes and kinds of `task` with `config` are cached for this source of
    `perceiver_io` and this version of torch."""
    key = hashlib.sha256(f"{task}\n{config.to_json()}\ntorch {importlib.metadata.version('torch')}\n".encode())
    for source in sorted(Path(mapping.__file__).parent.glob("*.py")):  # every module of perceiver_io
        key.update(source.name.encode() + b"\n" + source.read_bytes())
    return get_cache_dir() / "shapes" / f"{task}-{key.hexdigest()[:32]}.json"


def _meta_model_tensors(task: str, config: OfficialConfig) -> dict[str, TorchTarget]:
    import torch

    from perceiver_io.tasks import build_model

    with torch.device("meta"):
        model = build_model(task, config)
    return {key: TorchTarget(tuple(value.shape), value.is_floating_point())
            for key, value in model.state_dict().items()}


def _leaf(checkpoint: HaikuCheckpoint, rule: mapping.Rule) -> np.ndarray | None:
    tree = checkpoint.params if rule.collection == "params" else checkpoint.state
    return tree.get(rule.module, {}).get(rule.name)


def _all_leaves(checkpoint: HaikuCheckpoint) -> set[tuple[str, str]]:
    return {
        (collection, f"{module}/{name}")
        for collection, tree in (("params", checkpoint.params), ("state", checkpoint.state))
        for module, leaves in tree.items()
        for name in leaves
    }


def plan_conversion(checkpoint: HaikuCheckpoint, task: str, config: OfficialConfig) -> list[PlannedTensor]:
    """The PyTorch tensors of `checkpoint`, checked by the ledger, each computed when it is written."""
    rules = get_task(task).conversion_rules(config)
    expected = expected_torch_tensors(task, config)
    source = checkpoint.source or "the parameter tree"

    leaves = [(rule, _leaf(checkpoint, rule)) for rule in rules]
    missing = [f"{rule.collection}:{rule.haiku_key}" for rule, leaf in leaves if leaf is None]
    used = {(r.collection, r.haiku_key) for r in rules}
    unused = sorted(f"{collection}:{key}" for collection, key in _all_leaves(checkpoint) - used)
    targets = {r.torch_key for r in rules}
    unfilled = sorted(set(expected) - targets)
    unknown = sorted(targets - set(expected))
    floating = Counter(leaf.dtype for _, leaf in leaves if leaf is not None and leaf.dtype.kind == "f")
    dtype = floating.most_common(1)[0][0] if floating else np.dtype(np.float32)
    mismatched, mistyped = [], []
    for rule, leaf in leaves:
        if leaf is not None and rule.torch_key in expected:
            target = expected[rule.torch_key]
            want = rule.layout.haiku_shape(target.shape)
            if tuple(leaf.shape) != want:
                mismatched.append(f"{rule.haiku_key}: expected {want}, found {tuple(leaf.shape)}")
            if target.floating and leaf.dtype != dtype:
                mistyped.append(f"{rule.collection}:{rule.haiku_key}: expected {dtype}, found {leaf.dtype}")
            elif not target.floating and leaf.dtype.kind not in "iu":
                mistyped.append(f"{rule.collection}:{rule.haiku_key}: expected an integer dtype, found {leaf.dtype}")
    misfit = missing or unused or unfilled or unknown or mismatched
    if misfit or mistyped:
        problems = [
            f"{title} ({len(keys)}): {_listing(keys)}"
            for title, keys in (
                ("missing leaves", missing),
                ("unused leaves", unused),
                ("unfilled PyTorch parameters", unfilled),
                ("rules without a PyTorch parameter", unknown),
                ("wrong shapes", mismatched),
                ("wrong dtypes", mistyped),
            )
            if keys
        ]
        if misfit:
            problems.append("Check --task, and pass --config with the model's configuration (official colab keys) "
                            "if it is not the released one.")
        if mistyped:
            problems.append(f"Cast every floating leaf to the checkpoint's floating dtype, {dtype}, and EMA counters "
                            "to int32, then save the checkpoint again.")
        raise MappingError(
            f"{source} does not match the {task} model with this configuration:\n  " + "\n  ".join(problems)
        )
    return [
        PlannedTensor(
            rule.torch_key,
            expected[rule.torch_key].shape,
            leaf.dtype,
            lambda rule=rule, leaf=leaf: rule.layout.to_torch(leaf),
        )
        for rule, leaf in leaves
    ]


def convert_tree(
    source: str | os.PathLike | Mapping, task: str, config: OfficialConfig | Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """A Haiku checkpoint (file or in-memory tree) as a PyTorch state_dict of numpy arrays."""
    config = parse_config(task, config)
    checkpoint = load_haiku_checkpoint(source)
    return {t.name: c_contiguous(t.compute()) for t in plan_conversion(checkpoint, task, config)}


def export_tree(
    state_dict: Mapping[str, Any], task: str, config: OfficialConfig | Mapping[str, Any] | None = None
) -> tuple[HaikuTree, HaikuTree]:
    """A PyTorch state_dict (tensors or arrays) as Haiku trees `(params, state)`: the inverse of conversion."""
    config = parse_config(task, config)
    rules = get_task(task).conversion_rules(config)
    missing = sorted({r.torch_key for r in rules} - set(state_dict))
    unused = sorted(set(state_dict) - {r.torch_key for r in rules})
    if missing or unused:
        raise MappingError(
            f"the state_dict does not match the {task} model: missing {_listing(missing)}; unused {_listing(unused)}"
        )
    trees: dict[str, HaikuTree] = {"params": {}, "state": {}}
    for rule in rules:
        value = state_dict[rule.torch_key]
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        trees[rule.collection].setdefault(rule.module, {})[rule.name] = np.asarray(
            rule.layout.to_haiku(array), order="C"
        )
    return trees["params"], trees["state"]


@dataclass(frozen=True)
class ConversionReport:
    task: str
    output: Path
    num_leaves: int
    num_parameters: int
    num_state_values: int
    seconds: float
    source_sha256: str | None


def convert_checkpoint(
    source: str | os.PathLike | Mapping,
    output: str | os.PathLike,
    task: str,
    config: OfficialConfig | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Converts a Haiku checkpoint to a safetensors file that `perceiver_io.load` rebuilds alone.

    The file carries the task, the configuration (official keys) and the source's sha256. It is
    written atomically; an existing `output` is kept unless `overwrite`.
    """
    start = time.perf_counter()
    output = Path(output)
    if not isinstance(source, Mapping) and output.exists() and Path(source).exists() and output.samefile(source):
        raise ConversionError(f"{output} is the source checkpoint {source} itself; write the conversion to "
                              "another file")
    check_output(output, overwrite)
    config = parse_config(task, config)
    checkpoint = load_haiku_checkpoint(source)
    tensors = plan_conversion(checkpoint, task, config)
    state_keys = {rule.torch_key for rule in get_task(task).conversion_rules(config) if rule.collection == "state"}
    sizes = {t.name: int(np.prod(t.shape, dtype=np.int64)) for t in tensors}
    metadata: dict[str, str | LateValue] = checkpoint_metadata(
        task, config.to_json(), haiku_layout=HAIKU_LAYOUT[checkpoint.container])
    if checkpoint.source:
        metadata["source_sha256"] = LateValue(64, lambda: checkpoint.sha256)  # hashed meanwhile
        metadata["source_file"] = Path(checkpoint.source).name
    write_checkpoint(output, tensors, metadata, overwrite)
    return ConversionReport(
        task=task,
        output=output,
        num_leaves=len(tensors),
        num_parameters=sum(size for name, size in sizes.items() if name not in state_keys),
        num_state_values=sum(size for name, size in sizes.items() if name in state_keys),
        seconds=time.perf_counter() - start,
        source_sha256=checkpoint.sha256,
    )
