"""The project's JAX reference (`converters.jax_reference`) against the official data: its parameter
trees equal the released checkpoints' manifests at full size (paths, leaf names, shapes, dtypes), and
the golden checkpoints reproduce the official outputs and intermediates, eager and under jit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from converters.comparison import max_abs_error  # noqa: E402
from converters.jax_reference import build  # noqa: E402
from perceiver_io.registry import RELEASES  # noqa: E402

DATA = Path(__file__).parent / "data"
TASKS = list(RELEASES)
TOLERANCE = {task: 1e-4 for task in TASKS} | {"multimodal_autoencoding": 1e-3}


def _manifest(task):
    return json.loads((DATA / "manifests" / f"{task}.json").read_text())


def _leaves(tree):
    return {(module, name, tuple(leaf.shape), str(leaf.dtype)) for module, leaves in tree.items()
            for name, leaf in leaves.items()}


def _manifest_leaves(entries):
    return {(entry["module"], entry["name"], tuple(entry["shape"]), entry["dtype"]) for entry in entries}


def _encoder_config(config):
    return config.get("encoder_config") or config["encoder"]


def _full_size_inputs(task, manifest):
    """Abstract batch-1 inputs of the released model, as the manifest's `input_shapes` gives."""
    shapes = manifest["input_shapes"]
    if task == "language_mlm":
        return {name: jax.ShapeDtypeStruct(tuple(shapes[name]), jnp.int32)
                for name in ("inputs", "input_mask")}
    if task == "multimodal_autoencoding":
        config = manifest["config"]
        num_chunks = config["NCHUNKS"]
        images = jax.ShapeDtypeStruct(tuple(shapes["images"]), jnp.float32)
        audio = jax.ShapeDtypeStruct(tuple(shapes["audio"]), jnp.float32)
        image_chunk = int(np.prod(images.shape[1:-1])) // num_chunks
        audio_chunk = audio.shape[1] // config["SAMPLES_PER_PATCH"] // num_chunks
        return {"images": images, "audio": audio,
                "subsampling": {"image": jax.ShapeDtypeStruct((image_chunk,), jnp.int32),
                                "audio": jax.ShapeDtypeStruct((audio_chunk,), jnp.int32),
                                "label": None}}
    return {"images": jax.ShapeDtypeStruct(tuple(shapes["images"]), jnp.float32)}


def _load_golden(task):
    folder = DATA / "golden" / task
    meta = json.loads((folder / "config.json").read_text())
    with open(folder / meta["checkpoint_file"], "rb") as f:
        checkpoint = pickle.load(f)
    params, state = (checkpoint["params"], checkpoint["state"]) if "params" in checkpoint \
        else (checkpoint, {})

    def plain(tree):
        return {module: {name: np.asarray(leaf) for name, leaf in leaves.items()}
                for module, leaves in tree.items()}

    config = json.loads((folder / "reduced_config.json").read_text())
    return (config, plain(params), plain(state), dict(np.load(folder / "inputs.npz")),
            dict(np.load(folder / "outputs.npz")), dict(np.load(folder / "intermediates.npz")))


def _max_error(ours, official):
    return max_abs_error(np.asarray(ours), np.asarray(official))


def _check_encoder_stages(config, intermediates):
    """Every encoder stage is reported, in order, and the last one is the encoder output."""
    encoder = _encoder_config(config)
    steps = encoder["num_blocks"] * encoder["num_self_attends_per_block"]
    names = ["encoder_cross_attention"] + [f"encoder_self_attention_{k}" for k in range(steps)]
    assert all(name in intermediates for name in names)
    assert f"encoder_self_attention_{steps}" not in intermediates
    np.testing.assert_array_equal(intermediates[names[-1]], intermediates["z"])


