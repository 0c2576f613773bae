"""Parity of a converted PyTorch model with the JAX side: the official outputs stored with an example
and, when jax and dm-haiku are installed, the Haiku reference run on the same inputs.

Stages are compared as well as the final output, so an error is located: each stage is the output of a
PyTorch submodule, captured with a forward hook, against the reference's intermediate of the same name.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .haiku_pickle import HaikuCheckpoint

STAGE_MODULES: dict[str, dict[str, str]] = {
    "language_mlm": {
        "encoder_inputs": "input_preprocessor",
        "z": "perceiver.encoder",
        "decoder_outputs": "perceiver.decoder",
    },
}
"""Per task: reference intermediate name -> PyTorch submodule whose output is that stage."""


@dataclass(frozen=True)
class StageError:
    stage: str
    max_abs_error: float
    scale: float

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.scale if self.scale else self.max_abs_error


def max_abs_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, reference {theirs.shape}")
    if not np.isfinite(ours).all():
        return float("inf")
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0))


def compare(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> list[StageError]:
    """Max abs error of every stage both sides have, in `ours`' order."""
    return [
        StageError(name, max_abs_error(ours[name], np.asarray(reference[name])), float(np.max(np.abs(reference[name]))))
        for name in ours
        if name in reference
    ]


@torch.inference_mode()
def run_torch(model: nn.Module, task: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's stages and final `out` on `inputs` (the official call's keyword arguments)."""
    stages: dict[str, np.ndarray] = {}
    hooks = []
    for stage, module_name in STAGE_MODULES.get(task, {}).items():
        module = model.get_submodule(module_name)

        def keep(_module, _args, output, stage=stage):
            stages[stage] = output.detach().float().cpu().numpy()

        hooks.append(module.register_forward_hook(keep))
    try:
        device = next(model.parameters()).device
        out = model(**{k: torch.from_numpy(np.asarray(v)).to(device) for k, v in inputs.items()})
    finally:
        for hook in hooks:
            hook.remove()
    stages["out"] = out.detach().float().cpu().numpy()
    return stages


def haiku_available() -> bool:
    return importlib.util.find_spec("jax") is not None and importlib.util.find_spec("haiku") is not None


def run_haiku_reference(
    checkpoint: HaikuCheckpoint, task: str, config_official: dict, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The Haiku reference's intermediates and final `out` on `inputs` (needs jax and dm-haiku)."""
    import jax

    from .haiku_reference.tasks import build

    transformed = build(task, config_official)
    (out, intermediates), _ = transformed.apply(
        checkpoint.params, checkpoint.state, jax.random.PRNGKey(0), **inputs
    )
    result = {name: np.asarray(value) for name, value in intermediates.items()}
    result["out"] = np.asarray(out)
    return result
