"""The golden language checkpoint (official architecture, random weights) converted and run in PyTorch,
against the outputs and intermediates of the official JAX code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.convert import convert_checkpoint
from converters.parity import run_torch
from perceiver_io.serialization import load

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def converted(golden_language, tmp_path_factory):
    output = tmp_path_factory.mktemp("language") / "language.safetensors"
    report = convert_checkpoint(golden_language.checkpoint, output, "language_mlm", golden_language.config)
    return report, load(output)


def test_conversion_accounts_for_every_leaf(converted, golden_language):
    report, model = converted
    leaves = json.loads((golden_language.folder / "param_manifest.json").read_text())["params"]
    assert report.num_leaves == len(leaves) and report.num_parameters == 70_822
    assert not model.training


def test_outputs_match_official(converted, golden_language):
    _, model = converted
    stages = run_torch(model, "language_mlm", golden_language.inputs)
    assert all(np.isfinite(value).all() for value in stages.values()), "NaN or inf in a stage"
    for stage, official in [
        ("encoder_inputs", golden_language.intermediates["encoder_inputs"]),
        ("z", golden_language.intermediates["z"]),
        ("decoder_outputs", golden_language.intermediates["decoder_outputs"]),
        ("out", golden_language.outputs["out"]),
    ]:
        error = np.abs(stages[stage] - official).max()
        print(f"language_mlm {stage}: max abs error {error:.3e}")
        assert error <= TOLERANCE, f"{stage}: max abs error {error:.3e} > {TOLERANCE}"


def test_padding_rows_have_official_values(converted, golden_language):
    """Row 2 is all padding: every latent and every query is masked, and the official code still
    produces finite, specific logits there (attention rows zeroed, then output biases)."""
    _, model = converted
    mask = golden_language.inputs["input_mask"]
    assert not mask[2].any() and not mask[0].all()
    with torch.inference_mode():
        logits = model(torch.from_numpy(golden_language.inputs["inputs"]), torch.from_numpy(mask)).numpy()
    error = np.abs(logits[2] - golden_language.outputs["out"][2]).max()
    assert error <= TOLERANCE, f"padding row: max abs error {error:.3e}"
