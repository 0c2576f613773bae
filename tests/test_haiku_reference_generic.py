"""The Haiku reference's generic builder, `tasks.build('perceiver', config)`, over every official
module and option that no released model uses: output shapes follow the official semantics, eager
and jit agree, the training graph draws dropout and updates BatchNorm, and the parameter trees
equal the fixture `tests/data/generic_reference_trees.json` (configs, calls and leaf lists) that the
PyTorch conversion rules are checked against. Regenerate the fixture with
`python3 -m tests.test_haiku_reference_generic` after a deliberate change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
hk = pytest.importorskip("haiku")
import jax.numpy as jnp  # noqa: E402

from converters.haiku_reference import (  # noqa: E402
    io_processors, perceiver, position_encoding, tasks)

FIXTURE = Path(__file__).parent / "data" / "generic_reference_trees.json"
BATCH = 2
EAGER_VS_JIT = 1e-5
"""Largest eager-vs-jit difference allowed, relative to the output's largest magnitude."""
EXACT = 1e-5
"""Tolerance of the hand-written checks of one stage (same float32 ops in a different order)."""


def _encoder(**options):
    return dict(num_self_attends_per_block=1, num_blocks=2, z_index_dim=4, num_z_channels=16,
                num_cross_attend_heads=1, num_self_attend_heads=2) | options


def _fourier(num_bands, **options):
    return dict(num_bands=num_bands, concat_pos=True, sine_only=False) | options


