"""Random Haiku checkpoints with the shapes of an official manifest, for full-size tests and benchmarks
(the released files cannot be downloaded everywhere)."""

from __future__ import annotations

import numpy as np


def random_tree(leaves: list[dict], rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Random leaves of the manifest's shapes and dtypes ({module, name, shape, dtype} entries): weights
    N(0, 0.02^2), int32 BatchNorm counters in [1, 100), positive variances."""
    tree: dict[str, dict[str, np.ndarray]] = {}
    for leaf in leaves:
        if leaf["dtype"] == "int32":
            value = np.full(leaf["shape"], rng.integers(1, 100), dtype=np.int32)
        elif leaf["module"].endswith("var_ema"):
            value = rng.uniform(0.5, 2.0, leaf["shape"]).astype(np.float32)
        else:
            value = rng.standard_normal(leaf["shape"], dtype=np.float32) * 0.02
        tree.setdefault(leaf["module"], {})[leaf["name"]] = value
    return tree
