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


def _calls():
    """(task, a wrong call of the golden model, the error, words the message must contain)."""
    lang = _golden_model("language_mlm").config
    n, vocab = lang.max_seq_len, lang.vocab_size
    ids = torch.zeros(2, n, dtype=torch.long)
    flow = _golden_model("optical_flow").config.train_size
    video = _golden_model("multimodal_autoencoding").config
    frames, audio = torch.rand(1, *video.image_shape, 3), torch.rand(1, video.num_audio_samples, 1)
    return [
        ("language_mlm", lambda m: m(ids[0]), ValueError, f"inputs: expected shape [B,{n}]"),
        ("language_mlm", lambda m: m(ids[:, :-1]), ValueError, f"got [2, {n - 1}]"),
        ("language_mlm", lambda m: m(ids.float()), TypeError, "inputs is float32: expected an integer tensor"),
        ("language_mlm", lambda m: m(ids + vocab), ValueError, f"inputs must be in [0, {vocab})"),
        ("language_mlm", lambda m: m(ids - 1), ValueError, "got values from -1 to -1"),
        ("language_mlm", lambda m: m(ids, torch.ones(2, n - 1)), ValueError, "input_mask: expected shape"),
        ("language_mlm", lambda m: m(ids, torch.ones(1, n)), ValueError, f"input_mask: expected shape [2,{n}]"),
        ("language_mlm", lambda m: m(ids.numpy()), TypeError, "inputs: expected an integer tensor [B,"),
        ("imagenet_conv", lambda m: m(torch.rand(16, 16, 3)), ValueError, "images: expected shape [B,H,W,3]"),
        ("imagenet_conv", lambda m: m(torch.rand(1, 3, 16, 16)), ValueError, "channels last"),
        ("imagenet_fourier", lambda m: m(torch.rand(1, 16, 16, 4)), ValueError, "got [1, 16, 16, 4]"),
        ("imagenet_fourier", lambda m: m(torch.zeros(1, 16, 16, 3, dtype=torch.uint8)), TypeError,
         "images is uint8 but the model computes in float32"),
        ("imagenet_learned", lambda m: m(torch.rand(1, 16, 16, 3, dtype=torch.float64)), TypeError,
         "images is float64"),
        ("optical_flow", lambda m: m(torch.rand(1, 2, *flow, 4)), ValueError, "tiled_flow"),
        ("optical_flow", lambda m: m(torch.rand(1, 2, *flow, 3).double()), TypeError, "images is float64"),
        ("multimodal_autoencoding", lambda m: m((frames * 255).to(torch.uint8), audio), TypeError,
         "images is uint8 but the model computes in float32"),
        ("multimodal_autoencoding", lambda m: m(frames, audio.expand(2, -1, -1)), ValueError,
         f"audio: expected shape [1,{video.num_audio_samples},1]"),
        ("multimodal_autoencoding", lambda m: m(frames, audio, {"image": [[0, 1]], "audio": None, "label": None}),
         ValueError, "subsampled_points: expected flat integer indices [N]"),
        ("multimodal_autoencoding", lambda m: m(frames, audio, {"image": [0, 10**6], "audio": None, "label": None}),
         ValueError, f"subsampled_points must be in [0, {video.image_shape[0] * video.image_shape[1] * video.image_shape[2]})"),
    ]


@pytest.mark.parametrize("case", range(len(_calls())))
def test_a_wrong_call_names_the_argument_and_what_it_must_be(case):
    task, call, error, words = _calls()[case]
    with pytest.raises(error) as raised:
        call(_golden_model(task))
    assert words in str(raised.value), str(raised.value)


def test_subsampled_points_may_be_a_list():
    model = _golden_model("multimodal_autoencoding")
    config = model.config
    frames, audio = torch.rand(1, *config.image_shape, 3), torch.rand(1, config.num_audio_samples, 1)
    as_list = model(frames, audio, {"image": [3, 1, 4], "audio": [0], "label": None})
    as_tensor = model(frames, audio, {"image": torch.tensor([3, 1, 4]), "audio": torch.tensor([0]), "label": None})
    assert all(torch.equal(as_list[name], as_tensor[name]) for name in as_list)
