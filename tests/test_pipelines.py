"""The pipelines as a first-time user meets them: the wrong kind of model, inputs on the wrong scale,
batches, and Pillow missing. Each refusal is checked for the argument, the range it takes and the range
found; each batch against the same inputs one at a time."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from perceiver_io.errors import ConfigError, InputError, InputTypeError
from perceiver_io.flow import flow_between_files, tiled_flow
from perceiver_io.pipelines import classify_image, fill_mask, imagenet_input, reconstruct_video
from perceiver_io.serialization import load

from .conftest import Golden

Image = pytest.importorskip("PIL.Image")

VIDEO_CHUNKS = 4


@pytest.fixture(scope="module")
def models(converted_golden):
    tasks = ("language_mlm", "imagenet_fourier", "optical_flow", "multimodal_autoencoding")
    return {task: load(converted_golden(task).output) for task in tasks}


class ForwardCount:
    """Counts a model's forward passes and the batch of each."""

    def __init__(self, model):
        self.batches = []
        self._hook = model.register_forward_hook(lambda module, args, output: self.batches.append(len(args[0])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._hook.remove()


# ----------------------------------------------------------------------------------------------------
# The wrong kind of model


PIPELINES = {
    "fill_mask": lambda model: fill_mask(model, "a[MASK]"),
    "classify_image": lambda model: classify_image(model, np.zeros((8, 8, 3), np.uint8)),
    "tiled_flow": lambda model: tiled_flow(model, np.zeros((12, 16, 3), np.float32), np.zeros((12, 16, 3), np.float32)),
    "reconstruct_video": lambda model: reconstruct_video(model, np.zeros((4, 16, 16, 3), np.float32), np.zeros(1920)),
}
NEEDS = {
    "fill_mask": "a LanguagePerceiver model (task language_mlm)",
    "classify_image": "an ImageClassifier model (task imagenet_learned or imagenet_fourier or imagenet_conv)",
    "tiled_flow": "an OpticalFlow model (task optical_flow)",
    "reconstruct_video": "a VideoAutoencoder model (task multimodal_autoencoding)",
}
OWN_TASK = {"fill_mask": "language_mlm", "classify_image": "imagenet_fourier", "tiled_flow": "optical_flow",
            "reconstruct_video": "multimodal_autoencoding"}
GOT = {
    "language_mlm": "a LanguagePerceiver (task language_mlm)",
    "imagenet_fourier": "an ImageClassifier (task imagenet_fourier)",
    "optical_flow": "an OpticalFlow (task optical_flow)",
    "multimodal_autoencoding": "a VideoAutoencoder (task multimodal_autoencoding)",
}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_each_pipeline_names_the_model_it_needs_and_the_one_it_got(models, pipeline):
    for task in (task for task in models if task != OWN_TASK[pipeline]):
        with pytest.raises(ConfigError) as raised:
            PIPELINES[pipeline](models[task])
        assert str(raised.value) == f"{pipeline} needs {NEEDS[pipeline]}, got {GOT[task]}"
    with pytest.raises(ConfigError, match=f"{pipeline} needs .*, got the path 'model.safetensors': load it first"):
        PIPELINES[pipeline]("model.safetensors")


def test_flow_between_files_checks_its_model_before_reading(models, tmp_path):
    with pytest.raises(ConfigError, match="flow_between_files needs an OpticalFlow model"):
        flow_between_files(models["language_mlm"], tmp_path / "a.png", tmp_path / "b.png", tmp_path / "flow.png")


# ----------------------------------------------------------------------------------------------------
# fill_mask: one text or a batch


def test_fill_mask_batches_give_what_single_calls_give(models):
    model = models["language_mlm"]
    texts = ["Perceiver [MASK][MASK] bytes", "[MASK]ello", "a longer sentence, where [MASK] is masked", "x[MASK]"]
    singles = [fill_mask(model, text) for text in texts]
    assert all(isinstance(filled, str) for filled in singles)
    assert [len(filled) for filled in singles] != [0] * len(texts)
    for batch_size, expected_batches in ((8, [4]), (3, [3, 1]), (1, [1, 1, 1, 1])):
        with ForwardCount(model) as count:
            assert fill_mask(model, texts, batch_size=batch_size) == singles
        assert count.batches == expected_batches
    assert fill_mask(model, tuple(texts[:2])) == singles[:2]
    assert fill_mask(model, []) == []


@pytest.mark.parametrize("text, options, error, words", [
    (["a[MASK]", "nothing"], {}, InputError, "text[1] has no '[MASK]' to fill"),
    (["a[MASK]", 5], {}, InputTypeError, "text[1] must be a str, got int"),
    (b"a[MASK]", {}, InputTypeError, "text must be a str or a list of str, got bytes"),
    ("a[MASK]" * 100, {}, InputError,
     "text is 200 tokens (one per UTF-8 byte and per [MASK]), more than the model's 64 positions"),
    ("a[MASK]", {"batch_size": 0}, InputError, "batch_size must be a positive integer, got 0"),
])
def test_fill_mask_refuses_bad_calls(models, text, options, error, words):
    with pytest.raises(error) as raised:
        fill_mask(models["language_mlm"], text, **options)
    assert str(raised.value) == words


# ----------------------------------------------------------------------------------------------------
# classify_image: ranges and batches


def assert_same_classes(found, expected, rtol=1e-4):
    """The same classes in the same order, with probabilities equal to `rtol` (batches round differently)."""
    assert [label for label, _ in found] == [label for label, _ in expected]
    np.testing.assert_allclose([p for _, p in found], [p for _, p in expected], rtol=rtol)


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (30 + 4 * index, 40, 3), dtype=np.uint8) for index in range(5)]


