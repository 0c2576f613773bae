"""Task pipelines on top of the models: plain Python values in, plain Python values out."""

from __future__ import annotations

import functools
import os
from importlib import resources

import numpy as np
import torch

from .errors import InputError
from .images import rgb_pixels
from .task_inputs import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB
from .tasks import ImageClassifier, LanguagePerceiver, VideoAutoencoder
from .tokenizer import MASK, NUM_SPECIAL_TOKENS, BytesTokenizer

MASK_MARKER = "[MASK]"
CROP_PADDING = 32


@torch.inference_mode()
def fill_mask(model: LanguagePerceiver, text: str, mask_marker: str = MASK_MARKER) -> str:
    """Fills masked bytes of `text` with the model's most likely bytes.

    Each occurrence of `mask_marker` stands for one masked UTF-8 byte; for example
    "This is an incomplete sentence where some words are" + 9 * "[MASK]" asks for 9 bytes.
    Returns the text with every marker replaced by the predicted byte (invalid UTF-8 shows as U+FFFD).
    """
    if not mask_marker:
        raise InputError("mask_marker must not be empty")
    tokenizer = BytesTokenizer()
    pieces = text.split(mask_marker)
    if len(pieces) == 1:
        raise InputError(f"the text has no {mask_marker!r} to fill")
    ids = []
    for index, piece in enumerate(pieces):
        ids.extend(tokenizer.encode(piece).tolist())
        if index < len(pieces) - 1:
            ids.append(MASK)
    ids, input_mask = tokenizer.pad(np.asarray(ids, dtype=np.int32), model.config.max_seq_len)
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(ids)[None].to(device), torch.from_numpy(input_mask)[None].to(device))[0]
    predicted = logits[:, NUM_SPECIAL_TOKENS:].argmax(-1).cpu().numpy() + NUM_SPECIAL_TOKENS
    filled = np.where(ids == MASK, predicted, ids)
    return tokenizer.decode(filled[input_mask.astype(bool)])


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order of the classifiers' logits."""
    text = (resources.files("perceiver_io") / "data" / "imagenet_classes.txt").read_text()
    return tuple(text.splitlines())


def imagenet_input(image, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """An image as the ImageNet classifiers take it: [H,W,3] float32, normalised as the official colab.

    The centre crop keeps size / (size + 32) of the shorter side (the official evaluation crop), is
    resized to `size` with bicubic interpolation, then normalised: (x - mean*255) / (std*255).
    """
    from PIL import Image

    pixels = rgb_pixels(image)
    height, width = pixels.shape[:2]
    if min(height, width) == 0:
        raise InputError(f"the image is empty: {height}x{width} pixels")
    crop = max(1, int(size[0] / (size[0] + CROP_PADDING) * min(height, width)))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    cropped = pixels[top: top + crop, left: left + crop]
    resized = Image.fromarray(cropped.round().clip(0, 255).astype(np.uint8)).resize(
        (size[1], size[0]), Image.Resampling.BICUBIC
    )
    return (np.asarray(resized, dtype=np.float32) - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB


@torch.inference_mode()
def classify_image(model: ImageClassifier, image, top_k: int = 5) -> list[tuple[str, float]]:
    """The `top_k` (class name, probability) pairs for a PIL image, an image file or an RGB array."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    parameter = next(model.parameters())
    pixels = torch.from_numpy(imagenet_input(image, tuple(model.config.image_size)))[None]
    logits = model(pixels.to(parameter.device, parameter.dtype))[0].float()
    probabilities = torch.softmax(logits, dim=-1)
    names = imagenet_classes() if model.config.num_classes == 1000 else None
    best = torch.topk(probabilities, min(top_k, probabilities.numel()))
    return [
        (names[index] if names else str(index), float(probability))
        for probability, index in zip(best.values.tolist(), best.indices.tolist())
    ]


@torch.inference_mode()
def reconstruct_video(
    model: VideoAutoencoder, images, audio=None, num_chunks: int | None = None
) -> dict[str, np.ndarray]:
    """Reconstructs a clip: video `images` [T,H,W,3] or [B,T,H,W,3] in [0,1] and `audio` [S] / [S,1] /
    [B,S,1] in [-1,1], or the path of an .npz file holding arrays `images` and `audio`. Decodes in
    `num_chunks` chunks (default: the colab's 128), running the encoder once.

    Returns {'image': [B,T,H,W,3], 'audio': [B,S,1], 'label': [B,classes]} as numpy arrays (B = 1 for
    unbatched inputs).
    """
    if isinstance(images, (str, os.PathLike)):
        if audio is not None:
            raise InputError("pass either an .npz file or the images and audio arrays, not both")
        with np.load(images, allow_pickle=False) as arrays:
            missing = sorted({"images", "audio"} - set(arrays.files))
            if missing:
                raise InputError(f"{images} lacks the arrays {missing} (it has {sorted(arrays.files)})")
            images, audio = arrays["images"], arrays["audio"]
    images = np.asarray(images, dtype=np.float32)
    audio = np.asarray(audio, dtype=np.float32)
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
