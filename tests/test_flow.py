"""Optical flow: the official patch layout, tiled inference for frames of any size, flow pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_io.flow import flow_between_files, flow_to_rgb, tile_origins, tiled_flow
from perceiver_io.preprocessors import patches_for_flow
from perceiver_io.serialization import load

from .conftest import Golden


@pytest.fixture(scope="module")
def golden_flow():
    return Golden("optical_flow")


@pytest.fixture(scope="module")
def model(converted_golden):
    return load(converted_golden("optical_flow").output)


def test_patches_for_flow_is_the_official_layout(golden_flow):
    patches = patches_for_flow(torch.from_numpy(golden_flow.inputs["images"])).numpy()
    np.testing.assert_array_equal(patches, golden_flow.intermediates["patches_for_flow"])


def test_raw_flow_is_the_decoder_output_and_forward_the_colab_output(model, golden_flow):
    images = torch.from_numpy(golden_flow.inputs["images"])
    with torch.inference_mode():
        raw, flow = model.raw_flow(images).numpy(), model(images).numpy()
    assert np.abs(raw - golden_flow.intermediates["decoder_outputs"]).max() <= 1e-5
    assert np.abs(flow - golden_flow.outputs["out"]).max() <= 1e-4
    np.testing.assert_allclose(flow, raw * 20, rtol=1e-6)


def reference_tiling(model, frame1, frame2, tile, min_overlap):
    """The colab's rule, written out plainly: one tile at a time, weights min(x+1, W-x, y+1, H-y)."""
    height, width = frame1.shape[:2]
    ys = list(range(0, height, tile[0] - min_overlap))
    xs = list(range(0, width, tile[1] - min_overlap))
    ys[-1], xs[-1] = height - tile[0], width - tile[1]
    assert max(ys) <= height - tile[0] and max(xs) <= width - tile[1], "pick sizes where the colab's rule works"
    flow_sum = np.zeros((height, width, 2))
    weight_sum = np.zeros((height, width, 1))
    for y in ys:
        for x in xs:
            pair = np.stack([frame1[y: y + tile[0], x: x + tile[1]], frame2[y: y + tile[0], x: x + tile[1]]])
            with torch.inference_mode():
                piece = model(torch.from_numpy(pair)[None])[0].numpy()
            for i in range(tile[0]):
                for j in range(tile[1]):
                    weight = min(j + 1, tile[1] - j, i + 1, tile[0] - i)
                    flow_sum[y + i, x + j] += weight * piece[i, j]
                    weight_sum[y + i, x + j] += weight
    return flow_sum / weight_sum


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_tiled_flow_follows_the_colab_rule(model, batch_size):
    rng = np.random.default_rng(0)
    frame1, frame2 = (rng.uniform(-1, 1, (30, 41, 3)).astype(np.float32) for _ in range(2))
    ours = tiled_flow(model, frame1, frame2, min_overlap=4, batch_size=batch_size)
    expected = reference_tiling(model, frame1, frame2, (12, 16), 4)
    assert ours.shape == (30, 41, 2)
    assert np.abs(ours - expected).max() <= 1e-5


def test_a_tile_the_colab_lists_twice_is_computed_once_and_counted_twice(model):
    rng = np.random.default_rng(2)
    frame1, frame2 = (rng.uniform(-1, 1, (20, 16, 3)).astype(np.float32) for _ in range(2))
    assert sorted(tile_origins((20, 16), (12, 16), 4)) == [(0, 0)] * 2 + [(8, 0)] * 4
    tiles = []
    hook = model.register_forward_hook(lambda module, args, output: tiles.append(len(output)))
    try:
        ours = tiled_flow(model, frame1, frame2, min_overlap=4)
    finally:
        hook.remove()
    assert sum(tiles) == 2
    assert np.abs(ours - reference_tiling(model, frame1, frame2, (12, 16), 4)).max() <= 1e-5


@pytest.mark.parametrize("frames, options, words", [
    (((20, 25, 3), (20, 26, 3)), {}, "of one size, got (20, 25, 3) and (20, 26, 3)"),
    (((20, 25, 3), (20, 25, 3)), {"batch_size": 0}, "batch_size must be at least 1"),
    (((20, 25, 3), (20, 25, 3)), {"min_overlap": -1}, "min_overlap (-1) must be in [0, 12)"),
])
def test_tiled_flow_refuses_bad_calls(model, frames, options, words):
    with pytest.raises(ValueError) as raised:
        tiled_flow(model, *(np.zeros(shape, np.float32) for shape in frames), **options)
    assert words in str(raised.value)


def test_one_tile_is_one_forward_pass(model, golden_flow):
    images = golden_flow.inputs["images"][0]
    with torch.inference_mode():
        direct = model(torch.from_numpy(images)[None])[0].numpy()
    np.testing.assert_allclose(tiled_flow(model, images[0], images[1], min_overlap=4), direct, atol=1e-6)


def test_tile_grid_covers_the_frame_flush_with_its_edges():
    origins = tile_origins((436, 1024), (368, 496), 20)
    assert origins == [(0, 0), (0, 476), (0, 528), (68, 0), (68, 476), (68, 528)]
    with pytest.raises(ValueError, match="smaller than the model's 368x496 tile"):
        tile_origins((300, 1024), (368, 496), 20)
    with pytest.raises(ValueError, match="min_overlap"):
        tile_origins((400, 600), (368, 496), 400)
    # where the colab's rule lets a middle tile run past the edge, it is moved flush with the edge
    assert tile_origins((20, 25), (12, 16), 4) == [(y, x) for y in (0, 8, 8) for x in (0, 9, 9)]


def test_flow_colours():
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 0] = (1, 0)  # rightwards: red
    flow[0, 1] = (-1, 0)  # leftwards: cyan-blue
    flow[0, 2] = (0, 1)  # downwards
    picture = flow_to_rgb(flow)
    assert picture.dtype == np.uint8 and picture.shape == (2, 3, 3)
    assert picture[1].tolist() == [[255, 255, 255]] * 3  # no motion is white
    red, green, blue = picture[0, 0].tolist()
    assert red == 255 and green == 0
    assert picture[0, 1].tolist()[0] == 0 and picture[0, 1].tolist()[2] == 255


def test_flow_between_image_files(model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 256, (20, 25, 3)).astype(np.uint8)).save(paths[-1])
    flow = flow_between_files(model, *paths, tmp_path / "flow.png", min_overlap=4)
    with Image.open(tmp_path / "flow.png") as picture:
        assert picture.size == (25, 20)
    assert flow.shape == (20, 25, 2) and np.isfinite(flow).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "flow.png"]
    with pytest.raises(FileExistsError):
        flow_between_files(model, *paths, tmp_path / "flow.png", min_overlap=4)
    flow_between_files(model, *paths, tmp_path / "flow.png", overwrite=True, min_overlap=4)
