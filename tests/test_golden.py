"""Each ported task's golden checkpoint (official architecture, random weights, released file format)
converted and run in PyTorch, against the outputs and intermediates of the official JAX code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.convert import convert_checkpoint
from converters.verify import reference_from_stages, verify_model
from perceiver_io.registry import RELEASES
from perceiver_io.serialization import load

from .conftest import Golden

TOLERANCE = 1e-4
"""Both of each stage's scale (max |official|) and absolute."""
TASKS = [task for task in RELEASES if task != "multimodal_autoencoding"]  # that one: test_multimodal.py


@pytest.fixture(scope="module", params=TASKS)
def converted(request, converted_golden):
    report = converted_golden(request.param)
    return Golden(request.param), report, load(report.output)


def test_conversion_accounts_for_every_leaf(converted):
    golden, report, model = converted
    manifest = json.loads((golden.folder / "param_manifest.json").read_text())
    assert report.num_leaves == len(manifest["params"]) + len(manifest.get("state", []))
    assert report.num_parameters == manifest["total_param_count"]
    assert report.num_state_values == manifest["total_state_count"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_param_count"]
    assert not model.training


def test_outputs_and_stages_match_official(converted):
    golden, report, model = converted
    official = {**golden.intermediates, **golden.outputs}
    reference = reference_from_stages(golden.task, golden.config, golden.inputs, official, "the official outputs")
    parity = verify_model(model, reference, model_origin=str(report.output), tolerance=TOLERANCE)
    print(parity.table())
    assert parity.passed, parity.table()
    over = [f"{check.stage} {check.max_abs_error:.3e}" for check in parity.stages if check.max_abs_error > TOLERANCE]
    assert not over, f"{golden.task}: max abs error over {TOLERANCE}: {over}"  # absolute, as well as relative
    compared = {check.stage for check in parity.stages}
    assert {"encoder_inputs", "encoder_query", "z", "decoder_query", "decoder_outputs", "out"} <= compared


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