MODELS = {
    # conv preprocessor (BatchNorm), projected Fourier positions, encoder 'q' shapes and widening 2,
    # classification decoder with trainable queries.
    "image_conv_classification": dict(
        config=dict(
            input_shape=[16, 16, 3],
            input_preprocessor=dict(
                type="image", prep_type="conv", spatial_downsample=4, num_channels=8,
                position_encoding_type="fourier", project_pos_dim=12,
                fourier_position_encoding_kwargs=_fourier(3, max_resolution=[4, 4])),
            encoder=_encoder(cross_attention_shape_for_attn="q", cross_attend_widening_factor=2,
                             self_attend_widening_factor=2),
            decoder=dict(type="classification", num_classes=10, num_heads=2,
                         use_query_residual=True, position_encoding_type="trainable",
                         trainable_position_encoding_kwargs=dict(num_channels=16, init_scale=0.02)),
            output_postprocessor=None),
        output_shape=[BATCH, 10]),
    # conv1x1 preprocessor, trainable positions added after 2 extra position MLPs, explicit qk/v
    # channels, Fourier decoder queries with the preprocessed input concatenated, Conv2DUpsample.
    "image_conv1x1_add_upsample2d": dict(
        config=dict(
            input_shape=[16, 16, 3],
            input_preprocessor=dict(
                type="image", prep_type="conv1x1", spatial_downsample=2, num_channels=8,
                position_encoding_type="trainable", concat_or_add_pos="add", n_extra_pos_mlp=2,
                trainable_position_encoding_kwargs=dict(num_channels=8, init_scale=0.02)),
            encoder=_encoder(qk_channels=8, v_channels=16),
            decoder=dict(type="basic", output_num_channels=6, output_index_dims=[8, 8],
                         position_encoding_type="fourier", concat_preprocessed_input=True,
                         qk_channels=8, v_channels=8,
                         fourier_position_encoding_kwargs=_fourier(2)),
            output_postprocessor=dict(type="image", postproc_type="conv", n_outputs=3,
                                      input_reshape_size=[8, 8])),
        output_shape=[BATCH, 32, 32, 3]),
    # patches with patches_linear, sine-only Fourier positions without raw positions concatenated,
    # subsampled and projected Fourier decoder queries, projection postprocessor.
    "image_patches_subsampled_queries": dict(
        config=dict(
            input_shape=[16, 16, 3],
            input_preprocessor=dict(
                type="image", prep_type="patches", spatial_downsample=4, conv_after_patching=True,
                num_channels=8, position_encoding_type="fourier",
                fourier_position_encoding_kwargs=_fourier(2, sine_only=True, concat_pos=False)),
            encoder=_encoder(),
            decoder=dict(type="basic", output_num_channels=5, output_index_dims=[16, 16],
                         subsampled_index_dims=32, position_encoding_type="fourier",
                         project_pos_dim=8,
                         fourier_position_encoding_kwargs=_fourier(3, max_resolution=[8, 8])),
            output_postprocessor=dict(type="projection", num_outputs=3)),
        subsampled_points=list(range(0, 256, 8)),
        output_shape=[BATCH, 32, 3]),
    # strided pixels plus projected Fourier positions added, trainable queries, 1x1 conv
    # postprocessor.
    "image_pixels_add_conv1x1_postprocessor": dict(
        config=dict(
            input_shape=[8, 8, 3],
            input_preprocessor=dict(
                type="image", prep_type="pixels", spatial_downsample=2,
                position_encoding_type="fourier", project_pos_dim=3, concat_or_add_pos="add",
                fourier_position_encoding_kwargs=_fourier(2)),
            encoder=_encoder(),
            decoder=dict(type="basic", output_num_channels=12, output_index_dims=[4, 4],
                         num_heads=2, use_query_residual=True, position_encoding_type="trainable",
                         trainable_position_encoding_kwargs=dict(num_channels=8, init_scale=0.02)),
            output_postprocessor=dict(type="image", postproc_type="conv1x1", n_outputs=3,
                                      input_reshape_size=[4, 4])),
        output_shape=[BATCH, 4, 4, 3]),
    # video patches in time and space, 3-D Fourier queries, Conv3DUpsample (2x time, 4x space).
    "video_patches_upsample3d": dict(
        config=dict(
            input_shape=[4, 8, 8, 3],
            input_preprocessor=dict(type="image", prep_type="patches", temporal_downsample=2,
                                    spatial_downsample=4, position_encoding_type="fourier",
                                    fourier_position_encoding_kwargs=_fourier(2)),
            encoder=_encoder(),
            decoder=dict(type="basic", output_num_channels=8, output_index_dims=[2, 2, 2],
                         position_encoding_type="fourier",
                         fourier_position_encoding_kwargs=_fourier(2)),
            output_postprocessor=dict(type="image", postproc_type="conv", n_outputs=3,
                                      temporal_upsample=2, spatial_upsample=4,
                                      input_reshape_size=[2, 2, 2])),
        output_shape=[BATCH, 4, 8, 8, 3]),
    # conv preprocessor without BatchNorm over frames, Conv2DUpsample over frames (BatchApply).
    "video_conv_upsample2d_per_frame": dict(
        config=dict(
            input_shape=[2, 16, 16, 3],
            input_preprocessor=dict(type="image", prep_type="conv", spatial_downsample=4,
                                    num_channels=8, conv2d_use_batchnorm=False,
                                    position_encoding_type="fourier",
                                    fourier_position_encoding_kwargs=_fourier(2)),
            encoder=_encoder(),
            decoder=dict(type="basic", output_num_channels=4, output_index_dims=[2, 4, 4],
                         position_encoding_type="fourier",
                         fourier_position_encoding_kwargs=_fourier(2)),
            output_postprocessor=dict(type="image", postproc_type="conv", n_outputs=3,
                                      input_reshape_size=[2, 4, 4])),
        output_shape=[BATCH, 2, 16, 16, 3]),
    # audio patches with one extra position MLP, subsampled 1-D Fourier queries, audio
    # postprocessor.
    "audio_subsampled": dict(
        config=dict(
            input_shape=[64, 1],
            input_preprocessor=dict(
                type="audio", samples_per_patch=8, n_extra_pos_mlp=1,
                position_encoding_type="fourier",
                fourier_position_encoding_kwargs=_fourier(3, max_resolution=[64])),
            encoder=_encoder(),
            decoder=dict(type="basic", output_num_channels=6, output_index_dims=[8],
                         position_encoding_type="fourier",
                         fourier_position_encoding_kwargs=_fourier(3, max_resolution=[64])),
            output_postprocessor=dict(type="audio", samples_per_patch=8)),
        subsampled_points=[1, 3, 6],
        output_shape=[BATCH, 24]),
    # raw features (no preprocessor) with an input mask, projection decoder, identity postprocessor.
    "raw_projection_decoder": dict(
        config=dict(
            input_shape=[12, 6],
            input_preprocessor=None,
            encoder=_encoder(),
            decoder=dict(type="projection", num_classes=5, final_avg_before_project=True),
            output_postprocessor=dict(type="identity")),
        input_mask=True,
        output_shape=[BATCH, 5]),
    # raw features, a named encoder without query residual, masked trainable queries, 'patches'
    # postprocessing (reverse_space_to_depth).
    "raw_masked_queries_patches_postprocessor": dict(
        config=dict(
            input_shape=[12, 6],
            input_preprocessor=None,
            encoder=_encoder(name="encoder", use_query_residual=False),
            decoder=dict(type="basic", output_num_channels=12, output_index_dims=[2, 2],
                         position_encoding_type="trainable",
                         trainable_position_encoding_kwargs=dict(num_channels=8, init_scale=0.02)),
            output_postprocessor=dict(type="image", postproc_type="patches", spatial_upsample=2,
                                      input_reshape_size=[2, 2])),
        query_mask=True,
        output_shape=[BATCH, 4, 4, 3]),
    # frame pairs merged on channels as the flow colab does, the queries are the inputs ('none');
    # 'pixels' postprocessing (nothing to do).
    "flow": dict(
        config=dict(
            input_shape=[2, 8, 8, 27],
            input_preprocessor=dict(type="image", prep_type="patches", spatial_downsample=1,
                                    temporal_downsample=2, conv_after_patching=True,
                                    num_channels=16, position_encoding_type="fourier",
                                    fourier_position_encoding_kwargs=_fourier(2)),
            encoder=_encoder(),
            decoder=dict(type="flow", output_image_shape=[8, 8], output_num_channels=2,
                         rescale_factor=100.0, use_query_residual=False,
                         position_encoding_type="none"),
            output_postprocessor=dict(type="image", postproc_type="pixels")),
        output_shape=[BATCH, 8, 8, 2]),
    # one-hot input, encoder dropout (for the training test), classification postprocessor.
    "one_hot_dropout_classification": dict(
        config=dict(
            input_shape=[10],
            input_preprocessor=dict(type="one_hot"),
            encoder=_encoder(dropout_prob=0.2),
            decoder=dict(type="basic", output_num_channels=8, output_index_dims=[1],
                         position_encoding_type="trainable",
                         trainable_position_encoding_kwargs=dict(num_channels=8, init_scale=0.02)),
            output_postprocessor=dict(type="classification", num_classes=7)),
        output_shape=[BATCH, 7]),
}


