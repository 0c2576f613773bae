"""Optical flow: the official patch layout, tiled inference for frames of any size, flow pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_io.errors import InputError
from perceiver_io.flow import (
    colour_wheel_legend,
    default_min_overlap,
    flow_between_files,
    flow_to_rgb,
    read_frame,
    tile_origins,
    tiled_flow,
)
from perceiver_io.preprocessors import patches_for_flow
from perceiver_io.serialization import load
from perceiver_io.tasks import OpticalFlow

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


def reference_tiling(model, frame1, frame2, tile, min_overlap, frame_edges_fall_off=False):
    """The rule, written out plainly: one tile at a time, each pixel weighted by its distance, counted from 1,
    to the nearest side of the tile inside the frame (with `frame_edges_fall_off`, to the nearest of all
    four sides: the colab's min(x+1, W-x, y+1, H-y))."""
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
                    sides = [(j + 1, x > 0), (tile[1] - j, x + tile[1] < width),
                             (i + 1, y > 0), (tile[0] - i, y + tile[0] < height)]
                    weight = min((d for d, inside in sides if inside or frame_edges_fall_off), default=1)
                    flow_sum[y + i, x + j] += weight * piece[i, j]
                    weight_sum[y + i, x + j] += weight
    return flow_sum / weight_sum


class TileMean(OpticalFlow):
    """A stand-in flow model: each tile's flow is the mean of its first frame, the same at every pixel."""

    def forward(self, images):
        mean = images[:, 0].mean(dim=(1, 2, 3))
        return mean[:, None, None, None].expand(len(images), *self.config.train_size, 2).clone()


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_tiled_flow_follows_the_blend_rule(model, batch_size):
    rng = np.random.default_rng(0)
    frame1, frame2 = (rng.uniform(-1, 1, (30, 41, 3)).astype(np.float32) for _ in range(2))
    ours = tiled_flow(model, frame1, frame2, min_overlap=4, batch_size=batch_size)
    expected = reference_tiling(model, frame1, frame2, (12, 16), 4, frame_edges_fall_off=True)
    assert ours.shape == (30, 41, 2)
    assert np.abs(ours - expected).max() <= 1e-5, "the default blend is the colab's"
    seamless = tiled_flow(model, frame1, frame2, min_overlap=4, batch_size=batch_size, blend="seamless")
    assert np.abs(seamless - reference_tiling(model, frame1, frame2, (12, 16), 4)).max() <= 1e-5


def test_a_constant_flow_tiles_to_the_same_constant(model):
    stand_in = TileMean(model.config).eval()
    frame = np.full((30, 41, 3), 0.3, np.float32)
    for blend in ("colab", "seamless"):
        flow = tiled_flow(stand_in, frame, -frame, min_overlap=4, blend=blend)
        assert np.abs(flow - 0.3).max() <= 1e-6, f"{blend}: max deviation {np.abs(flow - 0.3).max():.2e}"


def test_the_seamless_blend_shows_no_seam_along_the_frame_edges(model):
    """With blend="seamless", tiles of different flows blend smoothly along the frame's edges too: the
    largest step between neighbouring pixels there is no larger than inside. With the colab's weights (the
    default), which fall off towards the frame's edge as well, a tile's border there weighs as much as its
    neighbour's inside (a seam)."""
    stand_in = TileMean(model.config).eval()
    y, x = np.mgrid[:30, :41]
    frame = np.repeat((x / 40 + y / 29 - 1)[..., None], 3, axis=-1).astype(np.float32)

    def edge_and_inner_steps(flow):
        across, down = np.abs(np.diff(flow[..., 0], axis=1)), np.abs(np.diff(flow[..., 0], axis=0))
        edges = max(across[[0, -1]].max(), down[:, [0, -1]].max())
        return edges, max(across[6:-6].max(), down[:, 8:-8].max())

    ours = tiled_flow(stand_in, frame, frame, min_overlap=4, blend="seamless")
    assert np.abs(ours - reference_tiling(stand_in, frame, frame, (12, 16), 4)).max() <= 1e-5
    edges, inner = edge_and_inner_steps(ours)
    print(f"largest step between neighbours: {edges:.3f} along the edges, {inner:.3f} inside")
    assert edges <= inner
    colab_edges, colab_inner = edge_and_inner_steps(tiled_flow(stand_in, frame, frame, min_overlap=4))
    assert colab_edges > 1.3 * colab_inner, "the colab's weights should show the seam this test looks for"


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
    assert np.abs(ours - reference_tiling(model, frame1, frame2, (12, 16), 4, frame_edges_fall_off=True)).max() <= 1e-5


ZEROS = np.zeros((20, 25, 3), np.float32)
FRAMES = "(x/255*2-1, as read_frame gives; or pass uint8 pixels)"


@pytest.mark.parametrize("frames, options, words", [
    ((ZEROS, np.zeros((20, 26, 3), np.float32)), {}, "of one size, got (20, 25, 3) and (20, 26, 3)"),
    ((ZEROS, ZEROS), {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ((ZEROS, ZEROS), {"blend": "smooth"}, "blend must be one of 'colab', 'seamless', got 'smooth'"),
    ((ZEROS, ZEROS), {"min_overlap": -1}, "min_overlap (-1) must be an integer in [0, 12)"),
    ((ZEROS, ZEROS), {"min_overlap": 12}, "min_overlap (12) must be an integer in [0, 12)"),
    ((ZEROS + 254.5, ZEROS), {}, f"frame1 must be in [-1,1] {FRAMES}, found values from 254.5 to 254.5"),
    ((ZEROS, ZEROS.astype(np.int32) + 300), {}, "frame2 is int32 and must hold pixel values in [0,255]"),
    ((ZEROS, ZEROS + np.nan), {}, f"frame2 must be in [-1,1] {FRAMES}, found NaN or infinite values"),
    ((ZEROS > 0, ZEROS > 0), {}, "frame1 is bool: expected a float frame in [-1,1] or uint8 pixels"),
])
def test_tiled_flow_refuses_bad_calls(model, frames, options, words):
    with pytest.raises(InputError) as raised:
        tiled_flow(model, *frames, **options)
    assert words in str(raised.value)


def test_frames_in_0_255_are_refused_and_integer_pixels_read_as_the_colab(model):
    pixels = [np.random.default_rng(seed).integers(0, 256, (20, 25, 3), dtype=np.uint8) for seed in (3, 4)]
    with pytest.raises(InputError, match=r"frame1 must be in \[-1,1\].*found values from 0 to 255"):
        tiled_flow(model, *(p.astype(np.float32) for p in pixels))
    expected = tiled_flow(model, *(p / 255 * 2 - 1 for p in pixels))
    for frames in (pixels, [p.astype(np.uint16) * 257 for p in pixels]):
        error = np.abs(tiled_flow(model, *frames) - expected).max()
        assert error <= 1e-5, f"{frames[0].dtype} frames: max abs error {error:.2e}"


def test_the_default_overlap_suits_the_models_tile(model):
    assert default_min_overlap((368, 496)) == 20  # the colab's
    assert default_min_overlap((12, 16)) == 4 and default_min_overlap((2, 5)) == 0
    assert tile_origins((30, 41), (12, 16)) == tile_origins((30, 41), (12, 16), 4)
    rng = np.random.default_rng(5)
    frame1, frame2 = (rng.uniform(-1, 1, (30, 41, 3)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(tiled_flow(model, frame1, frame2), tiled_flow(model, frame1, frame2, min_overlap=4))


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
    red, green, _ = picture[0, 0].tolist()
    assert red == 255 and green == 0
    assert picture[0, 1].tolist()[0] == 0 and picture[0, 1].tolist()[2] == 255


def _frame_files(folder, shape):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    paths = [folder / "a.png", folder / "b.png"]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(path)
    return paths


def test_flow_between_image_files(model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    paths = _frame_files(tmp_path, (20, 25, 3))
    flow = flow_between_files(model, *paths, tmp_path / "flow.png")  # the defaults suit the golden 12x16 tile
    np.testing.assert_array_equal(flow, tiled_flow(model, read_frame(paths[0]), read_frame(paths[1])))
    with Image.open(tmp_path / "flow.png") as picture:
        assert picture.format == "PNG" and picture.size == (25, 20)
        np.testing.assert_array_equal(np.asarray(picture), flow_to_rgb(flow))
    assert flow.shape == (20, 25, 2) and np.isfinite(flow).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "flow.png"]
    with pytest.raises(FileExistsError):
        flow_between_files(model, *paths, tmp_path / "flow.png")
    flow_between_files(model, *paths, tmp_path / "flow.png", overwrite=True)


@pytest.mark.parametrize("name, format_name", [("flow.jpg", "JPEG"), ("flow.JPEG", "JPEG"), ("flow.bmp", "BMP"),
                                               ("flow.tif", "TIFF"), ("flow.webp", "WEBP")])
def test_the_picture_follows_its_suffix(model, tmp_path, name, format_name):
    Image = pytest.importorskip("PIL.Image")
    paths = _frame_files(tmp_path, (20, 25, 3))
    flow_between_files(model, *paths, tmp_path / name)
    with Image.open(tmp_path / name) as picture:
        assert picture.format == format_name and picture.size == (25, 20)


@pytest.mark.parametrize("name", ["flow.xyz", "flow", "flow.safetensors"])
def test_an_unknown_picture_suffix_is_refused_before_the_work(model, tmp_path, name):
    paths = _frame_files(tmp_path, (20, 25, 3))
    calls = []
    hook = model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        with pytest.raises(InputError, match=r"picture must end in a suffix Pillow writes \(\.png, \.jpg"):
            flow_between_files(model, *paths, tmp_path / name)
    finally:
        hook.remove()
    assert not calls and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_the_legend_is_a_colour_wheel_in_the_bottom_right_corner(model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    paths = _frame_files(tmp_path, (40, 50, 3))
    flow_between_files(model, *paths, tmp_path / "plain.png")
    flow_between_files(model, *paths, tmp_path / "legend.png", legend=True)
    plain, legend = (np.asarray(Image.open(tmp_path / name)) for name in ("plain.png", "legend.png"))
    wheel, disc = colour_wheel_legend(8)  # a fifth of 40, 1 pixel from the edges
    expected = plain.copy()
    expected[31:39, 41:49][disc] = wheel[disc]
    np.testing.assert_array_equal(legend, expected)
    wheel, disc = colour_wheel_legend(32)
    assert disc[16, 31] and not disc[0, 0]
    assert wheel[16, 31].tolist()[0] == 255 and wheel[16, 31].tolist()[2] < 64  # rightwards at the rim: red
    assert wheel[16, 16].min() >= 240  # no motion at the centre: white
