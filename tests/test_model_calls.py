"""How the task models take their calls: a wrong call fails at once with a message naming the argument
(not deep inside a matrix product), and an inference call leaves the model fit for training."""

from __future__ import annotations

import json

import pytest
import torch

from perceiver_io.tasks import build_model

from .conftest import GOLDEN

CUSTOM_FOURIER_QUERIES = {
    "input_shape": [16, 16, 3],
    "input_preprocessor": {"type": "image", "prep_type": "patches", "spatial_downsample": 4,
                           "conv_after_patching": True, "num_channels": 16, "position_encoding_type": "fourier",
                           "fourier_position_encoding_kwargs": {"num_bands": 4}},
    "encoder": {"num_self_attends_per_block": 1, "num_blocks": 1, "z_index_dim": 8, "num_z_channels": 32},
    "decoder": {"type": "basic", "output_num_channels": 16, "output_index_dims": [4, 4],
                "position_encoding_type": "fourier", "fourier_position_encoding_kwargs": {"num_bands": 4}},
    "output_postprocessor": {"type": "image", "postproc_type": "patches", "spatial_upsample": 4,
                             "input_reshape_size": [4, 4]},
}


def _golden_model(task: str):
    return build_model(task, json.loads((GOLDEN / task / "reduced_config.json").read_text())).eval()


def test_training_works_after_a_call_under_inference_mode():
    """The cached Fourier features (here the decoder's queries, which go straight into a LayerNorm) must
    not be inference tensors, which autograd refuses to save."""
    torch.manual_seed(0)
    model = build_model("perceiver", CUSTOM_FOURIER_QUERIES)
    images = torch.randn(2, 16, 16, 3)
    with torch.inference_mode():
        expected = model(images)
    output = model(images)
    output.sum().backward()
    assert torch.equal(output.detach(), expected)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