def test_a_float_image_in_0_1_is_refused_and_pixel_max_reads_it(models, pictures):
    model = models["imagenet_fourier"]
    unit = pictures[0] / 255.0
    with pytest.raises(InputError) as raised:
        classify_image(model, unit)
    message = str(raised.value)
    assert message.startswith("image is a float array with values in [0,1], but float pixels are read as 0-255")
    assert "multiply a [0,1] image by 255 or pass pixel_max=1.0" in message
    expected = classify_image(model, pictures[0])
    for image, options in ((unit, {"pixel_max": 1.0}), (unit * 255, {}), (unit * 255, {"pixel_max": 255})):
        assert_same_classes(classify_image(model, image, **options), expected)
    dark = np.full((30, 40, 3), 0.8)  # a 0-255 image this dark is taken as such only when asked
    one = np.ones((30, 40, 3), np.uint8)
    np.testing.assert_allclose(imagenet_input(dark, (16, 16), pixel_max=255), imagenet_input(one, (16, 16)))


def test_a_resized_0_1_image_is_still_taken_for_one_and_a_batch_is_read_once(models, pictures):
    """A [0,1] image that overshoots a little (a bicubic resize) is refused as [0,1] too, not read as a black
    0-255 one; an array [B,H,W,3] of 0-255 floats is read as such even with a dark image in it."""
    model = models["imagenet_fourier"]
    overshooting = np.clip(pictures[0] / 255.0, 0, 1) * 1.02 - 0.01
    with pytest.raises(InputError, match=r"^image is a float array with values in \[-0.01,1.01\]"):
        classify_image(model, overshooting)
    dark = np.full_like(pictures[0], 0.8, dtype=np.float64)
    batch = np.stack([pictures[0].astype(np.float64), dark])
    expected = [classify_image(model, pictures[0]), classify_image(model, dark, pixel_max=255)]
    for ours, theirs in zip(classify_image(model, batch), expected):
        assert_same_classes(ours, theirs)
    with pytest.raises(InputError, match=r"^image is a float array with values in \[0,1\]"):
        classify_image(model, batch / 255.0)


PIXELS = "(pixel values, before any normalisation)"
UINT8 = np.zeros((30, 40, 3), np.uint8)


