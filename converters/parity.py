"""The same inputs through the PyTorch model and the project's JAX reference (`converters.jax_reference`),
each recording its stages under the same names (compared by `converters.comparison`).

On the PyTorch side each stage is the output of a submodule, captured with a forward hook, so an error is
located at the stage where it starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from perceiver_io.configs import OfficialConfig

from .haiku_pickle import HaikuCheckpoint
from .stages import flatten

STAGES: dict[str, tuple[str, Callable[[Any], torch.Tensor]]] = {
    "encoder_inputs": ("perceiver.input_preprocessor", lambda output: output.inputs),
    "inputs_without_pos": ("perceiver.input_preprocessor", lambda output: output.inputs_without_pos),
    "encoder_query": ("perceiver.encoder.latents", lambda output: output),
    "encoder_cross_attention": ("perceiver.encoder.cross_attention", lambda output: output),
    "z": ("perceiver.encoder", lambda output: output),
    "decoder_outputs": ("perceiver.decoder", lambda output: output),
}
"""Reference intermediate name -> (PyTorch submodule, what of its output is that stage). Every task model
is a `Perceiver` under `perceiver`; the self-attentions add `encoder_self_attention_{k}`, one per call, and
the decoder's `decoder_query` method (no module of its own) adds `decoder_query`."""


def _numpy(value) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(value, dict):
        return {key: _numpy(item) for key, item in value.items()}
    return value.detach().float().cpu().numpy()


@torch.inference_mode()
def run_torch(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The model's stages and final `out` on `inputs` (the model's keyword arguments, numpy), as float32
    numpy whatever the model's dtype. Floating inputs are cast to the model's dtype and device."""
    stages: dict[str, Any] = {}
    self_attention_outputs: list[np.ndarray] = []
    hooks = []

    def capture(stage: str, extract: Callable):
        def keep(_module, _args, output):
            stages[stage] = _numpy(extract(output))

        return keep

    for stage, (module_name, extract) in STAGES.items():
        hooks.append(model.get_submodule(module_name).register_forward_hook(capture(stage, extract)))
    for self_attention in model.get_submodule("perceiver.encoder.self_attends"):
        hooks.append(
            self_attention.register_forward_hook(lambda _m, _a, output: self_attention_outputs.append(_numpy(output)))
        )
    decoder = model.get_submodule("perceiver.decoder")
    build_query = decoder.decoder_query

    def decoder_query(*args, **kwargs):
        query = build_query(*args, **kwargs)
        stages["decoder_query"] = _numpy(query)
        return query

    decoder.decoder_query = decoder_query  # an instance attribute over the method, deleted below
    parameter = next(model.parameters())
    try:
        out = model(**{key: _to_torch(value, parameter.device, parameter.dtype) for key, value in inputs.items()})
    finally:
        del decoder.decoder_query
        for hook in hooks:
            hook.remove()
    stages.update({f"encoder_self_attention_{k}": value for k, value in enumerate(self_attention_outputs)})
    stages["out"] = _numpy(out)
    return flatten(stages)


def _to_torch(value, device, dtype):
    if isinstance(value, Mapping):
        return {key: _to_torch(item, device, dtype) for key, item in value.items()}
    if value is None:
        return None
    tensor = torch.from_numpy(np.asarray(value)).to(device)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def jax_available() -> bool:
    return importlib.util.find_spec("jax") is not None


@contextlib.contextmanager
def jax_on_cpu() -> Iterator[Any]:
    """Runs JAX, in float32 with full-precision matmuls, on its CPU device whatever accelerator it sees (and
    sees none if jax is not imported yet: the GPU is left to PyTorch). Yields the jax module."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    with jax.default_device(jax.devices("cpu")[0]), jax.default_matmul_precision("highest"):
        yield jax


def run_jax_reference(
    checkpoint: HaikuCheckpoint, task: str, config: OfficialConfig | Mapping[str, Any] | None,
    inputs: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The JAX reference's (`converters.jax_reference`) intermediates and final `out` (`out/<modality>` for
    the multimodal model) on `inputs` (the official call's keyword arguments), on JAX's CPU (`jax_on_cpu`;
    needs jax).

    The apply runs under `jax.jit`, as the flow colab runs the official model: 3 to 5 times faster than
    eager on the golden models, and within the official code's own eager-vs-jit differences: at most 1e-5
    on the golden batches, 1e-4 on the multimodal audio (docs/official-numerics.md#tolerances)."""
    with jax_on_cpu() as jax:
        from .jax_reference import build

        apply = jax.jit(build(task, config).apply)
        (out, intermediates), _ = apply(checkpoint.params, checkpoint.state, jax.random.PRNGKey(0), **inputs)
        return flatten(jax.tree_util.tree_map(np.asarray, {**intermediates, "out": out}))