def _call(name):
    """The keyword arguments of the model's apply: inputs, masks and subsampled points."""
    spec = MODELS[name]
    config = spec["config"]
    rng = np.random.RandomState(0)
    kwargs = {"inputs": rng.randn(BATCH, *config["input_shape"]).astype(np.float32)}
    if spec.get("input_mask"):
        mask = np.ones((BATCH, config["input_shape"][0]), np.int32)
        mask[0, -3:] = 0
        kwargs["input_mask"] = mask
    if spec.get("query_mask"):
        mask = np.ones((BATCH, int(np.prod(config["decoder"]["output_index_dims"]))), np.int32)
        mask[1, -1] = 0
        kwargs["query_mask"] = mask
    if spec.get("subsampled_points") is not None:
        kwargs["subsampled_points"] = np.asarray(spec["subsampled_points"], np.int32)
    return kwargs


def _leaves(tree):
    return sorted([{"module": module, "name": name, "shape": list(leaf.shape)}
                   for module, leaves in tree.items() for name, leaf in leaves.items()],
                  key=lambda leaf: (leaf["module"], leaf["name"]))


def _fixture_entry(name):
    spec = MODELS[name]
    params, state = jax.eval_shape(
        lambda rng, kwargs: tasks.build(tasks.GENERIC, spec["config"]).init(rng, **kwargs),
        jax.random.PRNGKey(0), _call(name))
    call = {"batch_size": BATCH, "input_mask": bool(spec.get("input_mask")),
            "query_mask": bool(spec.get("query_mask")),
            "subsampled_points": spec.get("subsampled_points")}
    return {"config": spec["config"], "call": call, "output_shape": spec["output_shape"],
            "params": _leaves(params), "state": _leaves(state)}


