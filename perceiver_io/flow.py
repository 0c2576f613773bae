"""Optical flow for frames of any size, as the official colab computes it, and flow pictures.

`tiled_flow` cuts the frame pair into tiles of the model's training size that overlap by at least
`min_overlap` pixels (the last row and column of tiles flush with the frame's edges), runs the tiles in
batches, and blends their flows with weights min(x+1, W-x, y+1, H-y) that fall off towards each tile's
border (the colab's `compute_grid_indices` and `compute_optical_flow`). Frames smaller than a tile are
refused: the model only sees its training size.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import torch

from .atomic import atomic_output, check_output
from .errors import InputError
from .images import rgb_pixels
from .tasks import OpticalFlow


def tile_origins(image_shape: tuple[int, int], tile_size: tuple[int, int], min_overlap: int = 20) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the tiles covering an image, row by row (official `compute_grid_indices`:
    a tile every tile - min_overlap pixels, the last flush with the edge). Where the official rule would
    also let an earlier tile run past the edge (and fail), that tile is moved flush with the edge too."""
    height, width = image_shape
    if not 0 <= min_overlap < min(tile_size):
        raise InputError(f"min_overlap ({min_overlap}) must be in [0, {min(tile_size)}): the tile size is {tuple(tile_size)}")
    if height < tile_size[0] or width < tile_size[1]:
        raise InputError(
            f"frames of {height}x{width} are smaller than the model's {tile_size[0]}x{tile_size[1]} tile; "
            "resize or pad them to at least the tile size"
        )
    ys = [min(y, height - tile_size[0]) for y in range(0, height, tile_size[0] - min_overlap)]
    xs = [min(x, width - tile_size[1]) for x in range(0, width, tile_size[1] - min_overlap)]
    return list(itertools.product(ys, xs))


def tile_weights(tile_size: tuple[int, int]) -> np.ndarray:
    """Blending weights [h, w]: the distance, counted from 1, to the nearest tile border."""
    ys, xs = np.meshgrid(np.arange(tile_size[0]), np.arange(tile_size[1]), indexing="ij")
    return np.minimum(np.minimum(xs + 1, tile_size[1] - xs), np.minimum(ys + 1, tile_size[0] - ys)).astype(np.float32)


@torch.inference_mode()
def tiled_flow(
    model: OpticalFlow,
    frame1: np.ndarray,
    frame2: np.ndarray,
    min_overlap: int = 20,
    batch_size: int = 4,
) -> np.ndarray:
    """Flow in pixels [H,W,2] from frame1 to frame2 ([H,W,3] each, in [-1,1]), for any H, W at least the
    model's training size. At most `batch_size` tiles are in memory on the model's device at once. A tile
    the official grid lists twice is computed once and counted twice."""
    frame1, frame2 = np.asarray(frame1, np.float32), np.asarray(frame2, np.float32)
    if frame1.shape != frame2.shape or frame1.ndim != 3 or frame1.shape[-1] != 3:
        raise InputError(f"expected two RGB frames [H,W,3] of one size, got {frame1.shape} and {frame2.shape}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    frames = np.stack([frame1, frame2])
    tile = tuple(model.config.train_size)
    counts = Counter(tile_origins(frames.shape[1:3], tile, min_overlap))
    origins = list(counts)
    weights = tile_weights(tile)[:, :, None]
    flow = np.zeros((*frames.shape[1:3], 2), np.float32)
    total = np.zeros((*frames.shape[1:3], 1), np.float32)
    parameter = next(model.parameters())
    for start in range(0, len(origins), batch_size):
        batch = origins[start: start + batch_size]
        tiles = np.stack([frames[:, y: y + tile[0], x: x + tile[1]] for y, x in batch])
        flows = model(torch.from_numpy(tiles).to(parameter.device, parameter.dtype)).float().cpu().numpy()
        for (y, x), piece in zip(batch, flows):
            flow[y: y + tile[0], x: x + tile[1]] += piece * weights * counts[y, x]
            total[y: y + tile[0], x: x + tile[1]] += weights * counts[y, x]
    return flow / total


def _colour_wheel() -> np.ndarray:
    """The Middlebury flow colour wheel: 55 RGB colours (red, yellow, green, cyan, blue, magenta)."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    colours = [
        np.asarray(start) + (np.asarray(end) - np.asarray(start)) * step / count
        for count, start, end in segments
        for step in range(count)
    ]
    return np.asarray(colours, dtype=np.float32)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """A flow field [H,W,2] (x, y) as an RGB picture [H,W,3] uint8 on the standard colour wheel: hue is
    the direction, saturation the magnitude relative to `max_magnitude` (default: the largest)."""
    flow = np.asarray(flow, dtype=np.float32)
    u, v = flow[..., 0], flow[..., 1]
    magnitude = np.sqrt(u * u + v * v)
    scale = max_magnitude or float(magnitude.max()) or 1.0
    u, v, magnitude = u / scale, v / scale, magnitude / scale
    wheel = _colour_wheel()
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
    low = np.floor(position).astype(int)
    high = (low + 1) % len(wheel)
    fraction = (position - low)[..., None]
    colour = ((1 - fraction) * wheel[low] + fraction * wheel[high]) / 255
    saturation = np.clip(magnitude, 0, 1)[..., None]
    colour = 1 - saturation * (1 - colour)
    return (colour * 255).round().astype(np.uint8)


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """An image file as the flow model takes it: [H,W,3] float32 in [-1,1] (x/255*2-1, as the colab)."""
    return rgb_pixels(path) / 255 * 2 - 1


def flow_between_files(
    model: OpticalFlow,
    first: str | os.PathLike,
    second: str | os.PathLike,
    picture: str | os.PathLike,
    overwrite: bool = False,
    **tiling,
) -> np.ndarray:
    """Reads two image files, computes the flow (tiled) and writes it as a colour-wheel picture (PNG; an
    existing file is kept unless `overwrite`). Returns the flow [H,W,2] in pixels."""
    from PIL import Image

    check_output(picture, overwrite)  # before the work, not after
    flow = tiled_flow(model, read_frame(first), read_frame(second), **tiling)
    with atomic_output(picture, overwrite=overwrite) as out:
        Image.fromarray(flow_to_rgb(flow)).save(out, format="PNG")
    return flow
