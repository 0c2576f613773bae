"""Images in, as the pipelines take them: RGB pixel values 0-255 as float32, whatever the file's mode or the
array's dtype, and the range checks of the pipelines' arrays (values outside the range an argument takes are
refused, never read silently on another scale)."""

from __future__ import annotations

import numbers
import os

import numpy as np

from .errors import InputError, InputTypeError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
RANGE_SLACK = 0.5 / 255
"""How far a float array may reach outside the range it must be in, as a fraction of the range's width: half
an 8-bit level (rounding); further out it is refused. Tight, so that an image already normalised
((x - mean) / std, down to about -2.1) is not taken for pixels."""


def pillow(needed_for: str):
    """The `PIL.Image` module, or a ModuleNotFoundError that says how to install Pillow."""
    try:
        from PIL import Image
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"{needed_for} needs Pillow: pip install 'perceiver-io-port[images]' (or pip install pillow)", name="PIL"
        ) from error
    return Image


def check_range(name: str, array: np.ndarray, low: float, high: float, hint: str = "") -> None:
    """Raises InputError unless the float `array` is finite and within [low, high], give or take
    `RANGE_SLACK` of the width. The message names `name`, the range, the range found, then `hint`."""
    if array.size == 0:
        return
    found_low, found_high = float(array.min()), float(array.max())
    if not (np.isfinite(found_low) and np.isfinite(found_high)):
        raise InputError(f"{name} must be in [{low:g},{high:g}]{hint}, found NaN or infinite values")
    slack = RANGE_SLACK * (high - low)
    if found_low < low - slack or found_high > high + slack:
        raise InputError(
            f"{name} must be in [{low:g},{high:g}]{hint}, found values from {found_low:.4g} to {found_high:.4g}"
        )


def model_values(name: str, values, low: float, high: float, from_integers, expected: str, hint: str) -> np.ndarray:
    """`values` as float32 in [low, high], the range a model takes: an integer array read by
    `from_integers(name, array)` (its dtype says its scale), a float array checked to be in the range (see
    `check_range`; `hint` says how to get there); any other dtype an InputTypeError that names `expected`."""
    array = np.asarray(values)
    if array.dtype.kind in "ui":
        return from_integers(name, array)
    if array.dtype.kind != "f":
        raise InputTypeError(f"{name} is {array.dtype}: expected {expected}")
    array = array.astype(np.float32)
    check_range(name, array, low, high, hint)
    return array


def integer_pixels(name: str, array: np.ndarray) -> np.ndarray:
    """Integer pixel values as float32 0-255: uint16 is 16-bit (0-65535, scaled by 1/257); any other
    integer dtype holds 0-255 (values outside are refused)."""
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 257
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(
            f"{name} is {array.dtype} and must hold pixel values in [0,255] (uint16 for 16-bit pixels), found "
            f"values from {array.min()} to {array.max()}"
        )
    return array.astype(np.float32)


UNIT_RANGE_SLACK = 0.05
"""How far past [0,1] a float image may reach and still be taken for a [0,1] image (a bicubic resize
overshoots a little), rather than for 0-255 pixels that are all nearly black."""


def looks_like_unit_range(array: np.ndarray) -> bool:
    """Whether a float pixel array lies within [0,1] (give or take UNIT_RANGE_SLACK): most likely a [0,1]
    image, which read as 0-255 pixels would be all but black."""
    return bool(array.size) and -UNIT_RANGE_SLACK <= array.min() and array.max() <= 1 + UNIT_RANGE_SLACK


def pixel_values(name: str, array, pixel_max: float | None = None) -> np.ndarray:
    """Pixel values of any dtype as float32 0-255, shape kept. Integers: see `integer_pixels`. Floats are
    on the scale 0..`pixel_max`; by default 0-255, where a float array wholly within [0,1] is refused as
    ambiguous (most likely a [0,1] image): multiply it by 255 or pass pixel_max=1.0 (pixel_max=255 takes
    it as a very dark 0-255 image)."""
    if pixel_max is not None and (isinstance(pixel_max, bool) or not isinstance(pixel_max, numbers.Real)
                                  or not 0 < pixel_max < float("inf")):
        raise InputError(f"pixel_max must be a positive number (the largest pixel value), got {pixel_max!r}")
    array = np.asarray(array)
    if array.dtype.kind in "ui":
        return integer_pixels(name, array)
    if array.dtype.kind != "f":
        raise InputTypeError(
            f"{name} is {array.dtype}: expected pixel values as an integer (uint8, uint16) or float array"
        )
    array = array.astype(np.float32)
    if pixel_max is None:
        if looks_like_unit_range(array):
            raise InputError(
                f"{name} is a float array with values in [{array.min():.4g},{array.max():.4g}], but float pixels "
                "are read as 0-255: multiply a [0,1] image by 255 or pass pixel_max=1.0 (pixel_max=255 takes it "
                "as a dark 0-255 image)"
            )
        pixel_max = 255.0
    check_range(name, array, 0, pixel_max, " (pixel values, before any normalisation)")
    return np.clip(array, 0, pixel_max) * np.float32(255 / pixel_max)


def rgb_pixels(image, pixel_max: float | None = None, name: str = "image") -> np.ndarray:
    """A PIL image, an image file path or an RGB array [H,W,3] as float32 RGB [H,W,3] in 0-255.

    Grey, palette, RGBA and 1-bit images become RGB as PIL converts them. 16-bit greyscale (modes I;16 and
    I, as 16-bit PNGs open) is scaled from 0-65535, where PIL's own conversion would clip it to 255. Arrays
    follow `pixel_values`: uint8 (and other integers) 0-255, uint16 0-65535, float 0..`pixel_max` (0-255 by
    default, a float array wholly within [0,1] refused). `name` is the argument's name in errors.
    """
    if isinstance(image, (str, os.PathLike)):
        with pillow("reading image files").open(image) as opened:
            return rgb_pixels(opened)
    if hasattr(image, "convert"):
        if image.mode in SIXTEEN_BIT_MODES:
            grey = np.clip(np.asarray(image, dtype=np.float32), 0, 65535) / 257
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"{name}: expected an RGB image [H,W,3], got an array of shape {array.shape}")
    return pixel_values(name, array, pixel_max)
