"""Runs every task pipeline once, end to end.

    python3 scripts/pipelines_example.py              # the small golden checkpoints in tests/data/golden
    python3 scripts/pipelines_example.py --released   # the released weights (downloads about 1.6 GB once)

The golden checkpoints are the official architectures at reduced size with random weights, so their
answers are noise; with `--released` the same calls give the real models' answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import perceiver_io
from converters.convert import convert_checkpoint
from perceiver_io.flow import flow_between_files
from perceiver_io.images import pillow

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden"


def golden_model(task: str, folder: Path):
    """Converts the golden checkpoint of `task` into `folder` and loads it."""
    meta = json.loads((GOLDEN / task / "config.json").read_text())
    config = json.loads((GOLDEN / task / "reduced_config.json").read_text())
    output = folder / f"{task}.safetensors"
    convert_checkpoint(GOLDEN / task / meta["checkpoint_file"], output, task, config)
    return perceiver_io.load(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", action="store_true", help="use the released weights (needs the network once)")
    args = parser.parse_args()
    try:
        Image = pillow("scripts/pipelines_example.py")
    except ModuleNotFoundError as missing:
        sys.exit(f"error: {missing}")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = perceiver_io.load if args.released else (lambda task: golden_model(task, folder))
        rng = np.random.default_rng(0)

        language = model("language_mlm")
        text = "This is an incomplete sentence where some words are" + "[MASK]" * 9
        print("fill_mask:", repr(perceiver_io.fill_mask(language, text)))
        print("fill_mask, a batch:", perceiver_io.fill_mask(language, ["Hello[MASK]", "[MASK]ello"]))

        classifier = model("imagenet_fourier")
        picture = folder / "picture.png"
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(picture)
        print("classify_image:", perceiver_io.classify_image(classifier, picture, top_k=3))
        batch = rng.integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)  # [B,H,W,3] uint8 pixels, 0-255
        print("classify_image, a batch:", perceiver_io.classify_image(classifier, batch, top_k=2))

        flow_model = model("optical_flow")
        height, width = (h + 20 for h in flow_model.config.train_size)
        scene = rng.integers(0, 256, (height, width + 3, 3), dtype=np.uint8)
        Image.fromarray(scene[:, :width]).save(folder / "frame1.png")
        Image.fromarray(scene[:, 3:]).save(folder / "frame2.png")
        flow = flow_between_files(flow_model, folder / "frame1.png", folder / "frame2.png", folder / "flow.png")
        print(f"flow_between_files: flow {flow.shape}, mean (u, v) = {flow.mean(axis=(0, 1)).round(3).tolist()}, "
              f"picture {Image.open(folder / 'flow.png').size}")

        video = model("multimodal_autoencoding")
        config = video.config
        clip = folder / "clip.npz"
        np.savez(
            clip,
            images=rng.random((*config.image_shape, 3), dtype=np.float32),
            audio=rng.uniform(-1, 1, (config.num_audio_samples, 1)).astype(np.float32),
        )
        reconstruction = perceiver_io.reconstruct_video(video, clip)
        print("reconstruct_video:", {name: value.shape for name, value in reconstruction.items()})


if __name__ == "__main__":
    main()
