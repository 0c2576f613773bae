"""Full size: random trees with each released checkpoint's shapes (from the official manifests), in the
released pickle format, converted by `convert-checkpoint` and loaded into the released configuration
with nothing missing or left over, then run once. Slow: run with `pytest -m slow`."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from converters.haiku_pickle import save_haiku_pickle
from converters.synthetic import random_tree
from perceiver_io.serialization import load

from .conftest import manifest

INPUTS = {
    "language_mlm": lambda: {"inputs": torch.randint(6, 262, (1, 2048)),
                             "input_mask": (torch.arange(2048) < 1500).int()[None]},
    "imagenet_learned": lambda: {"images": torch.randn(1, 224, 224, 3)},
    "imagenet_fourier": lambda: {"images": torch.randn(1, 224, 224, 3)},
    "imagenet_conv": lambda: {"images": torch.randn(1, 224, 224, 3)},
    "optical_flow": lambda: {"images": torch.rand(1, 2, 368, 496, 3) * 2 - 1},
    "multimodal_autoencoding": lambda: {
        "images": torch.rand(1, 16, 224, 224, 3),
        "audio": torch.rand(1, 30720, 1) * 2 - 1,
        "subsampled_points": {"image": torch.arange(6272), "audio": torch.arange(15), "label": None},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(INPUTS))
def test_released_checkpoint_converts_and_loads(task, tmp_path):
    official = manifest(task)
    rng = np.random.default_rng(0)
    source = tmp_path / official["checkpoint"].rsplit("/", 1)[-1]
    state = random_tree(official.get("state", []), rng) if "state" in official else None
    save_haiku_pickle(source, random_tree(official["params"], rng), state)
    output = tmp_path / f"{task}.safetensors"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "converters.cli", str(source), "-o", str(output), "--task", task],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert done.returncode == 0, done.stderr
    size = source.stat().st_size
    print(f"\n{done.stdout.strip()}\n{task} full-size conversion: {seconds:.1f} s wall, peak RSS (largest child so "
          f"far) {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB checkpoint")
    assert f"{official['total_param_count']:,} parameters" in done.stdout

    model = load(output)
    assert sum(p.numel() for p in model.parameters()) == official["total_param_count"]
    assert sum(b.numel() for b in model.buffers()) == official["total_state_count"]
    with torch.inference_mode():
        out = model(**INPUTS[task]())
    assert all(torch.isfinite(value).all() for value in (out.values() if isinstance(out, dict) else [out]))