@pytest.mark.parametrize("image, options, words", [
    (np.full((30, 40, 3), 300.0), {}, f"image must be in [0,255] {PIXELS}, found values from 300 to 300"),
    (np.full((30, 40, 3), -2.1), {}, f"image must be in [0,255] {PIXELS}, found values from -2.1 to -2.1"),
    (np.full((30, 40, 3), 2.0), {"pixel_max": 1.0}, f"image must be in [0,1] {PIXELS}, found values from 2 to 2"),
    (np.full((30, 40, 3), np.inf), {}, f"image must be in [0,255] {PIXELS}, found NaN or infinite values"),
    (np.full((30, 40, 3), 1000, np.int32), {},
     "image is int32 and must hold pixel values in [0,255] (uint16 for 16-bit pixels), found values from 1000 to 1000"),
    (UINT8 > 0, {}, "image is bool: expected pixel values as an integer (uint8, uint16) or float array"),
    (UINT8[..., 0], {}, "image: expected an RGB image [H,W,3], got an array of shape (30, 40)"),
    (UINT8, {"pixel_max": 0}, "pixel_max must be a positive number (the largest pixel value), got 0"),
    (UINT8, {"top_k": 0}, "top_k must be a positive integer, got 0"),
    (UINT8, {"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
])
def test_classify_image_refuses_values_outside_its_range(models, image, options, words):
    with pytest.raises(InputError) as raised:
        classify_image(models["imagenet_fourier"], image, **options)
    assert str(raised.value) == words


def test_integer_arrays_are_read_by_their_dtype(pictures):
    expected = imagenet_input(pictures[0], (16, 16))
    for pixels in (pictures[0].astype(np.int64), pictures[0].astype(np.uint16) * 257, pictures[0].astype(np.float32)):
        error = np.abs(imagenet_input(pixels, (16, 16)) - expected).max()
        assert error <= 1e-5, f"{pixels.dtype}: max abs error {error:.2e}"


def test_classify_image_batches_give_what_single_calls_give(models, pictures, tmp_path):
    model = models["imagenet_fourier"]
    path = tmp_path / "picture.png"
    Image.fromarray(pictures[1]).save(path)
    images = [pictures[0], path, Image.fromarray(pictures[2]), pictures[3], pictures[4]]
    singles = [classify_image(model, image, top_k=3) for image in images]
    assert all(len(single) == 3 and isinstance(single[0], tuple) for single in singles)
    for batch_size, expected_batches in ((8, [5]), (2, [2, 2, 1])):
        with ForwardCount(model) as count:
            batched = classify_image(model, images, top_k=3, batch_size=batch_size)
        assert count.batches == expected_batches
        for result, single in zip(batched, singles, strict=True):
            assert_same_classes(result, single)
    same_size = np.stack([picture[:30] for picture in pictures])  # [B,H,W,3]
    from_array = classify_image(model, same_size, top_k=2)
    for result, picture in zip(from_array, same_size, strict=True):
        assert_same_classes(result, classify_image(model, picture, top_k=2))
    assert classify_image(model, []) == []
    with pytest.raises(InputError, match=r"image\[1\] must be in \[0,255\]"):
        classify_image(model, [pictures[0], np.full((8, 8, 3), 900.0)])


# ----------------------------------------------------------------------------------------------------
# reconstruct_video: ranges and the audio it needs


@pytest.fixture(scope="module")
def clip():
    golden = Golden("multimodal_autoencoding")
    return golden.inputs["images"][0], golden.inputs["audio"][0]


def test_reconstruct_video_needs_audio_with_arrays(models, clip):
    with pytest.raises(InputError) as raised:
        reconstruct_video(models["multimodal_autoencoding"], clip[0])
    assert str(raised.value) == ("audio is missing: with images as an array, pass audio [1920], [1920,1] or "
                                 "[B,1920,1] in [-1,1] (zeros for silence), or an .npz file holding both")


def test_video_in_0_255_is_refused_and_integer_inputs_read_as_the_colab(models, clip, tmp_path):
    model = models["multimodal_autoencoding"]
    images, audio = clip
    with pytest.raises(InputError) as raised:
        reconstruct_video(model, images * 255, audio)
    assert str(raised.value).startswith("images must be in [0,1] (video frames: divide 0-255 frames by 255, or pass "
                                        "them as uint8), found values from 0.0356 to 254.9")
    with pytest.raises(InputError, match=r"audio must be in \[-1,1\] \(audio samples: divide 16-bit PCM by 32768, or "
                                         r"pass it as int16\), found values from -3.27e\+04 to 3.275e\+04"):
        reconstruct_video(model, images, audio * 32767)
    with pytest.raises(InputTypeError, match="audio is int32: expected float samples in"):
        reconstruct_video(model, images, (audio * 32767).astype(np.int32))
    np.savez(tmp_path / "loud.npz", images=images, audio=audio * 2)
    with pytest.raises(InputError, match=r"audio in .*loud\.npz must be in \[-1,1\]"):
        reconstruct_video(model, tmp_path / "loud.npz")

    pixels = (images * 255).round().astype(np.uint8)
    pcm = (audio * 32767).round().astype(np.int16)
    expected = reconstruct_video(model, pixels / 255, pcm / 32768, num_chunks=VIDEO_CHUNKS)
    found = reconstruct_video(model, pixels, pcm, num_chunks=VIDEO_CHUNKS)
    for name in ("image", "audio", "label"):
        error = np.abs(found[name] - expected[name]).max()
        assert error <= 1e-5, f"{name}: max abs error {error:.2e}"


# ----------------------------------------------------------------------------------------------------
# Pillow missing


def test_missing_pillow_says_how_to_install_it(models, monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name == "PIL" or name.startswith("PIL.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    words = r"needs Pillow: pip install 'perceiver-io-port\[images\]' \(or pip install pillow\)"
    with pytest.raises(ModuleNotFoundError, match="classify_image .*" + words):
        classify_image(models["imagenet_fourier"], np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ModuleNotFoundError, match="flow_between_files " + words):
        flow_between_files(models["optical_flow"], tmp_path / "a.png", tmp_path / "b.png", tmp_path / "flow.png")
    frame = np.zeros((12, 16, 3), np.uint8)
    assert tiled_flow(models["optical_flow"], frame, frame).shape == (12, 16, 2)  # no pictures, no Pillow needed
