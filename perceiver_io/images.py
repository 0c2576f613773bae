"""Images in, as the pipelines take them: RGB pixel values 0-255 as float32, whatever the file's mode."""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb_pixels(image) -> np.ndarray:
    """A PIL image, an image file path or an array [H,W,3] (0-255) as float32 RGB [H,W,3] in 0-255.

    Grey, palette, RGBA and 1-bit images become RGB as PIL converts them. 16-bit greyscale (modes I;16 and
    I, as 16-bit PNGs open) is scaled from 0-65535, where PIL's own conversion would clip it to 255.
    """
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as opened:
            return rgb_pixels(opened)
    if hasattr(image, "convert"):
        if image.mode in SIXTEEN_BIT_MODES:
            grey = np.clip(np.asarray(image, dtype=np.float32), 0, 65535) / 257
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"expected an RGB image [H,W,3], got an array of shape {array.shape}")
    return array
