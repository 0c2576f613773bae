"""Task pipelines on top of the models: plain Python values in, plain Python values out.

Each pipeline first checks that it was given its kind of model (`check_model`, a ConfigError otherwise), then
that every array is in the range it takes (an InputError naming the argument, the range and the range found).
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from .errors import ConfigError, InputError, InputTypeError
from .images import integer_pixels, model_values, pillow, pixel_values, rgb_pixels
from .registry import TASKS
from .task_inputs import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB
from .tasks import ImageClassifier, LanguagePerceiver, VideoAutoencoder
from .tokenizer import MASK, NUM_SPECIAL_TOKENS, BytesTokenizer

MASK_MARKER = "[MASK]"
CROP_PADDING = 32
BATCH_SIZE = 8
PCM16_SCALE = 32768
"""16-bit PCM audio (int16) is divided by this, as the video colab does, to give samples in [-1,1]."""


def check_model(model, kind: type, pipeline: str) -> None:
    """Raises ConfigError unless `model` is a task model of class `kind`, the kind `pipeline` runs: the
    message names that kind, its tasks (from `perceiver_io.registry.TASKS`) and what was given."""
    if isinstance(model, kind):
        return
    tasks = [name for name, spec in TASKS.items() if spec.model == f"{kind.__module__}:{kind.__name__}"]
    needed = f"{'an' if kind.__name__[0] in 'AEIOU' else 'a'} {kind.__name__} model (task {' or '.join(tasks)})"
    if isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"{pipeline} needs {needed}, got the path {str(model)!r}: load it first with "
                          "perceiver_io.load")
    task = getattr(model, "task", None)
    found = type(model).__name__ + (f" (task {task})" if isinstance(task, str) else "")
    raise ConfigError(f"{pipeline} needs {needed}, got {'an' if found[0] in 'AEIOU' else 'a'} {found}")


def check_count(name: str, value) -> None:
    """Raises InputError unless `value` is an integer of at least 1 (`top_k`, `batch_size`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def _masked_ids(text: str, mask_marker: str, length: int, name: str) -> np.ndarray:
    """The token ids [N] of `text`, each `mask_marker` one MASK id; at most `length` of them."""
    if not isinstance(text, str):
        raise InputTypeError(f"{name} must be a str, got {type(text).__name__}")
    pieces = text.split(mask_marker)
    if len(pieces) == 1:
        raise InputError(f"{name} has no {mask_marker!r} to fill")
    tokenizer = BytesTokenizer()
    ids = []
    for index, piece in enumerate(pieces):
        ids.extend(tokenizer.encode(piece).tolist())
        if index < len(pieces) - 1:
            ids.append(MASK)
    if len(ids) > length:
        raise InputError(f"{name} is {len(ids)} tokens (one per UTF-8 byte and per {mask_marker}), more than the "
                         f"model's {length} positions")
    return np.asarray(ids, dtype=np.int32)


@torch.inference_mode()
def fill_mask(
    model: LanguagePerceiver,
    text: str | Sequence[str],
    mask_marker: str = MASK_MARKER,
    batch_size: int = BATCH_SIZE,
) -> str | list[str]:
    """Fills masked bytes of `text` (a str, or a list of them) with the model's most likely bytes.

    Each occurrence of `mask_marker` stands for one masked UTF-8 byte; for example
    "This is an incomplete sentence where some words are" + 9 * "[MASK]" asks for 9 bytes. A text is at
    most the model's `max_seq_len` tokens (a byte each, a marker one). Returns the text with every marker
    replaced by the predicted byte (invalid UTF-8 shows as U+FFFD); for a list, the list of them, the
    model run on `batch_size` texts at a time.
    """
    check_model(model, LanguagePerceiver, "fill_mask")
    check_count("batch_size", batch_size)
    if not mask_marker:
        raise InputError("mask_marker must not be empty")
    single = isinstance(text, str)
    if not single and not isinstance(text, (list, tuple)):
        raise InputTypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    texts = [text] if single else list(text)
    names = ["text"] if single else [f"text[{index}]" for index in range(len(texts))]
    tokenizer = BytesTokenizer()
    rows = [tokenizer.pad(_masked_ids(item, mask_marker, model.config.max_seq_len, name), model.config.max_seq_len)
            for item, name in zip(texts, names)]
    device = next(model.parameters()).device
    filled = []
    for start in range(0, len(rows), batch_size):
        ids = np.stack([ids for ids, _ in rows[start: start + batch_size]])
        masks = np.stack([mask for _, mask in rows[start: start + batch_size]])
        logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(masks).to(device))
        predicted = logits[..., NUM_SPECIAL_TOKENS:].argmax(-1).cpu().numpy() + NUM_SPECIAL_TOKENS
        for row, mask, best in zip(ids, masks, predicted):
            filled.append(tokenizer.decode(np.where(row == MASK, best, row)[mask.astype(bool)]))
    return filled[0] if single else filled


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order of the classifiers' logits."""
    text = (resources.files("perceiver_io") / "data" / "imagenet_classes.txt").read_text()
    return tuple(text.splitlines())


