"""Optical flow for frames of any size, as the official colab computes it, and flow pictures.

`tiled_flow` cuts the frame pair into tiles of the model's training size that overlap by at least
`min_overlap` pixels (the last row and column of tiles flush with the frame's edges), runs the tiles in
batches, and blends their flows with weights that fall off towards each tile's border, counted from 1 at
the border (the colab's `compute_grid_indices` and `compute_optical_flow`). By default the blend is the
colab's. Its weights also fall off towards a tile's side on the frame's edge, where no other tile takes
over, so the blend jumps there from one tile to an even mix of two: a seam along the frame's edges.
`blend="seamless"` drops that fall-off (the flow then differs from the colab's within half a tile of the
frame's edges). Frames smaller than a tile are refused: the model only sees its training size.
"""

from __future__ import annotations

import itertools
import numbers
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_output, check_output
from .errors import InputError
from .images import integer_pixels, model_values, pillow, rgb_pixels
from .pipelines import check_count, check_model
from .tasks import OpticalFlow

COLAB_MIN_OVERLAP = 20
"""The colab's overlap of tiles, in pixels (for its 368x496 tiles)."""


def default_min_overlap(tile_size: tuple[int, int]) -> int:
    """The colab's overlap (20 pixels), or a third of the tile's shorter side for a tile too small for it."""
    return min(COLAB_MIN_OVERLAP, min(tile_size) // 3)


def tile_origins(
    image_shape: tuple[int, int], tile_size: tuple[int, int], min_overlap: int | None = None
) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the tiles covering an image, row by row (official `compute_grid_indices`:
    a tile every tile - min_overlap pixels, the last flush with the edge). Where the official rule would
    also let an earlier tile run past the edge (and fail), that tile is moved flush with the edge too.
    `min_overlap` defaults to `default_min_overlap(tile_size)`."""
    height, width = image_shape
    min_overlap = default_min_overlap(tile_size) if min_overlap is None else min_overlap
    integral = isinstance(min_overlap, numbers.Integral) and not isinstance(min_overlap, bool)
    if not integral or not 0 <= min_overlap < min(tile_size):
        raise InputError(f"min_overlap ({min_overlap!r}) must be an integer in [0, {min(tile_size)}): the tile size is "
                         f"{tuple(tile_size)}")
    if height < tile_size[0] or width < tile_size[1]:
        raise InputError(
            f"frames of {height}x{width} are smaller than the model's {tile_size[0]}x{tile_size[1]} tile; "
            "resize or pad them to at least the tile size"
        )
    ys = [min(y, height - tile_size[0]) for y in range(0, height, tile_size[0] - min_overlap)]
    xs = [min(x, width - tile_size[1]) for x in range(0, width, tile_size[1] - min_overlap)]
    return list(itertools.product(ys, xs))


BLENDS = ("colab", "seamless")


def tile_weights(tile_size: tuple[int, int], falloff: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Blending weights [h, w]: the distance, counted from 1, to the nearest of the tile's sides (top,
    bottom, left, right) whose `falloff` is True; 1 everywhere when none is."""
    height, width = tile_size
    rows, columns = np.arange(height)[:, None], np.arange(width)[None, :]
    distances = (rows + 1, height - rows, columns + 1, width - columns)
    weights = np.full(tile_size, np.inf)
    for distance, falls in zip(distances, falloff):
        if falls:
            weights = np.minimum(weights, distance)
    return np.where(np.isinf(weights), 1, weights).astype(np.float32)


def model_frame(name: str, frame) -> np.ndarray:
    """A frame as the flow model takes it, float32 in [-1,1]: integer pixels (uint8 0-255, uint16
    0-65535) become x/255*2-1 as in the colab; float frames must already be in [-1,1]."""
    return model_values(name, frame, -1, 1, lambda name, pixels: integer_pixels(name, pixels) / 255 * 2 - 1,
                        "a float frame in [-1,1] or uint8 pixels",
                        " (x/255*2-1, as read_frame gives; or pass uint8 pixels)")


@torch.inference_mode()
def tiled_flow(
    model: OpticalFlow,
    frame1: np.ndarray,
    frame2: np.ndarray,
    min_overlap: int | None = None,
    batch_size: int = 4,
    blend: str = "colab",
) -> np.ndarray:
    """Flow in pixels [H,W,2] from frame1 to frame2 ([H,W,3] each), for any H, W at least the model's
    training size (`config.train_size`, the tile). Frames are float in [-1,1] (x/255*2-1) or integer pixels
    (uint8 0-255, uint16 0-65535, converted so); float values outside [-1,1] are refused. Tiles overlap by at
    least `min_overlap` pixels (default: the colab's 20, or a third of a smaller tile's shorter side). At
    most `batch_size` tiles are in memory on the model's device at once. A tile the official grid lists
    twice is computed once and counted twice. `blend` is "colab" (every side of a tile falls off, as the
    colab's) or "seamless" (sides on the frame's edge do not: no seam along the edges)."""
    check_model(model, OpticalFlow, "tiled_flow")
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {', '.join(map(repr, BLENDS))}, got {blend!r}")
    frame1, frame2 = np.asarray(frame1), np.asarray(frame2)
    if frame1.shape != frame2.shape or frame1.ndim != 3 or frame1.shape[-1] != 3:
        raise InputError(f"expected two RGB frames [H,W,3] of one size, got {frame1.shape} and {frame2.shape}")
    check_count("batch_size", batch_size)
    frames = np.stack([model_frame("frame1", frame1), model_frame("frame2", frame2)])
    tile = tuple(model.config.train_size)
    height, width = frames.shape[1:3]
    counts = Counter(tile_origins((height, width), tile, min_overlap))
    origins = list(counts)
    flow = np.zeros((height, width, 2), np.float32)
    total = np.zeros((height, width, 1), np.float32)
    parameter = next(model.parameters())
    for start in range(0, len(origins), batch_size):
        batch = origins[start: start + batch_size]
        tiles = np.stack([frames[:, y: y + tile[0], x: x + tile[1]] for y, x in batch])
        flows = model(torch.from_numpy(tiles).to(parameter.device, parameter.dtype)).float().cpu().numpy()
        for (y, x), piece in zip(batch, flows):
            falls = (y > 0, y + tile[0] < height, x > 0, x + tile[1] < width) if blend == "seamless" else (True,) * 4
            weights = tile_weights(tile, falls)[:, :, None] * counts[y, x]
            flow[y: y + tile[0], x: x + tile[1]] += piece * weights
            total[y: y + tile[0], x: x + tile[1]] += weights
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


def colour_wheel_legend(diameter: int) -> tuple[np.ndarray, np.ndarray]:
    """The colour wheel as a legend: its colours [d,d,3] uint8 (each pixel the colour of a flow from the
    centre to it, the rim at full saturation) and the disc's mask [d,d] bool."""
    radius = diameter / 2
    ys, xs = np.mgrid[:diameter, :diameter] + 0.5 - radius
    return flow_to_rgb(np.stack([xs, ys], axis=-1), max_magnitude=radius), np.hypot(xs, ys) <= radius


def picture_format(picture: str | os.PathLike) -> str:
    """The Pillow format that writes `picture`, named by its suffix (.png, .jpg/.jpeg, .bmp, .tif, .webp, ...)."""
    Image = pillow("writing flow pictures")
    suffix = Path(picture).suffix.lower()
    format_name = Image.registered_extensions().get(suffix)
    if format_name not in Image.SAVE:
        raise InputError(f"picture must end in a suffix Pillow writes (.png, .jpg, .jpeg, .bmp, .tif, .webp, ...), "
                         f"got {os.fspath(picture)!r}")
    return format_name


def flow_between_files(
    model: OpticalFlow,
    first: str | os.PathLike,
    second: str | os.PathLike,
    picture: str | os.PathLike,
    overwrite: bool = False,
    min_overlap: int | None = None,
    batch_size: int = 4,
    legend: bool = False,
    blend: str = "colab",
) -> np.ndarray:
    """Reads two image files, computes the flow (`tiled_flow`, whose defaults suit any model's tile) and
    writes it as a colour-wheel picture in the format its suffix names (.png, .jpg, ...; another suffix is
    refused before any work; an existing file is kept unless `overwrite`). With `legend`, a colour wheel a
    fifth of the shorter side wide sits in the bottom-right corner: its rim is the picture's largest
    motion. `blend` as in `tiled_flow`. Returns the flow [H,W,2] in pixels."""
    check_model(model, OpticalFlow, "flow_between_files")
    Image = pillow("flow_between_files")
    format_name = picture_format(picture)
    check_output(picture, overwrite)  # before the work, not after
    flow = tiled_flow(model, read_frame(first), read_frame(second), min_overlap, batch_size, blend)
    colours = flow_to_rgb(flow)
    if legend:
        diameter = max(1, min(flow.shape[:2]) // 5)
        margin = diameter // 8
        wheel, disc = colour_wheel_legend(diameter)
        corner = colours[-diameter - margin: colours.shape[0] - margin, -diameter - margin: colours.shape[1] - margin]
        corner[disc] = wheel[disc]
    with atomic_output(picture, overwrite=overwrite) as out:
        Image.fromarray(colours).save(out, format=format_name)
    return flow
