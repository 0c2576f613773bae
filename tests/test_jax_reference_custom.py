"""The JAX reference on custom Perceivers of the official building set, over every official module and
option no released model uses: its trees and outputs equal those recorded from a Haiku transcription of
the official modules (`tests/data/custom_reference_trees.json`, `custom_reference_outputs.npz`), eager and
jit agree, the training graph draws dropout and updates BatchNorm, and its layers compute what Haiku's
library layers compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from converters.jax_reference import ReferenceTreeError, build, layers  # noqa: E402
from converters.jax_reference.positions import fourier_features, grid_positions  # noqa: E402
from converters.jax_reference.processors import depth_to_space, space_to_depth  # noqa: E402
from converters.jax_reference.scope import Scope  # noqa: E402
from perceiver_io.configs import FourierPositionEncodingConfig  # noqa: E402
from perceiver_io.errors import ConfigError  # noqa: E402

DATA = Path(__file__).parent / "data"
MODELS = json.loads((DATA / "custom_reference_trees.json").read_text())["models"]
RECORDED = dict(np.load(DATA / "custom_reference_outputs.npz"))
TOLERANCE = 1e-5
"""Largest difference from the recorded outputs (and between eager and jit), relative to the largest
magnitude of the values (at least 1): the same float32 operations, maybe in another order."""


def _recorded(name: str, kind: str) -> dict:
    """The recorded `kind` of model `name`: a tree ('params', 'state', 'train_state') or flat arrays."""
    out: dict = {}
    for key, value in RECORDED.items():
        model, part, *rest = key.split("|")
        if model == name and part == kind:
            if len(rest) == 2:
                out.setdefault(rest[0], {})[rest[1]] = value
            else:
                out[rest[0]] = value
    return out


def _relative_error(ours, expected) -> float:
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - expected))) / max(1.0, float(np.max(np.abs(expected))))


def _leaves(tree) -> list[dict]:
    return sorted([{"module": module, "name": name, "shape": list(leaf.shape)}
                   for module, leaves in tree.items() for name, leaf in leaves.items()],
                  key=lambda leaf: (leaf["module"], leaf["name"]))


@pytest.fixture(scope="module")
def runs():
    """Per model: the recorded params, state and call, and the reference's eager and jit results on them."""
    results = {}
    for name, entry in MODELS.items():
        model = build("perceiver", entry["config"])
        params, state, kwargs = _recorded(name, "params"), _recorded(name, "state"), _recorded(name, "inputs")
        eager, _ = model.apply(params, state, jax.random.PRNGKey(1), **kwargs)
        jitted, _ = jax.jit(model.apply)(params, state, jax.random.PRNGKey(1), **kwargs)
        results[name] = dict(model=model, params=params, state=state, kwargs=kwargs, eager=eager, jit=jitted)
    return results


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_and_stages_equal_the_recorded_ones(runs, name):
    (output, stages), (output_jit, _) = runs[name]["eager"], runs[name]["jit"]
    assert list(output.shape) == MODELS[name]["output_shape"]
    errors = {"out": _relative_error(output, RECORDED[f"{name}|out"]),
              "jit": _relative_error(output_jit, output)}
    recorded = _recorded(name, "stages")
    assert set(recorded) <= set(stages), sorted(set(recorded) - set(stages))
    errors |= {stage: _relative_error(stages[stage], value) for stage, value in recorded.items()}
    print(f"{name}: worst relative error {max(errors.values()):.2e} over {len(errors)} arrays")
    assert max(errors.values()) <= TOLERANCE, errors
    encoder = MODELS[name]["config"]["encoder"]
    steps = encoder["num_blocks"] * encoder["num_self_attends_per_block"]
    np.testing.assert_array_equal(stages[f"encoder_self_attention_{steps - 1}"], stages["z"])
    assert f"encoder_self_attention_{steps}" not in stages


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_makes_the_recorded_trees(runs, name):
    params, state = jax.eval_shape(runs[name]["model"].init, jax.random.PRNGKey(0), **runs[name]["kwargs"])
    assert _leaves(params) == MODELS[name]["params"]
    assert _leaves(state) == MODELS[name]["state"]


