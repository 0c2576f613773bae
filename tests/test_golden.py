"""Each ported task's golden checkpoint (official architecture, random weights, released file format)
converted and run in PyTorch, against the outputs and intermediates of the official JAX code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.convert import convert_checkpoint
from converters.parity import run_torch
from perceiver_io.registry import RELEASES
from perceiver_io.serialization import load

from .conftest import Golden

TOLERANCE = 1e-4
TASKS = [task for task in RELEASES if task != "multimodal_autoencoding"]  # that one: test_multimodal.py
STAGES = ["encoder_inputs", "inputs_without_pos", "z", "decoder_outputs"]


@pytest.fixture(scope="module", params=TASKS)
def converted(request, tmp_path_factory):
    golden = Golden(request.param)
    report = golden.convert(tmp_path_factory.mktemp(golden.task))
    return golden, report, load(report.output)


def test_conversion_accounts_for_every_leaf(converted):
    golden, report, model = converted
    manifest = json.loads((golden.folder / "param_manifest.json").read_text())
    assert report.num_leaves == len(manifest["params"]) + len(manifest.get("state", []))
    assert report.num_parameters == manifest["total_param_count"]
    assert report.num_state_values == manifest["total_state_count"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_param_count"]
    assert not model.training


def test_outputs_and_stages_match_official(converted):
    golden, _, model = converted
    stages = run_torch(model, golden.inputs)
    assert all(np.isfinite(value).all() for value in stages.values()), "NaN or inf in a stage"
    checked = [(stage, golden.intermediates[stage]) for stage in STAGES if stage in golden.intermediates]
    for stage, official in [*checked, ("out", golden.outputs["out"])]:
        error = np.abs(stages[stage] - official).max()
        print(f"{golden.task} {stage}: max abs error {error:.3e}")
        assert error <= TOLERANCE, f"{golden.task} {stage}: max abs error {error:.3e} > {TOLERANCE}"


def test_language_padding_row_has_official_values(golden_language, tmp_path):
    """Row 2 is all padding: every key and every query is masked, and the official code still produces
    finite, specific logits there (attention rows zeroed, then output biases)."""
    output = tmp_path / "language.safetensors"
    convert_checkpoint(golden_language.checkpoint, output, "language_mlm", golden_language.config)
    model = load(output)
    mask = golden_language.inputs["input_mask"]
    assert not mask[2].any() and not mask[0].all()
    with torch.inference_mode():
        logits = model(torch.from_numpy(golden_language.inputs["inputs"]), torch.from_numpy(mask)).numpy()
    error = np.abs(logits[2] - golden_language.outputs["out"][2]).max()
    assert error <= TOLERANCE, f"padding row: max abs error {error:.3e}"
