"""Training mode as the official one: BatchNorm statistics follow Haiku's EMA, one SGD step in PyTorch
equals the same step in JAX, gradients reach every parameter, and a fine-tuned model exported back to
Haiku runs in the JAX reference with the PyTorch outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("haiku")
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from converters.convert import convert_tree, export_tree  # noqa: E402
from converters.export import export_haiku_checkpoint  # noqa: E402
from converters.haiku_pickle import load_haiku_checkpoint  # noqa: E402
from converters.jax_reference import build  # noqa: E402
from perceiver_io.conv import BatchNorm  # noqa: E402
from perceiver_io.tasks import build_model  # noqa: E402

from .conftest import Golden  # noqa: E402


def _load(task: str, golden: Golden):
    model = build_model(task, golden.config)
    state_dict = convert_tree(golden.checkpoint, task, golden.config)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
    return model


def test_batchnorm_statistics_follow_haikus_moving_averages():
    rng = np.random.default_rng(0)
    batches = [rng.normal(1.0, 2.0, (4, 5, 5, 3)).astype(np.float32) for _ in range(4)]
    scale, offset = rng.normal(1, 0.2, 3).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)

    def forward(x, is_training):
        return hk.BatchNorm(True, True, 0.9, eps=1e-5, name="batchnorm")(x, is_training)

    transformed = hk.transform_with_state(forward)
    params, state = transformed.init(jax.random.PRNGKey(0), batches[0], True)
    params = {"batchnorm": {"scale": scale.reshape(1, 1, 1, 3), "offset": offset.reshape(1, 1, 1, 3)}}
    ours = BatchNorm(3).train()
    with torch.no_grad():
        ours.weight.copy_(torch.from_numpy(scale))
        ours.bias.copy_(torch.from_numpy(offset))
    for batch in batches:
        expected, state = transformed.apply(params, state, None, batch, True)
        out = ours(torch.from_numpy(batch).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert np.abs(out.detach().numpy() - np.asarray(expected)).max() < 1e-5
    for statistic in ("mean", "var"):
        ema = state[f"batchnorm/~/{statistic}_ema"]
        for leaf in ("average", "hidden"):
            np.testing.assert_allclose(getattr(ours, f"{statistic}_{leaf}").numpy(), np.asarray(ema[leaf]).reshape(3),
                                       rtol=1e-5, atol=1e-6)
        assert int(getattr(ours, f"{statistic}_counter")) == int(ema["counter"]) == 4
    ours.eval()
    expected, _ = transformed.apply(params, state, None, batches[0], False)
    out = ours(torch.from_numpy(batches[0]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert np.abs(out.detach().numpy() - np.asarray(expected)).max() < 1e-5


def test_one_sgd_step_equals_jax(golden_language):
    golden, task, learning_rate = golden_language, "language_mlm", 0.5
    inputs = {name: np.asarray(value) for name, value in golden.inputs.items()}
    weights = np.random.default_rng(1).normal(size=golden.outputs["out"].shape).astype(np.float32)
    params = load_haiku_checkpoint(golden.checkpoint).params
    reference = build(task, golden.config)

    def jax_loss(p):
        (logits, _), _ = reference.apply(p, {}, jax.random.PRNGKey(0), **inputs)
        return jnp.mean(logits * weights)

    loss_jax, grads = jax.value_and_grad(jax_loss)(params)
    updated_jax = jax.tree_util.tree_map(lambda p, g: np.asarray(p - learning_rate * g), params, grads)

    model = _load(task, golden).train()
    loss = (model(torch.from_numpy(inputs["inputs"]), torch.from_numpy(inputs["input_mask"])) * torch.from_numpy(weights)).mean()
    loss.backward()
    assert abs(float(loss) - float(loss_jax)) < 1e-5
    without_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert without_grad == [], f"parameters without gradient: {without_grad}"
    torch.optim.SGD(model.parameters(), lr=learning_rate).step()
    updated, _ = export_tree(model.state_dict(), task, golden.config)
    worst = max(
        float(np.abs(updated[module][name] - updated_jax[module][name]).max())
        for module in updated_jax for name in updated_jax[module]
    )
    print(f"one SGD step, PyTorch vs JAX: max abs difference of the updated weights {worst:.2e}")
    assert worst <= 1e-5


def test_fine_tuned_model_exported_to_haiku_runs_the_same(tmp_path):
    golden = Golden("imagenet_conv")
    model = _load(golden.task, golden).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    images = torch.from_numpy(golden.inputs["images"])
    for step in range(3):
        optimiser.zero_grad()
        loss = model(images + 0.1 * step).logsumexp(-1).mean()
        loss.backward()
        optimiser.step()
    batchnorm = model.perceiver.input_preprocessor.convnet[0].batchnorm
    assert int(batchnorm.mean_counter) == 5 + 3  # the golden counter was 5

    path = export_haiku_checkpoint(model.eval(), tmp_path / "tuned.pystate")
    checkpoint = load_haiku_checkpoint(path)
    assert checkpoint.state["image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema"]["counter"] == 8
    (expected, _), _ = build(golden.task, golden.config).apply(
        checkpoint.params, checkpoint.state, jax.random.PRNGKey(0), images=golden.inputs["images"]
    )
    with torch.inference_mode():
        ours = model(images).numpy()
    error = float(np.abs(ours - np.asarray(expected)).max())
    print(f"fine-tuned imagenet_conv exported to Haiku: max abs error {error:.2e}")
    assert error <= 1e-4
    with pytest.raises(FileExistsError):
        export_haiku_checkpoint(model, path)