def imagenet_input(
    image, size: tuple[int, int] = (224, 224), pixel_max: float | None = None, name: str = "image"
) -> np.ndarray:
    """An image as the ImageNet classifiers take it: [H,W,3] float32, normalised as the official colab.

    `image` is a PIL image, an image file or an RGB array [H,W,3] of pixel values (`rgb_pixels`: uint8 0-255,
    uint16 0-65535, float 0..`pixel_max`, by default 0-255 with a float array wholly within [0,1] refused).
    The centre crop keeps size / (size + 32) of the shorter side (the official evaluation crop), is
    resized to `size` with bicubic interpolation, then normalised: (x - mean*255) / (std*255).
    """
    Image = pillow("classify_image (its bicubic resize)")
    pixels = rgb_pixels(image, pixel_max, name)
    height, width = pixels.shape[:2]
    if min(height, width) == 0:
        raise InputError(f"{name} is empty: {height}x{width} pixels")
    crop = max(1, int(size[0] / (size[0] + CROP_PADDING) * min(height, width)))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    cropped = pixels[top: top + crop, left: left + crop]
    resized = Image.fromarray(cropped.round().clip(0, 255).astype(np.uint8)).resize(
        (size[1], size[0]), Image.Resampling.BICUBIC
    )
    return (np.asarray(resized, dtype=np.float32) - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB


def _image_batch(image, pixel_max: float | None) -> tuple[list, list[str], bool, float | None]:
    """The images of `classify_image`'s argument, their names in errors, whether it was a single one, and the
    `pixel_max` to read each with. An array [B,H,W,3] is one batch: its scale is read once, over all of it (a
    dark image in a 0-255 batch is not taken for a [0,1] one)."""
    if isinstance(image, (list, tuple)):
        return list(image), [f"image[{index}]" for index in range(len(image))], False, pixel_max
    if isinstance(image, (str, os.PathLike)) or hasattr(image, "convert"):
        return [image], ["image"], True, pixel_max
    array = np.asarray(image)
    if array.ndim == 4:
        pixels = pixel_values("image", array, pixel_max)
        return list(pixels), [f"image[{index}]" for index in range(len(array))], False, 255.0
    return [array], ["image"], True, pixel_max


@torch.inference_mode()
def classify_image(
    model: ImageClassifier,
    image,
    top_k: int = 5,
    batch_size: int = BATCH_SIZE,
    pixel_max: float | None = None,
) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
    """The `top_k` (class name, probability) pairs for one image, or a list of them for a batch.

    One image is a PIL image, an image file (16-bit greyscale too) or an RGB array [H,W,3]; a batch is a list
    or tuple of those, or an array [B,H,W,3], run through the model `batch_size` images at a time. Array
    pixels: uint8 (or another integer dtype) 0-255, uint16 0-65535, float 0-255; a float array wholly within
    [0,1] is refused as ambiguous unless `pixel_max` says its scale (pixel_max=1.0 for [0,1] images).
    Class names are ImageNet's for a 1000-class model, the class index otherwise.
    """
    check_model(model, ImageClassifier, "classify_image")
    check_count("top_k", top_k)
    check_count("batch_size", batch_size)
    images, names, single, pixel_max = _image_batch(image, pixel_max)
    parameter = next(model.parameters())
    labels = imagenet_classes() if model.config.num_classes == 1000 else None
    results = []
    for start in range(0, len(images), batch_size):
        pixels = np.stack([imagenet_input(item, tuple(model.config.image_size), pixel_max, name)
                           for item, name in zip(images[start: start + batch_size], names[start: start + batch_size])])
        logits = model(torch.from_numpy(pixels).to(parameter.device, parameter.dtype)).float()
        best = torch.topk(torch.softmax(logits, dim=-1), min(top_k, logits.shape[-1]))
        for probabilities, indices in zip(best.values.tolist(), best.indices.tolist()):
            results.append([(labels[index] if labels else str(index), probability)
                            for probability, index in zip(probabilities, indices)])
    return results[0] if single else results


def video_frames(name: str, images) -> np.ndarray:
    """Video frames as the video autoencoder takes them, float32 in [0,1]: integer pixels (uint8 0-255,
    uint16 0-65535) are scaled to [0,1] (uint8 / 255, as the colab); float frames must be in [0,1]."""
    return model_values(name, images, 0, 1, lambda name, pixels: integer_pixels(name, pixels) / 255,
                        "frames as a float array in [0,1] or as uint8 pixels",
                        " (video frames: divide 0-255 frames by 255, or pass them as uint8)")


def audio_samples(name: str, audio) -> np.ndarray:
    """Audio as the video autoencoder takes it, float32 in [-1,1]: 16-bit PCM (int16) is divided by 32768,
    as the colab does; float samples must be in [-1,1]."""
    expected = "float samples in [-1,1] or 16-bit PCM (int16)"

    def from_pcm(name: str, samples: np.ndarray) -> np.ndarray:
        if samples.dtype != np.int16:
            raise InputTypeError(f"{name} is {samples.dtype}: expected {expected}")
        return samples.astype(np.float32) / PCM16_SCALE

    return model_values(name, audio, -1, 1, from_pcm, expected,
                        " (audio samples: divide 16-bit PCM by 32768, or pass it as int16)")


@torch.inference_mode()
def reconstruct_video(
    model: VideoAutoencoder, images, audio=None, num_chunks: int | None = None
) -> dict[str, np.ndarray]:
    """Reconstructs a clip from video `images` and `audio`, or from the path of an .npz file holding arrays
    named `images` and `audio` (then `audio` is left out). Decodes in `num_chunks` chunks (default: the
    colab's 128), running the encoder once.

    `images` [T,H,W,3] or [B,T,H,W,3]: float in [0,1], or uint8 pixels (divided by 255, as the colab).
    `audio` [S], [S,1] or [B,S,1]: float in [-1,1], or int16 PCM (divided by 32768, as the colab). Audio is
    required with arrays, as in the colab, which reads it from the clip; for a silent clip pass zeros.
    Values outside these ranges are refused.

    Returns {'image': [B,T,H,W,3], 'audio': [B,S,1], 'label': [B,classes]} as numpy arrays (B = 1 for
    unbatched inputs).
    """
    check_model(model, VideoAutoencoder, "reconstruct_video")
    names = ("images", "audio")
    if isinstance(images, (str, os.PathLike)):
        if audio is not None:
            raise InputError("pass either an .npz file or the images and audio arrays, not both")
        with np.load(images, allow_pickle=False) as arrays:
            missing = sorted({"images", "audio"} - set(arrays.files))
            if missing:
                raise InputError(f"{images} lacks the arrays {missing} (it has {sorted(arrays.files)})")
            names = (f"images in {images}", f"audio in {images}")
            images, audio = arrays["images"], arrays["audio"]
    elif audio is None:
        samples = model.config.num_audio_samples
        raise InputError(f"audio is missing: with images as an array, pass audio [{samples}], [{samples},1] or "
                         f"[B,{samples},1] in [-1,1] (zeros for silence), or an .npz file holding both")
    images, audio = video_frames(names[0], images), audio_samples(names[1], audio)
    if images.ndim == 4:
        images = images[None]
    if audio.ndim == 1:
        audio = audio[None, :, None]
    elif audio.ndim == 2:
        audio = audio[None]
    parameter = next(model.parameters())
    reconstruction = model.reconstruct(
        torch.from_numpy(images).to(parameter.device, parameter.dtype),
        torch.from_numpy(audio).to(parameter.device, parameter.dtype),
        num_chunks,
    )
    return {name: value.float().cpu().numpy() for name, value in reconstruction.items()}