def _fixture():
    return {
        "description": "Parameter and state trees of custom Perceivers built by the Haiku "
                       "reference (converters.haiku_reference.tasks.build('perceiver', config)): "
                       "module path, leaf name and shape of every leaf, with the config and the "
                       "call (batch size, masks, subsampled points) that produced them. Generated "
                       "by python3 -m tests.test_haiku_reference_generic.",
        "models": {name: _fixture_entry(name) for name in MODELS},
    }


def _random_like(tree, seed):
    """Random values in the shapes of an (abstract) init, without compiling the initialisers:
    weights ~ N(0, 1/fan_in), LayerNorm/BatchNorm scales and variances ~ 1 + |N(0, 0.1)|, other
    leaves (biases, offsets, position embeddings, means) ~ N(0, 0.1^2), so that zero-initialised
    weights and biases take part too. Integer leaves (BatchNorm counters) are zero."""
    rng = np.random.RandomState(seed)

    def fill(module, name, leaf):
        if not np.issubdtype(leaf.dtype, np.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        if name == "w":
            return (rng.randn(*leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name == "scale" or module.endswith("var_ema"):
            return (1 + np.abs(0.1 * rng.randn(*leaf.shape))).astype(np.float32)
        return (0.1 * rng.randn(*leaf.shape)).astype(np.float32)

    return {module: {name: fill(module, name, leaf) for name, leaf in leaves.items()}
            for module, leaves in tree.items()}


@pytest.fixture(scope="module")
def runs():
    """Per model: random params and state in the shapes of its init (traced by `jax.eval_shape`,
    compiling XLA initialisers for every model would take minutes on CPU), the eager and jit outputs
    and intermediates, and the jitted apply."""
    results = {}
    for seed, (name, spec) in enumerate(MODELS.items()):
        model = tasks.build(tasks.GENERIC, spec["config"])
        kwargs = _call(name)
        params, state = (_random_like(tree, seed) for tree in jax.eval_shape(
            model.init, jax.random.PRNGKey(0), **kwargs))
        eager, _ = model.apply(params, state, jax.random.PRNGKey(1), **kwargs)
        apply = jax.jit(model.apply)
        jitted, _ = apply(params, state, jax.random.PRNGKey(1), **kwargs)
        results[name] = dict(params=params, state=state, kwargs=kwargs, eager=eager, jit=jitted,
                             apply=apply)
    return results


def _error(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _relative_error(ours, expected):
    """Largest difference relative to the expected values' largest magnitude (at least 1)."""
    return _error(ours, expected) / max(1.0, float(np.max(np.abs(expected))))


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shape_and_jit(runs, name):
    run = runs[name]
    (output, intermediates), (output_jit, _) = run["eager"], run["jit"]
    assert list(output.shape) == MODELS[name]["output_shape"], (name, output.shape)
    assert np.all(np.isfinite(output))
    error = _relative_error(output_jit, output)
    print(f"{name}: eager vs jit relative error {error:.3g}")
    assert error <= EAGER_VS_JIT, error
    config = MODELS[name]["config"]["encoder"]
    steps = config["num_blocks"] * config["num_self_attends_per_block"]
    np.testing.assert_array_equal(intermediates[f"encoder_self_attention_{steps - 1}"],
                                  intermediates["z"])


def test_parameter_trees_match_fixture():
    expected = json.loads(FIXTURE.read_text())
    found = json.loads(json.dumps(_fixture()))
    assert sorted(found["models"]) == sorted(expected["models"])
    for name, entry in found["models"].items():
        assert entry == expected["models"][name], \
            f"{name}: tree differs from {FIXTURE.name}; regenerate if the change is deliberate"


def test_new_module_paths(runs):
    """The official Haiku paths and shapes of the modules no released model uses."""
    def shapes(name):
        return {(module, leaf): tuple(value.shape)
                for module, leaves in runs[name]["params"].items()
                for leaf, value in leaves.items()}

    up2d = shapes("image_conv1x1_add_upsample2d")
    assert up2d[("image_postprocessor/~/conv2_d_upsample/~/transp_conv_1", "w")] == (4, 4, 6, 6)
    assert up2d[("image_postprocessor/~/conv2_d_upsample/~/transp_conv_2", "w")] == (4, 4, 3, 6)
    assert up2d[("image_postprocessor/~/conv2_d_upsample/~/transp_conv_2", "b")] == (3,)
    assert up2d[("image_preprocessor/~/conv2_d", "w")] == (1, 1, 3, 8)
    for module in ["linear", "linear_1"]:
        assert up2d[(f"image_preprocessor/~_build_network_inputs/{module}", "w")] == (8, 8)
    assert up2d[("image_preprocessor/~_build_network_inputs/trainable_position_encoding",
                 "pos_embs")] == (64, 8)
    up3d = shapes("video_patches_upsample3d")
    prefix = "image_postprocessor/~/conv3_d_upsample/conv3d_transpose"
    assert up3d[(f"{prefix}_0", "w")] == (4, 4, 4, 6, 8)
    assert up3d[(f"{prefix}_1", "w")] == (4, 4, 4, 3, 6)
    assert shapes("image_pixels_add_conv1x1_postprocessor")[
        ("image_postprocessor/~/conv2_d", "w")] == (1, 1, 12, 3)
    assert shapes("raw_projection_decoder")[("projection_decoder/~/logits", "w")] == (16, 5)
    assert shapes("audio_subsampled")[("audio_preprocessor/~_build_network_inputs/linear", "w")] \
        == (7, 7)
    assert shapes("image_conv_classification")[
        ("image_preprocessor/~_build_network_inputs/position_encoding_projector/linear", "w")] \
        == (2 + 2 * 2 * 3, 12)
    assert shapes("image_patches_subsampled_queries")[
        ("basic_decoder/~/position_encoding_projector/linear", "w")] == (2 + 2 * 2 * 3, 8)
    assert ("encoder/~/trainable_position_encoding", "pos_embs") \
        in shapes("raw_masked_queries_patches_postprocessor")
    assert not any(module.startswith("flow_decoder/~/basic_decoder/~/")
                   for module, _ in shapes("flow"))


def _conv_transpose_scatter(x, w, b, strides):
    """`hk.ConvNDTranspose` 'SAME' written as PyTorch computes `conv_transpose` (every input pixel
    scatters the flipped kernel, w [*k, out, in]), then cropped by k - 1 - pad_lo with lax's
    pad_lo = ceil((k + s - 2) / 2) (for s <= k - 1) to n * s outputs."""
    spatial = x.ndim - 2
    kernel = np.flip(w, axis=tuple(range(spatial)))
    k = w.shape[0]
    full = np.zeros((x.shape[0],) + tuple((n - 1) * s + k for n, s in zip(x.shape[1:-1], strides))
                    + (w.shape[-2],))
    for index in np.ndindex(*x.shape[1:-1]):
        window = tuple(slice(i * s, i * s + k) for i, s in zip(index, strides))
        full[(slice(None),) + window] += np.einsum("bi,...oi->b...o", x[(slice(None),) + index],
                                                    kernel)
    crop = tuple(slice(k - 1 - int(np.ceil((k + s - 2) / 2)),
                       k - 1 - int(np.ceil((k + s - 2) / 2)) + n * s)
                 for n, s in zip(x.shape[1:-1], strides))
    return full[(slice(None),) + crop] + b


def test_transposed_convolutions_match_scatter_formula():
    rng = np.random.RandomState(1)
    image = rng.randn(2, 3, 5, 4).astype(np.float32)
    up2d = hk.transform(lambda x: io_processors.Conv2DUpsample(n_outputs=3)(x, is_training=False))
    params = _random_like(jax.eval_shape(up2d.init, jax.random.PRNGKey(0), image), 1)
    out = up2d.apply(params, None, image)
    first, second = (params[f"conv2_d_upsample/~/transp_conv_{i}"] for i in (1, 2))
    hidden = np.maximum(_conv_transpose_scatter(image, first["w"], first["b"], (2, 2)), 0)
    expected = _conv_transpose_scatter(hidden, second["w"], second["b"], (2, 2))
    assert out.shape == (2, 12, 20, 3)
    assert _relative_error(out, expected) <= EXACT, _relative_error(out, expected)

    video = rng.randn(1, 2, 3, 3, 4).astype(np.float32)
    up3d = hk.transform(lambda x: io_processors.Conv3DUpsample(
        n_outputs=2, n_time_upsamples=1, n_space_upsamples=2)(x, is_training=False))
    params = _random_like(jax.eval_shape(up3d.init, jax.random.PRNGKey(0), video), 2)
    out = up3d.apply(params, None, video)
    first, second = (params[f"conv3_d_upsample/conv3d_transpose_{i}"] for i in (0, 1))
    hidden = np.maximum(_conv_transpose_scatter(video, first["w"], first["b"], (2, 2, 2)), 0)
    expected = _conv_transpose_scatter(hidden, second["w"], second["b"], (1, 2, 2))
    assert out.shape == (1, 4, 12, 12, 2)
    assert _relative_error(out, expected) <= EXACT, _relative_error(out, expected)


def test_reverse_space_to_depth_inverts_space_to_depth():
    images = jnp.asarray(np.random.RandomState(2).randn(2, 8, 12, 3))
    video = jnp.asarray(np.random.RandomState(3).randn(2, 4, 8, 12, 3))
    for frames, temporal in ((images, 1), (video, 2)):
        patches = io_processors.space_to_depth(frames, temporal, 4)
        np.testing.assert_array_equal(
            io_processors.reverse_space_to_depth(patches, temporal, 4), frames)


def test_stage_semantics(runs):
    """Decoders, query builders and postprocessors do what the official code does."""
    output, stages = runs["raw_projection_decoder"]["eager"]
    params = runs["raw_projection_decoder"]["params"]["projection_decoder/~/logits"]
    np.testing.assert_array_equal(output, stages["decoder_outputs"])
    assert "decoder_query" not in stages
    np.testing.assert_allclose(output, np.mean(stages["z"], 1) @ params["w"] + params["b"],
                               atol=EXACT)

    output, stages = runs["raw_masked_queries_patches_postprocessor"]["eager"]
    decoded = np.reshape(stages["decoder_outputs"], (BATCH, 2, 2, 12))
    np.testing.assert_array_equal(output, io_processors.reverse_space_to_depth(decoded, 1, 2))
    np.testing.assert_array_equal(output[:, ::2, ::2], decoded[..., :3])
    # A fully masked query's attention is the bias of linear_3 (NOTES §2); without query residual
    # the decoder then adds the MLP of its layer norm and applies `output`, whatever z is.
    p = {module.removeprefix("basic_decoder/"): leaves
         for module, leaves in runs["raw_masked_queries_patches_postprocessor"]["params"].items()}
    x = np.asarray(p["cross_attention/attention/linear_3"]["b"], np.float64)
    normed = (x - x.mean()) / np.sqrt(x.var() + 1e-5) * p["cross_attention/layer_norm_2"]["scale"] \
        + p["cross_attention/layer_norm_2"]["offset"]
    hidden = np.asarray(jax.nn.gelu(normed @ p["cross_attention/mlp/linear"]["w"]
                                    + p["cross_attention/mlp/linear"]["b"]))
    x = x + hidden @ p["cross_attention/mlp/linear_1"]["w"] + p["cross_attention/mlp/linear_1"]["b"]
    np.testing.assert_allclose(stages["decoder_outputs"][1, -1],
                               x @ p["output"]["w"] + p["output"]["b"], atol=EXACT)

    name = "image_pixels_add_conv1x1_postprocessor"
    output, stages = runs[name]["eager"]
    conv = runs[name]["params"]["image_postprocessor/~/conv2_d"]
    decoded = np.reshape(stages["decoder_outputs"], (BATCH, 4, 4, 12))
    np.testing.assert_allclose(output, decoded @ conv["w"][0, 0] + conv["b"], atol=EXACT)
    pixels = runs[name]["kwargs"]["inputs"][:, ::2, ::2]
    np.testing.assert_array_equal(stages["inputs_without_pos"], np.reshape(pixels, (BATCH, 16, 3)))
    assert stages["encoder_inputs"].shape == (BATCH, 16, 3)

    _, stages = runs["image_conv1x1_add_upsample2d"]["eager"]
    np.testing.assert_array_equal(stages["decoder_query"][..., :8], stages["inputs_without_pos"])
    features = position_encoding.generate_fourier_features(
        np.reshape(position_encoding.build_linear_positions((8, 8)), (64, 2)), num_bands=2,
        max_resolution=(8, 8))
    np.testing.assert_allclose(stages["decoder_query"][0, :, 8:], features, atol=EXACT)

    _, stages = runs["audio_subsampled"]["eager"]
    points = np.asarray(MODELS["audio_subsampled"]["subsampled_points"])
    positions = (-1 + 2 * points / 8).astype(np.float32)[:, None]
    features = position_encoding.generate_fourier_features(positions, num_bands=3,
                                                           max_resolution=(64,))
    np.testing.assert_allclose(stages["decoder_query"][1], features, atol=EXACT)
    assert stages["encoder_inputs"].shape == (BATCH, 8, 8 + 1 + 2 * 3)

    _, stages = runs["image_patches_subsampled_queries"]["eager"]
    assert stages["encoder_inputs"].shape == (BATCH, 16, 8 + 2 * 2)
    assert stages["decoder_query"].shape == (BATCH, 32, 8)

    output, stages = runs["flow"]["eager"]
    np.testing.assert_array_equal(stages["decoder_query"], stages["encoder_inputs"])
    np.testing.assert_array_equal(output, stages["decoder_outputs"])
    assert stages["encoder_inputs"].shape == (BATCH, 64, 16 + 2 + 2 * 2 * 2)


def test_training_graph_draws_dropout_and_updates_batchnorm(runs):
    """`build(..., is_training=True)`: dropout from apply's rng, BatchNorm on batch statistics with
    its EMA state returned updated, gradients through it all."""
    name = "one_hot_dropout_classification"
    run, kwargs = runs[name], runs[name]["kwargs"]
    train = tasks.build(tasks.GENERIC, MODELS[name]["config"], is_training=True)

    def loss(params, rng):
        (logits, _), _ = train.apply(params, run["state"], rng, **kwargs)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

    step = jax.jit(jax.grad(loss, has_aux=True))
    grads, first = step(run["params"], jax.random.PRNGKey(1))
    _, again = step(run["params"], jax.random.PRNGKey(1))
    _, other = step(run["params"], jax.random.PRNGKey(2))
    (plain_other, _), _ = run["apply"](run["params"], run["state"], jax.random.PRNGKey(2), **kwargs)
    np.testing.assert_array_equal(first, again)
    assert _error(first, other) > 1e-3 and _error(first, run["jit"][0]) > 1e-3
    np.testing.assert_array_equal(run["jit"][0], plain_other)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.any(grads["perceiver_encoder/~/trainable_position_encoding"]["pos_embs"] != 0)

    name = "image_conv_classification"
    run = runs[name]
    train = tasks.build(tasks.GENERIC, MODELS[name]["config"], is_training=True)
    (output, _), new_state = jax.jit(train.apply)(run["params"], run["state"],
                                                  jax.random.PRNGKey(1), **run["kwargs"])
    assert _error(output, run["jit"][0]) > 1e-3  # batch statistics, not the EMA averages
    ema = "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema"
    assert _error(new_state[ema]["average"], run["state"][ema]["average"]) > 0
    assert int(new_state[ema]["counter"]) == int(run["state"][ema]["counter"]) + 1


def test_real_initialisation(runs):
    """The official initialisers run (the other tests use random values in the init's shapes):
    ProjectionDecoder's `logits` start at zero, biases at zero, position embeddings are small."""
    name = "raw_projection_decoder"
    model = tasks.build(tasks.GENERIC, MODELS[name]["config"])
    params, state = jax.jit(model.init)(jax.random.PRNGKey(0), **runs[name]["kwargs"])
    assert _leaves(params) == _leaves(runs[name]["params"]) and not state
    assert not np.any(params["projection_decoder/~/logits"]["w"])
    assert not np.any(params["projection_decoder/~/logits"]["b"])
    latents = params["perceiver_encoder/~/trainable_position_encoding"]["pos_embs"]
    assert 0 < np.max(np.abs(latents)) <= 2 * 0.02


def _count_rng_draws(monkeypatch, fn, *args):
    """How many keys `fn`'s apply draws (counted while tracing it)."""
    draws = []
    next_rng_key = hk.next_rng_key

    def counting():
        draws.append(1)
        return next_rng_key()

    monkeypatch.setattr(hk, "next_rng_key", counting)
    transformed = hk.transform(fn)
    params = _random_like(jax.eval_shape(transformed.init, jax.random.PRNGKey(0), *args), 0)
    draws.clear()
    jax.eval_shape(transformed.apply, params, jax.random.PRNGKey(1), *args)
    return len(draws)


@pytest.mark.parametrize("is_training", [False, True])
def test_rng_keys_are_drawn_where_the_official_code_draws_them(monkeypatch, is_training):
    """Residual and MLP dropouts draw a key whatever their rate; `attend` only at a non-zero
    rate."""
    x = jnp.asarray(np.random.RandomState(4).randn(2, 5, 8), jnp.float32)
    kv = jnp.asarray(np.random.RandomState(5).randn(2, 3, 6), jnp.float32)

    def blocks(x, kv):
        x = perceiver.CrossAttention(num_heads=2, dropout_prob=0.0, dropout_attn_prob=0.5)(
            x, kv, is_training=is_training)
        return perceiver.SelfAttention(num_heads=2, dropout_prob=0.5, dropout_attn_prob=0.0)(
            x, is_training=is_training)

    # Cross-attention: attend (training only), attention output, MLP; self-attention: output, MLP.
    assert _count_rng_draws(monkeypatch, blocks, x, kv) == (5 if is_training else 4)


def test_refused_configurations():
    with pytest.raises(ValueError, match="raft"):
        hk.transform(lambda: io_processors.ImagePostprocessor(postproc_type="raft")).init(None)
    config = MODELS["raw_projection_decoder"]["config"]
    inputs = np.zeros((1, 12, 6), np.float32)
    with pytest.raises(ValueError, match="decoder"):
        tasks.build(tasks.GENERIC, config | {"decoder": {"type": "multimodal"}}).init(
            jax.random.PRNGKey(0), inputs)
    with pytest.raises(ValueError, match="input_shape"):
        tasks.build(tasks.GENERIC, config).init(jax.random.PRNGKey(0), inputs[:, :6])


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(_fixture(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
