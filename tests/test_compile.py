"""`torch.compile` on every task model: each golden checkpoint (the official architecture at reduced size,
converted from the released format) compiles, and the compiled model gives the eager outputs on the
golden inputs within 1e-5 of the output's scale (max abs).

Both `torch.compile` and `compile_for_inference` (inductor freezing) are checked, and a second call must
reuse the first graph. Each model is one graph: no break, so the checks of the call and of subsampled
points stay out of the compiled code's way. On 2 cores these take about 90 s."""

from __future__ import annotations

import pytest
import torch

from perceiver_io.compiled import compile_for_inference
from perceiver_io.registry import RELEASES
from perceiver_io.serialization import load

from .conftest import Golden

TOLERANCE = 1e-5
TASKS = list(RELEASES)


def _call(golden: Golden) -> tuple[tuple, dict]:
    """The golden inputs as the model's call; for the video model, its second chunk of queries."""
    if golden.task == "multimodal_autoencoding":
        points = {modality: torch.from_numpy(golden.intermediates[f"chunk1/subsampling/{modality}"])
                  for modality in ("image", "audio")}
        images, audio = (torch.from_numpy(golden.inputs[name]) for name in ("images", "audio"))
        return (images, audio), {"subsampled_points": {**points, "label": None}}
    return tuple(torch.from_numpy(value) for value in golden.inputs.values()), {}


@pytest.mark.parametrize("compiler", ["torch.compile", "compile_for_inference"])
@pytest.mark.parametrize("task", TASKS)
def test_compiled_model_matches_eager_and_compiles_once(task, compiler, converted_golden):
    golden = Golden(task)
    model = load(converted_golden(task).output)
    args, kwargs = _call(golden)
    torch._dynamo.reset()
    compiled_model = torch.compile(model) if compiler == "torch.compile" else compile_for_inference(model)
    with torch.inference_mode():
        eager = model(*args, **kwargs)
        compiled = compiled_model(*args, **kwargs)
        with torch._dynamo.config.patch(error_on_recompile=True):  # the second call reuses the first graph
            again = compiled_model(*args, **kwargs)
    eager, compiled, again = (out if isinstance(out, dict) else {"out": out} for out in (eager, compiled, again))
    assert compiled.keys() == eager.keys()
    for name, expected in eager.items():
        assert compiled[name].shape == expected.shape, f"{task} {name}: {compiled[name].shape} != {expected.shape}"
        assert torch.equal(again[name], compiled[name])
        error = (compiled[name] - expected).abs().max().item()
        scale = expected.abs().max().item()
        print(f"{task} {compiler} {name}: compiled vs eager max abs error {error:.2e} (scale {scale:.2f})")
        assert error <= TOLERANCE * scale, f"{task} {name}: max abs error {error:.2e} > {TOLERANCE:g} x {scale:.2f}"


@pytest.mark.parametrize("task", TASKS)
def test_each_task_model_is_one_graph(task, converted_golden):
    golden = Golden(task)
    model = load(converted_golden(task).output)
    args, kwargs = _call(golden)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(*args, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
