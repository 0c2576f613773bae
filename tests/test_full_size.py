"""Full size: a random tree with the released language checkpoint's shapes (about 800 MB), in the
released pickle format, converted by `convert-checkpoint` and loaded into the released configuration
with nothing missing or left over. Slow: run with `pytest -m slow`."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from converters.haiku_pickle import save_haiku_pickle
from perceiver_io.serialization import load

from .conftest import manifest


def random_tree(task: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    tree: dict[str, dict[str, np.ndarray]] = {}
    for leaf in manifest(task)["params"]:
        tree.setdefault(leaf["module"], {})[leaf["name"]] = rng.standard_normal(leaf["shape"], dtype=np.float32) * 0.02
    return tree


@pytest.mark.slow
def test_released_language_checkpoint_converts_and_loads(tmp_path):
    source = tmp_path / "language_perceiver_io_bytes.pickle"
    save_haiku_pickle(source, random_tree("language_mlm"))
    output = tmp_path / "language_mlm.safetensors"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "converters.cli", str(source), "-o", str(output), "--task", "language_mlm"],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert done.returncode == 0, done.stderr
    size = source.stat().st_size
    print(f"\n{done.stdout.strip()}\nfull-size conversion: {seconds:.1f} s wall, peak RSS {peak / 2**20:.0f} MiB "
          f"for a {size / 2**20:.0f} MiB checkpoint ({peak / size:.2f}x)")
    assert "201,108,230 parameters" in done.stdout

    model = load(output)
    assert sum(p.numel() for p in model.parameters()) == manifest("language_mlm")["total_param_count"]
    inputs = torch.randint(6, 262, (1, 2048))
    mask = torch.ones(1, 2048, dtype=torch.int32)
    mask[0, 1500:] = 0
    with torch.inference_mode():
        logits = model(inputs, mask)
    assert logits.shape == (1, 2048, 262) and torch.isfinite(logits).all()
