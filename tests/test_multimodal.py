"""The multimodal video autoencoder: the golden checkpoint decoded chunk by chunk and as a whole clip
against the official outputs (1e-3: the audio Fourier features' arguments reach 5e4 radians, where
float32 rounding differs between any two implementations, JAX eager and jit included), and the
position-free stages checked tightly (1e-4) by injecting the official encoder inputs and queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.comparison import max_abs_error
from perceiver_io.serialization import load

from .conftest import Golden

OUTPUT_TOLERANCE = 1e-3
INJECTED_TOLERANCE = 1e-4
CHUNKS = 4


@pytest.fixture(scope="module")
def golden():
    return Golden("multimodal_autoencoding")


@pytest.fixture(scope="module")
def model(converted_golden):
    report = converted_golden("multimodal_autoencoding")
    assert report.num_parameters == 82_587
    return load(report.output)


def _inputs(golden):
    return torch.from_numpy(golden.inputs["images"]), torch.from_numpy(golden.inputs["audio"])


def _points(golden, chunk):
    return {
        "image": torch.from_numpy(golden.intermediates[f"chunk{chunk}/subsampling/image"]),
        "audio": torch.from_numpy(golden.intermediates[f"chunk{chunk}/subsampling/audio"]),
        "label": None,
    }


def _error(ours, theirs):
    return max_abs_error(ours.detach().numpy(), np.asarray(theirs))


def test_chunks_are_the_colabs(model, golden):
    for chunk, points in enumerate(model.chunks(CHUNKS)):
        official = _points(golden, chunk)
        assert torch.equal(points["image"], official["image"]) and torch.equal(points["audio"], official["audio"])


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_each_chunk_matches_official(model, golden, chunk):
    with torch.inference_mode():
        out = model(*_inputs(golden), subsampled_points=_points(golden, chunk))
    for name in ("audio", "image", "label"):
        error = _error(out[name], golden.outputs[f"chunk{chunk}/out/{name}"])
        print(f"chunk {chunk} {name}: max abs error {error:.2e}")
        assert error <= OUTPUT_TOLERANCE, f"chunk {chunk} {name}: {error:.2e}"


def test_reconstruction_matches_official(model, golden):
    with torch.inference_mode():
        reconstruction = model.reconstruct(*_inputs(golden), num_chunks=CHUNKS)
        with pytest.raises(ValueError, match="num_chunks must be a positive integer, got 0"):
            model.reconstruct(*_inputs(golden), num_chunks=0)
    for name in ("audio", "image", "label"):
        official = golden.outputs[f"reconstruction/{name}"]
        assert reconstruction[name].shape == official.shape
        error = _error(reconstruction[name], official)
        print(f"reconstruction {name}: max abs error {error:.2e}")
        assert error <= OUTPUT_TOLERANCE


def test_stages_with_positions_match_official(model, golden):
    images, audio = _inputs(golden)
    with torch.inference_mode():
        z, preprocessed = model.perceiver.encode(model._inputs(images, audio))
        query = model.perceiver.decoder.decoder_query(preprocessed.inputs, subsampled_points=_points(golden, 1))
    assert _error(preprocessed.inputs, golden.intermediates["chunk0/encoder_inputs"]) <= OUTPUT_TOLERANCE
    assert _error(query, golden.intermediates["chunk1/decoder_query"]) <= OUTPUT_TOLERANCE
    assert _error(z, golden.intermediates["chunk0/z"]) <= OUTPUT_TOLERANCE
    assert preprocessed.modality_sizes == {"audio": 120, "image": 64, "label": 1}
    for name in ("audio", "image", "label"):
        assert _error(preprocessed.inputs_without_pos[name], golden.intermediates[f"chunk0/inputs_without_pos/{name}"]) == 0


def test_injected_stages_match_official_tightly(model, golden):
    perceiver = model.perceiver
    encoder_inputs = torch.from_numpy(golden.intermediates["chunk0/encoder_inputs"])
    with torch.inference_mode():
        z = perceiver.encoder(encoder_inputs, perceiver.encoder.latents(encoder_inputs.shape[0]))
        error = _error(z, golden.intermediates["chunk0/z"])
        print(f"z from the official encoder inputs: max abs error {error:.2e}")
        assert error <= INJECTED_TOLERANCE
        official_z = torch.from_numpy(golden.intermediates["chunk0/z"])
        for chunk in range(CHUNKS):
            query = torch.from_numpy(golden.intermediates[f"chunk{chunk}/decoder_query"])
            decoded = perceiver.decoder(query, official_z)
            error = _error(decoded, golden.intermediates[f"chunk{chunk}/decoder_outputs"])
            assert error <= INJECTED_TOLERANCE, f"chunk {chunk} decoder outputs: {error:.2e}"
            sizes = perceiver.decoder.output_sizes(_points(golden, chunk))
            outputs = perceiver.output_postprocessor(torch.from_numpy(golden.intermediates[f"chunk{chunk}/decoder_outputs"]), sizes)
            for name, value in outputs.items():
                assert _error(value, golden.intermediates[f"chunk{chunk}/perceiver_outputs/{name}"]) <= INJECTED_TOLERANCE


def test_label_is_replaced_by_its_mask_token_whatever_the_input(model, golden):
    images, audio = _inputs(golden)
    inputs = model._inputs(images, audio)
    inputs["label"] = torch.randn_like(inputs["label"])
    with torch.inference_mode():
        tokens = model.perceiver.input_preprocessor(inputs).inputs[:, -1]
    expected = model.perceiver.input_preprocessor.mask_tokens["label"].embeddings[0]
    assert torch.equal(tokens, expected.expand_as(tokens))


def test_intermediate_masking_probability_draws_from_the_generator(model, golden):
    preprocessor = model.perceiver.input_preprocessor
    images, audio = _inputs(golden)
    saved = dict(preprocessor.mask_probs)
    try:
        preprocessor.mask_probs["image"] = 0.5
        results = []
        for _ in range(2):
            preprocessor.generator = torch.Generator().manual_seed(7)
            with torch.inference_mode():
                results.append(preprocessor(model._inputs(images, audio)).inputs)
        assert torch.equal(results[0], results[1])
        token = preprocessor.mask_tokens["image"].embeddings[0]
        image_tokens = results[0][:, 120:184]
        masked = (image_tokens == token).all(-1)
        assert 0 < masked.float().mean() < 1
    finally:
        preprocessor.mask_probs.update(saved)
        preprocessor.generator = None


def test_reconstruct_video_from_arrays_or_an_npz_file(model, golden, tmp_path):
    from perceiver_io.pipelines import reconstruct_video

    path = tmp_path / "clip.npz"
    np.savez(path, images=golden.inputs["images"][0], audio=golden.inputs["audio"][0])
    from_file = reconstruct_video(model, path, num_chunks=CHUNKS)
    from_arrays = reconstruct_video(model, golden.inputs["images"], golden.inputs["audio"], num_chunks=CHUNKS)
    for name in ("image", "audio", "label"):
        np.testing.assert_allclose(from_file[name][0], from_arrays[name][0], atol=1e-6)
        assert np.abs(from_arrays[name] - golden.outputs[f"reconstruction/{name}"]).max() <= OUTPUT_TOLERANCE
    np.savez(tmp_path / "bad.npz", video=golden.inputs["images"][0])
    with pytest.raises(ValueError, match=r"lacks the arrays \['audio', 'images'\]"):
        reconstruct_video(model, tmp_path / "bad.npz")
