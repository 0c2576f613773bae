"""Nested mappings as flat `a/b` names: how stages, inputs and outputs are named in every file and report
(`subsampling/image`, `out/audio`, `decoder_query/label`). Pure Python, so that the JAX reference uses it
without torch."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}, 'c': y, 'd': None} -> {'a/b': x, 'c': y}: None values are not stages."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{name}/"))
        elif value is not None:
            flat[f"{prefix}{name}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b': x, 'c': y} -> {'a': {'b': x}, 'c': y}."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


def is_output(name: str) -> bool:
    """Whether a flat name is the model's output: `out`, or `out/<key>` for a mapping of outputs."""
    return name == "out" or name.startswith("out/")
