"""The image-classification helper: official crop and normalisation, top-k from an image file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_io.pipelines import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STDDEV_RGB,
    classify_image,
    imagenet_classes,
    imagenet_input,
)
from perceiver_io.serialization import load

from .conftest import Golden

Image = pytest.importorskip("PIL.Image")


def test_class_names_are_the_imagenet_1000():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"


def test_crop_and_normalisation_follow_the_official_evaluation():
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    out = imagenet_input(Image.fromarray(pixels), (224, 224))
    crop = int(224 / 256 * 300)  # 262 of the shorter side, centred
    top, left = (300 - crop + 1) // 2, (400 - crop + 1) // 2
    expected = np.asarray(
        Image.fromarray(pixels[top: top + crop, left: left + crop]).resize((224, 224), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    np.testing.assert_allclose(out * IMAGENET_STDDEV_RGB + IMAGENET_MEAN_RGB, expected, atol=1e-3)


def test_classify_an_image_file(tmp_path, converted_golden):
    model = load(converted_golden("imagenet_fourier").output)
    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3)).astype(np.uint8)).save(path)

    top = classify_image(model, path, top_k=3)
    with torch.inference_mode():
        logits = model(torch.from_numpy(imagenet_input(path, (16, 16)))[None])[0]
    probabilities = torch.softmax(logits, -1)
    assert [label for label, _ in top] == [str(i) for i in probabilities.argsort(descending=True)[:3].tolist()]
    assert top[0][1] == pytest.approx(float(probabilities.max()), rel=1e-6)
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        classify_image(model, path, top_k=0)


def test_sixteen_bit_and_thin_images_keep_their_values(tmp_path):
    grey = np.full((6, 500), 200 * 257, np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(grey).save(path)
    expected = (200 - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB
    np.testing.assert_allclose(imagenet_input(path, (16, 16)), np.broadcast_to(expected, (16, 16, 3)), atol=1e-5)
    sixteen_bit_array = np.full((6, 500, 3), 200 * 257, np.uint16)
    np.testing.assert_allclose(imagenet_input(sixteen_bit_array, (16, 16)), np.broadcast_to(expected, (16, 16, 3)),
                               atol=1e-5)
    thin = np.full((1, 500, 3), 200, np.uint8)
    np.testing.assert_allclose(imagenet_input(thin, (224, 224)), np.broadcast_to(expected, (224, 224, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="image is empty: 0x5 pixels"):
        imagenet_input(np.zeros((0, 5, 3)))


@pytest.mark.parametrize("task", ["imagenet_fourier", "imagenet_conv", "imagenet_learned"])
def test_half_precision_models_run(task, converted_golden):
    golden = Golden(task)
    converted = converted_golden(task).output
    full = load(converted)
    half = load(converted, dtype=torch.bfloat16)
    images = torch.from_numpy(golden.inputs["images"])
    with torch.inference_mode():
        reference = full(images)
        logits = half(images.to(torch.bfloat16))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    relative = float((logits.float() - reference).abs().max() / reference.abs().max())
    assert relative < 5e-2, f"bfloat16 relative error {relative:.2e}"
