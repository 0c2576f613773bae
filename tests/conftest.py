"""Shared fixtures: the official golden data copied from the official implementation's runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
MANIFESTS = DATA / "manifests"


class Golden:
    """One task's golden folder: checkpoint, reduced config, inputs, official outputs, intermediates."""

    def __init__(self, task: str):
        self.task = task
        self.folder = GOLDEN / task
        meta = json.loads((self.folder / "config.json").read_text())
        self.checkpoint = self.folder / meta["checkpoint_file"]
        self.config = json.loads((self.folder / "reduced_config.json").read_text())
        self.inputs = dict(np.load(self.folder / "inputs.npz"))
        self.outputs = dict(np.load(self.folder / "outputs.npz"))
        self.intermediates = dict(np.load(self.folder / "intermediates.npz"))


@pytest.fixture(scope="session")
def golden_language() -> Golden:
    return Golden("language_mlm")


@pytest.fixture(scope="session")
def converted_golden(tmp_path_factory):
    """`converted_golden(task)`: the `ConversionReport` of the task's golden checkpoint, converted once per
    session (its `output` is the file; tests only read it)."""
    from converters.convert import convert_checkpoint

    reports = {}

    def converted(task: str):
        if task not in reports:
            golden, folder = Golden(task), tmp_path_factory.mktemp(f"converted-{task}")
            reports[task] = convert_checkpoint(golden.checkpoint, folder / f"{task}.safetensors", task, golden.config)
        return reports[task]

    return converted


def manifest(task: str) -> dict:
    return json.loads((MANIFESTS / f"{task}.json").read_text())