def test_training_step_of_batchnorm_equals_the_recorded_one(runs):
    """Batch statistics and Haiku's zero-debiased moving averages, as recorded (dropout 0 here)."""
    name = "image_conv_classification"
    run = runs[name]
    train = build("perceiver", MODELS[name]["config"], is_training=True)
    (output, _), new_state = jax.jit(train.apply)(run["params"], run["state"], jax.random.PRNGKey(1), **run["kwargs"])
    assert _relative_error(output, RECORDED[f"{name}|train_out"]) <= TOLERANCE
    assert _relative_error(output, run["eager"][0]) > 1e-3  # batch statistics, not the moving averages
    recorded = _recorded(name, "train_state")
    assert sorted(new_state) == sorted(recorded)
    for module, leaves in recorded.items():
        for leaf, value in leaves.items():
            assert _relative_error(new_state[module][leaf], value) <= TOLERANCE, (module, leaf)


def test_training_graph_draws_dropout_and_differentiates(runs):
    name = "one_hot_dropout_classification"
    run = runs[name]
    train = build("perceiver", MODELS[name]["config"], is_training=True)

    def loss(params, rng):
        (logits, _), _ = train.apply(params, run["state"], rng, **run["kwargs"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

    step = jax.jit(jax.grad(loss, has_aux=True))
    grads, first = step(run["params"], jax.random.PRNGKey(1))
    _, again = step(run["params"], jax.random.PRNGKey(1))
    _, other = step(run["params"], jax.random.PRNGKey(2))
    np.testing.assert_array_equal(first, again)
    assert _relative_error(first, other) > 1e-3 and _relative_error(first, run["eager"][0]) > 1e-3
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.any(grads["perceiver_encoder/~/trainable_position_encoding"]["pos_embs"] != 0)
    with pytest.raises(ValueError, match="dropout of .* draws random numbers: call the reference with an rng"):
        train.apply(run["params"], run["state"], None, **run["kwargs"])
    (evaluated, _), _ = run["model"].apply(run["params"], run["state"], None, **run["kwargs"])
    np.testing.assert_array_equal(evaluated, run["eager"][0])  # evaluation draws nothing


def test_real_initialisation(runs):
    """ProjectionDecoder's `logits` and the biases start at zero, LayerNorm scales at one, position
    embeddings within two of their standard deviations, Linear weights at the official scale."""
    name = "raw_projection_decoder"
    params, state = jax.jit(runs[name]["model"].init)(jax.random.PRNGKey(0), **runs[name]["kwargs"])
    assert _leaves(params) == MODELS[name]["params"] and not state
    assert not np.any(params["projection_decoder/~/logits"]["w"]) and not np.any(params["projection_decoder/~/logits"]["b"])
    latents = params["perceiver_encoder/~/trainable_position_encoding"]["pos_embs"]
    assert 0 < np.max(np.abs(latents)) <= 2 * 0.02
    query = params["perceiver_encoder/~/cross_attention/attention/linear"]
    assert not np.any(query["b"]) and 0.5 < float(np.std(query["w"])) * math.sqrt(query["w"].shape[0]) < 1.5
    np.testing.assert_array_equal(params["perceiver_encoder/~/cross_attention/layer_norm"]["scale"], 1)


def test_stage_semantics(runs):
    """Decoders, query builders and postprocessors do what the official ones do, checked by hand."""
    output, stages = runs["raw_projection_decoder"]["eager"]
    logits = runs["raw_projection_decoder"]["params"]["projection_decoder/~/logits"]
    np.testing.assert_array_equal(output, stages["decoder_outputs"])
    assert "decoder_query" not in stages
    np.testing.assert_allclose(output, np.mean(stages["z"], 1) @ logits["w"] + logits["b"], atol=TOLERANCE)

    output, stages = runs["raw_masked_queries_patches_postprocessor"]["eager"]
    decoded = np.reshape(stages["decoder_outputs"], (2, 2, 2, 12))
    np.testing.assert_array_equal(output, depth_to_space(decoded, 1, 2))
    np.testing.assert_array_equal(output[:, ::2, ::2], decoded[..., :3])
    # A fully masked query's attention is the bias of linear_3 (docs/official-numerics.md#attention-numerics);
    # without the query residual the decoder then adds the MLP of its layer norm and applies `output`,
    # whatever z is.
    p = {module.removeprefix("basic_decoder/"): leaves
         for module, leaves in runs["raw_masked_queries_patches_postprocessor"]["params"].items()}
    x = np.asarray(p["cross_attention/attention/linear_3"]["b"], np.float64)
    normed = (x - x.mean()) / np.sqrt(x.var() + 1e-5) * p["cross_attention/layer_norm_2"]["scale"] \
        + p["cross_attention/layer_norm_2"]["offset"]
    hidden = np.asarray(jax.nn.gelu(normed @ p["cross_attention/mlp/linear"]["w"] + p["cross_attention/mlp/linear"]["b"]))
    x = x + hidden @ p["cross_attention/mlp/linear_1"]["w"] + p["cross_attention/mlp/linear_1"]["b"]
    np.testing.assert_allclose(stages["decoder_outputs"][1, -1], x @ p["output"]["w"] + p["output"]["b"], atol=TOLERANCE)

    name = "image_pixels_add_conv1x1_postprocessor"
    output, stages = runs[name]["eager"]
    conv = runs[name]["params"]["image_postprocessor/~/conv2_d"]
    decoded = np.reshape(stages["decoder_outputs"], (2, 4, 4, 12))
    np.testing.assert_allclose(output, decoded @ conv["w"][0, 0] + conv["b"], atol=TOLERANCE)
    pixels = runs[name]["kwargs"]["inputs"][:, ::2, ::2]
    np.testing.assert_array_equal(stages["inputs_without_pos"], np.reshape(pixels, (2, 16, 3)))

    _, stages = runs["image_conv1x1_add_upsample2d"]["eager"]
    np.testing.assert_array_equal(stages["decoder_query"][..., :8], stages["inputs_without_pos"])
    features = fourier_features(grid_positions((8, 8)), FourierPositionEncodingConfig(num_bands=2), (8, 8))
    np.testing.assert_allclose(stages["decoder_query"][0, :, 8:], features, atol=TOLERANCE)
    assert features.shape == (64, 2 + 2 * 2 * 2)

    _, stages = runs["audio_subsampled"]["eager"]
    points = np.asarray(MODELS["audio_subsampled"]["call"]["subsampled_points"])
    positions = (-1 + 2 * points / 8).astype(np.float32)[:, None]
    features = fourier_features(positions, FourierPositionEncodingConfig(num_bands=3, max_resolution=(64,)), (8,))
    np.testing.assert_allclose(stages["decoder_query"][1], features, atol=TOLERANCE)

    output, stages = runs["flow"]["eager"]
    np.testing.assert_array_equal(stages["decoder_query"], stages["encoder_inputs"])
    np.testing.assert_array_equal(output, stages["decoder_outputs"])


def _conv_transpose_scatter(x, w, b, strides):
    """A 'SAME' transposed convolution written as scattering: every input pixel adds the flipped kernel
    (w [*k, out, in]) times its value; the full result is cropped by k - 1 - ceil((k + s - 2) / 2) at the
    start to n * s outputs (JAX's padding for s <= k - 1)."""
    kernel = np.flip(w, axis=tuple(range(x.ndim - 2)))
    k = w.shape[0]
    full = np.zeros((x.shape[0],) + tuple((n - 1) * s + k for n, s in zip(x.shape[1:-1], strides)) + (w.shape[-2],))
    for index in np.ndindex(*x.shape[1:-1]):
        window = tuple(slice(i * s, i * s + k) for i, s in zip(index, strides))
        full[(slice(None),) + window] += np.einsum("bi,...oi->b...o", x[(slice(None),) + index], kernel)
    crop = tuple(slice(k - 1 - math.ceil((k + s - 2) / 2), k - 1 - math.ceil((k + s - 2) / 2) + n * s)
                 for n, s in zip(x.shape[1:-1], strides))
    return full[(slice(None),) + crop] + b


@pytest.mark.parametrize("shape, strides", [((2, 3, 5, 4), (2, 2)), ((1, 2, 3, 3, 4), (2, 2, 2)),
                                            ((1, 2, 3, 3, 4), (1, 2, 2))])
def test_transposed_convolution_matches_the_scatter_formula(shape, strides):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    scope = Scope({}, {}, jax.random.PRNGKey(0), training=False, creating=True)
    layers.conv_transpose(scope, "up", x, 3, (4,) * len(strides), strides)  # makes the leaves
    leaves = {name: np.asarray(value) for name, value in scope.params["up"].items()}
    leaves["b"] = np.random.default_rng(2).normal(size=3).astype(np.float32)
    out = layers.conv_transpose(Scope({"up": leaves}, {}, None, training=False), "up", x, 3, (4,) * len(strides), strides)
    expected = _conv_transpose_scatter(x, leaves["w"], leaves["b"], strides)
    assert out.shape == expected.shape == (shape[0], *(n * s for n, s in zip(shape[1:-1], strides)), 3)
    assert _relative_error(out, expected) <= TOLERANCE


def test_space_to_depth_inverts():
    images = np.random.default_rng(2).normal(size=(2, 8, 12, 3))
    video = np.random.default_rng(3).normal(size=(2, 4, 8, 12, 3))
    for frames, temporal in ((images, 1), (video, 2)):
        patches = space_to_depth(frames, temporal, 4)
        assert patches.shape[-1] == temporal * 4 * 4 * 3
        np.testing.assert_array_equal(depth_to_space(patches, temporal, 4), frames)
    # channels (dh, dw, c): the pixel at (1, 2) of the first block is channel (1 * 4 + 2) * 3
    np.testing.assert_array_equal(space_to_depth(images, 1, 4)[:, 0, 0, 18:21], images[:, 1, 2])


def test_a_tree_that_does_not_fit_the_configuration_is_named(runs):
    run = runs["raw_projection_decoder"]
    params = {module: dict(leaves) for module, leaves in run["params"].items()}
    del params["perceiver_encoder/~/cross_attention/layer_norm_2"]["offset"]
    with pytest.raises(ReferenceTreeError, match="no leaf perceiver_encoder/~/cross_attention/layer_norm_2/offset"):
        run["model"].apply(params, {}, None, **run["kwargs"])
    params = {module: dict(leaves) for module, leaves in run["params"].items()}
    params["projection_decoder/~/logits"]["w"] = np.zeros((3, 5), np.float32)
    with pytest.raises(ReferenceTreeError, match=r"projection_decoder/~/logits/w has shape \[3, 5\], but the "
                       r"configuration reads \[16, 5\]"):
        run["model"].apply(params, {}, None, **run["kwargs"])


def test_refused_calls_and_configurations(runs):
    run = runs["raw_projection_decoder"]
    with pytest.raises(ValueError, match=r"inputs: expected shape \[B, 12, 6\]"):
        run["model"].apply(run["params"], {}, None, inputs=run["kwargs"]["inputs"][:, :6])
    config = MODELS["raw_projection_decoder"]["config"]
    with pytest.raises(ConfigError, match="decoder"):
        build("perceiver", config | {"decoder": {"type": "multimodal"}})
    with pytest.raises(ConfigError, match="raft"):
        build("perceiver", config | {"output_postprocessor": {"type": "image", "postproc_type": "raft"}})


def test_layers_initialise_as_haikus_library_layers():
    """Default weights of Linear, the convolutions (whose fan-in counts kernel and input channels, the
    transposed ones' included) and Embed have the spread of dm-haiku's: the same bound, stds within 6%."""
    hk = pytest.importorskip("haiku")
    x = np.zeros((1, 8, 8, 48), np.float32)
    cases = {
        "linear": (lambda s: layers.linear(s, "m", x, 64), lambda: hk.Linear(64, name="m")(x)),
        "conv2d": (lambda s: layers.conv2d(s, "m", x, 64, 7, 2), lambda: hk.Conv2D(64, 7, 2, name="m")(x)),
        "conv2d_transpose": (lambda s: layers.conv_transpose(s, "m", x, 32, (4, 4), (2, 2)),
                             lambda: hk.Conv2DTranspose(32, 4, 2, name="m")(x)),
        "conv3d_transpose": (lambda s: layers.conv_transpose(s, "m", x[:, None], 16, (2, 4, 4), (1, 4, 4)),
                             lambda: hk.Conv3DTranspose(16, (2, 4, 4), (1, 4, 4), name="m")(x[:, None])),
        "embed": (lambda s: layers.embed(s, "m", np.zeros(1, np.int32), 300, 40)[0],
                  lambda: hk.Embed(300, 40, name="m")(np.zeros(1, np.int32))),
    }
    for case, (mine, theirs) in cases.items():
        scope = Scope({}, {}, jax.random.PRNGKey(1), training=False, creating=True)
        mine(scope)
        expected = hk.transform(theirs).init(jax.random.PRNGKey(2))["m"]
        weights = next(name for name in ("w", "embeddings") if name in expected)
        ours, official = np.asarray(scope.params["m"][weights]), np.asarray(expected[weights])
        assert ours.shape == official.shape, case
        assert 0.94 < np.std(ours) / np.std(official) < 1.06, case
        assert np.max(np.abs(ours)) <= np.max(np.abs(official)) * 1.03, case


def test_layers_compute_what_haikus_library_layers_compute():
    """Linear, LayerNorm, Conv2D, max_pool, the transposed convolutions, Embed and BatchNorm (a training step
    with its moving averages, then evaluation) against dm-haiku's own modules on the same leaves."""
    hk = pytest.importorskip("haiku")
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, (2, 9, 11, 3)).astype(np.float32)
    video = rng.normal(size=(1, 2, 3, 5, 4)).astype(np.float32)

    def ours(fn, x, training=False, params=None, state=None):
        scope = Scope(params or {}, state or {}, jax.random.PRNGKey(0), training=training, creating=params is None)
        return fn(scope, x), scope

    cases = {
        "linear": (lambda s, x: layers.linear(s, "m", x, 5), lambda x: hk.Linear(5, name="m")(x), images),
        "layer_norm": (lambda s, x: layers.layer_norm(s, "m", x),
                       lambda x: hk.LayerNorm(-1, True, True, eps=1e-5, name="m")(x), images),
        "conv2d": (lambda s, x: layers.conv2d(s, "m", x, 4, 7, 2, with_bias=False),
                   lambda x: hk.Conv2D(4, 7, 2, padding="SAME", with_bias=False, name="m")(x), images),
        "conv1x1": (lambda s, x: layers.conv2d(s, "m", x, 4, 1, 2), lambda x: hk.Conv2D(4, 1, 2, name="m")(x), images),
        "max_pool": (lambda s, x: layers.max_pool_same(x, 3, 2),
                     lambda x: hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"), images),
        "conv2d_transpose": (lambda s, x: layers.conv_transpose(s, "m", x, 6, (4, 4), (2, 2)),
                             lambda x: hk.Conv2DTranspose(6, 4, 2, name="m")(x), images),
        "conv3d_transpose": (lambda s, x: layers.conv_transpose(s, "m", x, 2, (4, 4, 4), (1, 2, 2)),
                             lambda x: hk.Conv3DTranspose(2, 4, (1, 2, 2), name="m")(x), video),
        "embed": (lambda s, x: layers.embed(s, "m", x, 7, 3)[0], lambda x: hk.Embed(7, 3, name="m")(x),
                  np.array([[0, 6, 3]], np.int32)),
    }
    for case, (mine, theirs, x) in cases.items():
        transformed = hk.transform(theirs)
        _, scope = ours(mine, x)
        params = {m: {k: rng.normal(size=v.shape).astype(np.float32) for k, v in leaves.items()}
                  for m, leaves in scope.params.items()}
        assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, transformed.init(jax.random.PRNGKey(0), x)), case
        expected = transformed.apply(params, None, x)
        got, _ = ours(mine, x, params=params)
        assert _relative_error(got, expected) <= TOLERANCE, case

    batch_norm = hk.transform_with_state(lambda x, training: hk.BatchNorm(True, True, 0.9, eps=1e-5, name="m")(x, training))
    params, state = batch_norm.init(jax.random.PRNGKey(0), images, True)
    params = {"m": {"scale": rng.normal(1, 0.2, (1, 1, 1, 3)).astype(np.float32),
                    "offset": rng.normal(0, 0.1, (1, 1, 1, 3)).astype(np.float32)}}
    mine = {module: dict(leaves) for module, leaves in state.items()}
    for step in range(3):
        batch = images + step
        expected, state = batch_norm.apply(params, state, None, batch, True)
        got, scope = ours(lambda s, x: layers.batch_norm(s, "m", x), batch, True, params, mine)
        mine = scope.state
        assert _relative_error(got, expected) <= TOLERANCE
        for module, leaves in state.items():
            for leaf, value in leaves.items():
                assert _relative_error(mine[module][leaf], value) <= TOLERANCE, (step, module, leaf)
    expected, _ = batch_norm.apply(params, state, None, images, False)
    got, _ = ours(lambda s, x: layers.batch_norm(s, "m", x), images, False, params, mine)
    assert _relative_error(got, expected) <= TOLERANCE
