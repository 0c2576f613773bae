"""Custom Perceivers of the official building set: random configurations across the official options,
built in the JAX reference and in PyTorch, converted (every leaf re-randomised first), and compared in
eval mode; the recorded custom configurations (`custom_reference_trees.json`) are checked the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("jax")
import jax  # noqa: E402

from converters.convert import convert_tree, export_tree  # noqa: E402
from converters.jax_reference import build  # noqa: E402
from perceiver_io.tasks import build_model  # noqa: E402

from .conftest import DATA  # noqa: E402

TOLERANCE = 1e-4


def _random_tree(shapes, rng):
    """Random leaves for a tree of shapes (from `jax.eval_shape` of the reference's init): weights and
    biases N(0, 0.3^2), LayerNorm scales around 1, positive variances, counters 1."""
    tree = {}
    for module, leaves in shapes.items():
        tree[module] = {}
        for name, leaf in leaves.items():
            if np.dtype(leaf.dtype).kind == "i":
                value = np.ones(leaf.shape, leaf.dtype)
            elif module.endswith("var_ema"):
                value = rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
            else:
                value = rng.normal(float(name == "scale"), 0.3, leaf.shape).astype(np.float32)
            tree[module][name] = value
    return tree


def _inputs(config, batch, rng):
    shape = (batch, *config["input_shape"])
    return rng.normal(size=shape).astype(np.float32)


def _torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def check(config, seed, subsampled_points=None, input_mask=None):
    """JAX reference vs converted PyTorch model on one random batch; returns the relative error."""
    rng = np.random.default_rng(seed)
    inputs = _inputs(config, 2, rng)
    call = {"input_mask": input_mask, "subsampled_points": subsampled_points}
    reference = build("perceiver", config)
    param_shapes, state_shapes = jax.eval_shape(reference.init, jax.random.PRNGKey(0), inputs, **call)
    params, state = _random_tree(param_shapes, rng), _random_tree(state_shapes, rng)
    (expected, _), _ = reference.apply(params, state, jax.random.PRNGKey(0), inputs, **call)
    expected = np.asarray(expected)

    tree = {"params": params, "state": state} if state else params
    state_dict = convert_tree(tree, "perceiver", config)
    model = build_model("perceiver", config).eval()
    model.load_state_dict({key: torch.from_numpy(np.asarray(value)) for key, value in state_dict.items()})
    with torch.inference_mode():
        ours = model(
            torch.from_numpy(inputs),
            None if input_mask is None else torch.from_numpy(input_mask),
            None,
            None if subsampled_points is None else torch.from_numpy(np.asarray(subsampled_points)),
        ).numpy()
    assert ours.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1.0)
    error = float(np.abs(ours - expected).max()) / scale
    back_params, back_state = export_tree(state_dict, "perceiver", config)
    for module, leaves in params.items():
        for name, value in leaves.items():
            np.testing.assert_array_equal(back_params[module][name], value)
    assert back_state.keys() == state.keys()
    return error


RECORDED = json.loads((DATA / "custom_reference_trees.json").read_text())["models"]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_configurations(name):
    recorded = RECORDED[name]
    call = recorded["call"]
    points = call.get("subsampled_points")
    mask = None
    if call.get("input_mask"):
        mask = np.ones((call["batch_size"], recorded["config"]["input_shape"][0]), np.int32)
        mask[0, 1:] = 0
    error = check(recorded["config"], 0, None if points is None else np.asarray(points), mask)
    print(f"{name}: relative max abs error {error:.2e}")
    assert error <= TOLERANCE


@st.composite
def configurations(draw):
    """A random custom Perceiver: an image, audio or raw-feature input, any encoder options, a basic,
    classification or projection decoder, and a postprocessor fitting the decoder's output."""
    kind = draw(st.sampled_from(["image", "audio", "raw"]))
    fourier = {"num_bands": draw(st.integers(1, 3)), "concat_pos": draw(st.booleans()), "sine_only": draw(st.booleans())}
    position = draw(st.sampled_from(["trainable", "fourier"]))
    encoding = {"position_encoding_type": position}
    if position == "fourier":
        encoding["fourier_position_encoding_kwargs"] = fourier
    else:
        encoding["trainable_position_encoding_kwargs"] = {"num_channels": draw(st.integers(2, 6))}
    encoding["n_extra_pos_mlp"] = draw(st.integers(0, 2))
    add = draw(st.booleans())
    if kind == "image":
        side = draw(st.sampled_from([8, 12]))
        prep = draw(st.sampled_from(["pixels", "conv1x1", "patches", "conv"]))
        downsample = {"pixels": 2, "conv1x1": 2, "patches": 4, "conv": 4}[prep]
        channels = draw(st.integers(3, 6))
        preprocessor = {"type": "image", "prep_type": prep, "spatial_downsample": downsample, "num_channels": channels,
                        "conv_after_patching": prep == "patches" and draw(st.booleans()), **encoding}
        features = {"pixels": 3, "conv1x1": channels, "conv": channels,
                    "patches": channels if preprocessor["conv_after_patching"] else 3 * downsample**2}[prep]
        input_shape = [side, side, 3]
        tokens = (side // downsample) ** 2 if prep in ("patches", "conv") else (-(-side // downsample)) ** 2
    elif kind == "audio":
        spp = draw(st.sampled_from([2, 4]))
        preprocessor = {"type": "audio", "samples_per_patch": spp, **encoding}
        features, input_shape, tokens = spp, [8 * spp, 1], 8
    else:
        preprocessor, features, input_shape, tokens = None, 6, [7, 6], 7
    if preprocessor is not None and add:
        preprocessor["concat_or_add_pos"] = "add"
        preprocessor["project_pos_dim"] = features
    elif preprocessor is not None and draw(st.booleans()):
        preprocessor["project_pos_dim"] = draw(st.integers(2, 5))
    latents = draw(st.sampled_from([8, 16]))
    qk = draw(st.sampled_from([None, 8]))
    encoder = {
        "num_self_attends_per_block": draw(st.integers(1, 2)),
        "num_blocks": draw(st.integers(1, 2)),
        "z_index_dim": draw(st.integers(2, 5)),
        "num_z_channels": latents,
        "qk_channels": qk,
        "v_channels": latents if qk is not None else None,
        "num_cross_attend_heads": 1,
        "num_self_attend_heads": draw(st.sampled_from([1, 2, 4])),
        "cross_attend_widening_factor": draw(st.integers(1, 3)),
        "self_attend_widening_factor": draw(st.integers(1, 3)),
        "cross_attention_shape_for_attn": draw(st.sampled_from(["kv", "q"])),
        "use_query_residual": draw(st.booleans()),
    }
    if qk is not None or encoder["cross_attention_shape_for_attn"] == "q":
        # the cross-attention's qk width is then 8 or the latents' width, which two heads divide
        encoder["num_cross_attend_heads"] = draw(st.sampled_from([1, 2]))
    decoder_kind = draw(st.sampled_from(["basic", "classification", "projection"]))
    queries = {"position_encoding_type": draw(st.sampled_from(["trainable", "fourier"]))}
    if queries["position_encoding_type"] == "fourier":
        queries["fourier_position_encoding_kwargs"] = {"num_bands": draw(st.integers(1, 3))}
    else:
        queries["trainable_position_encoding_kwargs"] = {"num_channels": draw(st.sampled_from([4, 6]))}
    subsampled = None
    if decoder_kind == "projection":
        decoder = {"type": "projection", "num_classes": draw(st.integers(2, 5))}
    elif decoder_kind == "classification":
        decoder = {"type": "classification", "num_classes": draw(st.integers(2, 5)), "num_heads": draw(st.sampled_from([1, 2])),
                   "use_query_residual": False, **queries}
    else:
        decoder = {"type": "basic", "output_num_channels": draw(st.integers(2, 5)), "num_heads": draw(st.sampled_from([1, 2])),
                   "use_query_residual": False, "final_project": draw(st.booleans()), **queries}
        if queries["position_encoding_type"] == "fourier" and draw(st.booleans()):
            decoder["output_index_dims"] = [4, 6]
            subsampled = np.sort(draw(st.lists(st.integers(0, 23), min_size=1, max_size=6, unique=True))).astype(np.int32)
        else:
            decoder["output_index_dims"] = [tokens]
            decoder["concat_preprocessed_input"] = preprocessor is not None and draw(st.booleans())
    if decoder_kind == "basic":
        post = draw(st.sampled_from([None, {"type": "identity"}, {"type": "projection", "num_outputs": 3},
                                     {"type": "classification", "num_classes": 4}]))
    else:
        post = draw(st.sampled_from([None, {"type": "identity"}, {"type": "projection", "num_outputs": 3}]))
    config = {"input_shape": input_shape, "input_preprocessor": preprocessor, "encoder": encoder, "decoder": decoder,
              "output_postprocessor": post}
    return config, subsampled


def check_random_configurations(count: int) -> None:
    """`count` drawn configurations, each within TOLERANCE; prints the worst."""
    errors = []

    @settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(drawn=configurations(), seed=st.integers(0, 2**16))
    def each(drawn, seed):
        config, subsampled = drawn
        error = check(config, seed, subsampled)
        print(f"relative max abs error {error:.2e}: {json.dumps(config)}")
        assert error <= TOLERANCE, json.dumps(config)
        errors.append(error)

    each()
    assert len(errors) == count, f"{len(errors)} of {count} configurations ran"
    print(f"worst relative max abs error over {count} custom configurations: {max(errors):.2e}")


def test_random_configurations():
    check_random_configurations(20)


@pytest.mark.slow
def test_many_random_configurations():
    check_random_configurations(300)


def test_custom_checkpoint_through_the_command_line(tmp_path, capsys):
    from converters.cli import main
    from converters.haiku_pickle import save_haiku_pickle

    recorded = RECORDED["image_conv_classification"]
    config = recorded["config"]
    inputs = _inputs(config, 2, np.random.default_rng(0))
    shapes = jax.eval_shape(build("perceiver", config).init, jax.random.PRNGKey(0), inputs)
    rng = np.random.default_rng(1)
    source = tmp_path / "custom.pickle"
    save_haiku_pickle(source, _random_tree(shapes[0], rng), _random_tree(shapes[1], rng))
    config_path = tmp_path / "custom.json"
    config_path.write_text(json.dumps(config))
    common = ["--task", "perceiver", "--config", str(config_path)]
    assert main([str(source), "-o", str(tmp_path / "custom.safetensors"), *common]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["verify", str(source), *common, "--converted", str(tmp_path / "custom.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["stages"], report