@pytest.mark.parametrize("task", TASKS)
def test_parameter_tree_matches_released_checkpoint(task):
    manifest = _manifest(task)
    model = build(task, manifest["config"])
    params, state = jax.eval_shape(
        lambda rng, kwargs: model.init(rng, **kwargs), jax.random.PRNGKey(0),
        _full_size_inputs(task, manifest))
    assert _leaves(params) == _manifest_leaves(manifest["params"])
    assert _leaves(state) == _manifest_leaves(manifest["state"])
    assert sum(int(np.prod(leaf.shape)) for leaves in params.values()
               for leaf in leaves.values()) == manifest["total_param_count"]


@pytest.mark.parametrize("task", [t for t in TASKS if t != "multimodal_autoencoding"])
def test_golden_checkpoint_reproduces_official_outputs(task):
    config, params, state, inputs, outputs, official = _load_golden(task)
    (output, intermediates), _ = build(task, config).apply(
        params, state, jax.random.PRNGKey(0), **inputs)
    errors = {"out": _max_error(output, outputs["out"])}
    errors |= {name: _max_error(intermediates[name], value) for name, value in official.items()}
    print(f"{task}: max abs error {errors}")
    assert max(errors.values()) <= TOLERANCE[task], errors
    _check_encoder_stages(config, intermediates)


def test_golden_checkpoint_reproduces_official_video_autoencoding():
    task = "multimodal_autoencoding"
    config, params, state, inputs, outputs, official = _load_golden(task)
    model = build(task, config)
    images, audio = inputs["images"], inputs["audio"]
    num_chunks = config["NCHUNKS"]
    image_chunk = int(np.prod(images.shape[1:-1])) // num_chunks
    audio_chunk = audio.shape[1] // config["SAMPLES_PER_PATCH"] // num_chunks
    errors = {}
    chunks = []
    for c in range(num_chunks):
        subsampling = {"image": np.arange(image_chunk * c, image_chunk * (c + 1)),
                       "audio": np.arange(audio_chunk * c, audio_chunk * (c + 1)),
                       "label": None}
        np.testing.assert_array_equal(subsampling["image"], official[f"chunk{c}/subsampling/image"])
        (output, intermediates), _ = model.apply(
            params, state, jax.random.PRNGKey(42), images, audio, subsampling)
        chunks.append(output)
        errors |= {f"chunk{c}/out/{m}": _max_error(output[m], outputs[f"chunk{c}/out/{m}"])
                   for m in output}
        prefix = f"chunk{c}/"
        errors |= {name: _max_error(intermediates[name[len(prefix):]], value)
                   for name, value in official.items()
                   if name.startswith(prefix) and "/subsampling/" not in name}
        if c == 0:
            _check_encoder_stages(config, intermediates)
    reconstruction = {
        "image": np.concatenate([chunk["image"] for chunk in chunks], 1).reshape(images.shape),
        "audio": np.concatenate([chunk["audio"] for chunk in chunks], 1).reshape(audio.shape),
        "label": chunks[-1]["label"],
    }
    errors |= {f"reconstruction/{m}": _max_error(value, outputs[f"reconstruction/{m}"])
               for m, value in reconstruction.items()}
    assert len(errors) == len(outputs) + sum("/subsampling/" not in k for k in official)
    print(f"{task}: max abs error {max(errors.values()):.3g} over {len(errors)} arrays")
    assert max(errors.values()) <= TOLERANCE[task], errors


@pytest.mark.parametrize("task", [t for t in TASKS if t != "multimodal_autoencoding"])
def test_golden_checkpoint_under_jit_reproduces_official_jit_outputs(task):
    config, params, state, inputs, _, _ = _load_golden(task)
    apply = jax.jit(build(task, config).apply)
    (output, _), _ = apply(params, state, jax.random.PRNGKey(0), **inputs)
    official = np.load(DATA / "golden" / task / "outputs_jit.npz")["out"]
    error = _max_error(output, official)
    print(f"{task} (jit): max abs error {error:.3g}")
    assert error <= TOLERANCE[task]
