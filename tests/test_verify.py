"""`convert-checkpoint verify`: on every golden checkpoint it passes, with figures equal to a direct
computation and consistent with the official outputs; a broken conversion fails at the first stage that
goes wrong; bad input exits 2; the GPU parity script runs (on CPU here, on CUDA where there is one)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import save_file

from converters.cli import main
from converters.comparison import DEFAULT_FLOAT32_TOLERANCE, default_tolerance
from converters.convert import convert_checkpoint
from converters.haiku_pickle import load_haiku_checkpoint
from converters.verify import (
    compute_reference,
    first_chunk,
    load_reference,
    reference_config,
    synthetic_inputs,
    torch_inputs,
    verify_model,
)
from perceiver_io import hub
from perceiver_io.attention import MLP
from perceiver_io.errors import ConfigError
from perceiver_io.placement import DTYPES
from perceiver_io.registry import TASKS, parse_config
from perceiver_io.serialization import load, save
from perceiver_io.tasks import build_model, task_of

from .conftest import GOLDEN, Golden, manifest

pytest.importorskip("jax")  # the JAX reference, on CPU and on a GPU machine alike

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_TASKS = [task for task in TASKS if (GOLDEN / task).is_dir()]
OFFICIAL_OUTPUT_TOLERANCE = 1e-4  # tests/test_golden.py's; 1e-3 for the multimodal model (test_multimodal.py)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _official_outputs(golden: Golden) -> dict[str, np.ndarray]:
    """The official eager outputs of the batch verify runs (the multimodal model: its first chunk)."""
    if golden.task == "multimodal_autoencoding":
        return {f"out/{name}": golden.outputs[f"chunk0/out/{name}"] for name in ("audio", "image", "label")}
    return {"out": golden.outputs["out"]}


def _verify(capsys, *args: str) -> tuple[int, dict | str]:
    status = main(["verify", *args])
    out = capsys.readouterr().out
    return status, json.loads(out) if "--json" in args else out


def _golden_args(golden: Golden) -> list[str]:
    return [str(golden.checkpoint), "--task", golden.task, "--config", str(golden.folder / "reduced_config.json")]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """task -> the reference verify saved while checking that task's golden checkpoint (filled by
    `test_verify_passes_on_golden`, which runs first, or on demand)."""
    return {"folder": tmp_path_factory.mktemp("references")}


def _reference_of(task: str, references, capsys) -> Path:
    if task not in references:
        golden = Golden(task)
        path = references["folder"] / f"{task}.npz"
        status, _ = _verify(capsys, *_golden_args(golden), "--inputs", str(golden.folder / "inputs.npz"),
                            "--save-reference", str(path), "--json")
        assert status == 0
        references[task] = path
    return references[task]


@pytest.mark.parametrize("task", GOLDEN_TASKS)
def test_verify_passes_on_golden(task, references, capsys):
    golden = Golden(task)
    path = references["folder"] / f"{task}.npz"
    status, report = _verify(capsys, *_golden_args(golden), "--inputs", str(golden.folder / "inputs.npz"),
                             "--save-reference", str(path), "--json")
    references[task] = path
    stages = [check["stage"] for check in report["stages"]]
    print(f"{task}: " + ", ".join(f"{c['stage']} {c['max_abs_error']:.1e}" for c in report["stages"]))
    assert status == 0 and report["passed"] and report["first_failure"] is None
    assert report["tolerance"] == default_tolerance(task) and report["device"] == "cpu"
    assert stages[0] == "encoder_inputs" and stages[-1].startswith("out")
    num_self_attends = golden.config["encoder" if "encoder" in golden.config else "encoder_config"]
    applications = num_self_attends["num_self_attends_per_block"] * num_self_attends["num_blocks"]
    expected = ["encoder_query", "encoder_cross_attention",
                *[f"encoder_self_attention_{k}" for k in range(applications)], "decoder_query", "decoder_outputs"]
    assert [stage for stage in stages if stage in expected] == expected

    # The same figures by direct computation: the converted model on the same inputs, against the saved
    # reference; and against the official outputs, as tests/test_golden.py measures them.
    reference = load_reference(path)
    converted = convert_checkpoint(golden.checkpoint, path.with_suffix(".safetensors"), task, golden.config)
    model = load(converted.output)
    with torch.inference_mode():
        out = model(**_as_torch(torch_inputs(task, reference.inputs)))
    outs = {f"out/{name}": value for name, value in out.items()} if isinstance(out, dict) else {"out": out}
    reported = {check["stage"]: check for check in report["stages"]}
    official = _official_outputs(golden)
    official_tolerance = 1e-3 if task == "multimodal_autoencoding" else OFFICIAL_OUTPUT_TOLERANCE
    for name, value in outs.items():
        direct = float(np.abs(value.numpy().astype(np.float64) - reference.stages[name]).max())
        assert reported[name]["max_abs_error"] == pytest.approx(direct, rel=1e-6, abs=1e-9)
        against_official = float(np.abs(value.numpy() - official[name]).max())
        reference_vs_official = float(np.abs(reference.stages[name] - official[name]).max())
        print(f"{task} {name}: verify {direct:.2e}, vs official {against_official:.2e}, "
              f"reference vs official {reference_vs_official:.2e}")
        assert against_official <= official_tolerance
        assert abs(direct - against_official) <= reference_vs_official + 1e-9  # the triangle inequality
        assert reference_vs_official <= 1e-5 * max(1.0, float(np.abs(official[name]).max())) * (
            10 if task == "multimodal_autoencoding" else 1)  # jit vs eager: docs/official-numerics.md#tolerances


def _as_torch(value):
    if isinstance(value, dict):
        return {key: _as_torch(item) for key, item in value.items()}
    return None if value is None else torch.from_numpy(np.asarray(value))


def test_exact_gelu_fails_first_where_the_first_mlp_runs(references, capsys, monkeypatch):
    """Trap 1: nn.GELU's exact erf instead of JAX's tanh approximation. The first MLP is the encoder
    cross-attention's; everything before it is exact."""
    golden = Golden("language_mlm")
    reference = load_reference(_reference_of("language_mlm", references, capsys))
    model = load(golden.checkpoint, task="language_mlm", config=golden.config)
    monkeypatch.setattr(MLP, "forward", lambda self, x: self.dropout(self.down_proj(F.gelu(self.up_proj(x)))))
    report = verify_model(model, reference, model_origin="exact-GELU port")
    print(report.table())
    assert not report.passed and report.first_failure == "encoder_cross_attention"
    failed = next(check for check in report.stages if check.stage == "encoder_cross_attention")
    assert DEFAULT_FLOAT32_TOLERANCE < failed.relative_error < 1e-2  # small, yet over tolerance
    before = [check for check in report.stages[: report.stages.index(failed)]]
    assert [check.stage for check in before] == ["encoder_inputs", "encoder_query"]
    assert all(check.passed for check in before)
    assert "FIRST FAIL" in report.table() and "FAIL: first stage over tolerance: encoder_cross_attention" in report.table()


def test_transposed_square_weight_fails_at_that_layers_application(references, capsys, tmp_path):
    """Trap 2: a square Linear loaded without its transpose loads silently. The converted file is edited,
    then checked through the CLI against the saved reference (no JAX run)."""
    golden = Golden("language_mlm")
    reference = _reference_of("language_mlm", references, capsys)
    converted = convert_checkpoint(golden.checkpoint, tmp_path / "good.safetensors", "language_mlm", golden.config)
    key = "perceiver.encoder.self_attends.1.attention.output_proj.weight"
    with safe_open(converted.output, framework="np") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert tensors[key].shape[0] == tensors[key].shape[1]
    tensors[key] = np.ascontiguousarray(tensors[key].T)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata=metadata)

    status, report = _verify(capsys, "--converted", str(broken), "--reference", str(reference), "--json")
    assert status == 1 and not report["passed"]
    assert report["first_failure"] == "encoder_self_attention_1"
    stages = [check["stage"] for check in report["stages"]]
    first = stages.index("encoder_self_attention_1")
    assert stages[:first] == ["encoder_inputs", "encoder_query", "encoder_cross_attention", "encoder_self_attention_0"]
    assert all(check["passed"] for check in report["stages"][:first])
    assert report["stages"][first]["relative_error"] > 0.1

    status, table = _verify(capsys, "--converted", str(converted.output), "--reference", str(reference))
    assert status == 0 and "PASS: every stage within 0.0001" in table


def test_the_example_passes_against_the_official_stages_and_the_reference(tmp_path, capsys):
    status = main(["--example", "-o", str(tmp_path / "example.safetensors")])
    out = capsys.readouterr().out
    print(out)
    assert status == 0 and out.count("PASS: every stage within 0.0001 of its scale") == 2
    assert "vs the official JAX outputs and intermediates (stored with the example)" in out
    assert "vs JAX reference run now" in out
    official = out.split("vs JAX reference run now")[0]
    for stage in ("encoder_inputs", "encoder_query", "z", "decoder_query", "decoder_outputs", "out"):
        assert re.search(rf"^  {stage} .* ok$", official, re.M), stage


def test_the_example_fails_at_the_first_wrong_stage(tmp_path, capsys, monkeypatch):
    """The example's model, loaded with one square weight transposed: both references fail, each at the
    first stage it records after that weight (the official intermediates record no self-attention)."""
    from perceiver_io import serialization

    loaded = serialization.load

    def load_transposed(path, **options):
        model = loaded(path, **options)
        weight = model.get_submodule("perceiver.encoder.self_attends.1.attention.output_proj").weight
        with torch.no_grad():
            weight.copy_(weight.T.clone())
        return model

    monkeypatch.setattr(serialization, "load", load_transposed)
    status = main(["--example", "-o", str(tmp_path / "example.safetensors")])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL: first stage over tolerance: z (" in out
    assert "FAIL: first stage over tolerance: encoder_self_attention_1 (" in out


def test_table_reports_every_stage(references, capsys):
    golden = Golden("imagenet_conv")
    reference = _reference_of("imagenet_conv", references, capsys)
    status, table = _verify(capsys, *_golden_args(golden), "--reference", str(reference))
    print(table)
    assert status == 0
    lines = table.splitlines()
    assert lines[0].startswith("verify imagenet_conv: ") and "converted in memory" in lines[0]
    assert "PyTorch on cpu in float32 vs JAX reference run now" in lines[1] and str(reference) in lines[1]
    header = next(line for line in lines if line.strip().startswith("stage"))
    assert header.split() == ["stage", "shape", "max", "abs", "error", "scale", "rel.", "error"]
    rows = [line.split() for line in lines if line.strip().startswith(("encoder_", "inputs_", "decoder_", "out"))]
    assert [row[0] for row in rows][-3:] == ["decoder_query", "decoder_outputs", "out"]
    assert all(row[-1] == "ok" for row in rows)


def test_synthetic_inputs_are_of_the_right_kind():
    language = synthetic_inputs("language_mlm", Golden("language_mlm").config)
    mask = language["input_mask"]
    assert mask.shape == (3, 64) and mask[0].all() and 0 < mask[1].sum() < 64 and not mask[2].any()
    assert (language["inputs"][mask == 0] == 0).all() and (language["inputs"][mask == 1] >= 3).all()
    assert (language["inputs"] == 3).any()  # some [MASK] ids
    assert synthetic_inputs("imagenet_conv", Golden("imagenet_conv").config)["images"].shape == (2, 32, 32, 3)
    assert synthetic_inputs("imagenet_learned")["images"].shape == (2, 224, 224, 3)
    flow = synthetic_inputs("optical_flow", Golden("optical_flow").config)["images"]
    assert flow.shape == (2, 2, 12, 16, 3) and -1 <= flow.min() and flow.max() <= 1
    config = Golden("multimodal_autoencoding").config
    video = synthetic_inputs("multimodal_autoencoding", config)
    assert video["images"].shape == (2, 4, 16, 16, 3) and 0 <= video["images"].min() and video["images"].max() <= 1
    assert video["audio"].shape == (2, 1920, 1)
    model = build_model("multimodal_autoencoding", config)
    colab = model.chunks()[0]
    for name in ("image", "audio"):
        np.testing.assert_array_equal(video["subsampling"][name], colab[name].numpy())
    assert first_chunk(parse_config("multimodal_autoencoding"))["image"].shape == (6272,)


def test_verify_on_synthetic_inputs(capsys):
    golden = Golden("language_mlm")
    status, report = _verify(capsys, *_golden_args(golden), "--json")
    assert status == 0 and report["passed"]
    assert report["inputs"] == {"inputs": "3x64 int32", "input_mask": "3x64 int32"}


def test_reference_config_of_each_release_builds_the_released_parameter_tree():
    """A released name without --config runs the reference at the released configuration: its parameter
    tree (shapes only, nothing computed) is the official manifest's, leaf for leaf."""
    import jax
    import jax.numpy as jnp

    from converters.jax_reference import build

    for task in hub.RELEASES:
        inputs = synthetic_inputs(task)
        if task == "language_mlm":
            inputs = {key: value[:1] for key, value in inputs.items()}
        transformed = build(task, reference_config(task, None))
        params, _ = jax.eval_shape(
            lambda inputs=inputs: transformed.init(jax.random.PRNGKey(0), **jax.tree_util.tree_map(jnp.asarray, inputs))
        )
        ours = {f"{module}/{name}": list(leaf.shape) for module, leaves in params.items() for name, leaf in leaves.items()}
        official = {f"{leaf['module']}/{leaf['name']}": leaf["shape"] for leaf in manifest(task)["params"]}
        assert ours == official, task


@pytest.mark.parametrize("task", GOLDEN_TASKS)
def test_converted_file_of_every_task_verifies_and_keeps_its_task(task, references, capsys, tmp_path,
                                                                  converted_golden):
    """A converted file, and the same model saved again by `perceiver_io.save`, verify as their own task
    (the three ImageNet tasks share one model class): the task is data of the model, kept from build to save
    to load."""
    golden = Golden(task)
    reference = _reference_of(task, references, capsys)
    converted = converted_golden(task).output
    model = load(converted)
    assert task_of(model) == task and model.task == task
    resaved = save(model, tmp_path / "resaved.safetensors")
    assert task_of(load(resaved)) == task
    for path in (converted, resaved):
        status, report = _verify(capsys, "--converted", str(path), "--reference", str(reference), "--json")
        assert status == 0 and report["passed"] and report["task"] == task, report.get("first_failure")
    status, report = _verify(capsys, *_golden_args(golden), "--converted", str(converted),
                             "--inputs", str(golden.folder / "inputs.npz"), "--json")
    assert status == 0 and report["passed"], report["first_failure"]


WRONG_CONFIGS = {
    "num_blocks": lambda encoder: {**encoder, "num_blocks": 3},
    "heads": lambda encoder: {**encoder, "num_self_attend_heads": 4},
}
"""Configuration mistakes that keep every shape of the imagenet_fourier golden checkpoint (2 blocks, 8 heads)."""


def _imagenet_configs(tmp_path: Path) -> dict[str, Path]:
    """The golden imagenet_fourier config ("right") and the WRONG_CONFIGS variants of it, as files."""
    config = Golden("imagenet_fourier").config
    paths = {}
    for name, change in {"right": lambda encoder: encoder, **WRONG_CONFIGS}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({**config, "encoder": change(config["encoder"])}))
    return paths


def test_a_config_that_keeps_every_shape_is_caught_against_your_own_outputs(capsys, tmp_path):
    """--jax-outputs: the official outputs of the golden batch fail a wrong num_blocks or head count and pass
    the right config; the project's JAX reference, run on the same wrong config, cannot tell (README)."""
    golden = Golden("imagenet_fourier")
    outputs, inputs = str(golden.folder / "outputs.npz"), str(golden.folder / "inputs.npz")
    errors = {}
    configs = _imagenet_configs(tmp_path)
    for name, config in configs.items():
        common = [str(golden.checkpoint), "--task", "imagenet_fourier", "--config", str(config), "--inputs", inputs]
        status, report = _verify(capsys, *common, "--jax-outputs", outputs, "--json")
        stages = {check["stage"]: check for check in report["stages"]}
        errors[name] = stages["out"]["relative_error"]
        assert list(stages) == ["out"] and "your JAX outputs" in report["reference"]
        assert (status, report["passed"]) == ((0, True) if name == "right" else (1, False))
        status, report = _verify(capsys, *common, "--json")
        assert status == 0 and report["passed"]  # the same wrong model on both sides
    print("--jax-outputs, relative error of out: " + ", ".join(f"{name} {error:.2e}" for name, error in errors.items()))
    status, table = _verify(capsys, str(golden.checkpoint), "--task", "imagenet_fourier", "--config",
                            str(configs["num_blocks"]), "--inputs", inputs, "--jax-outputs", outputs)
    assert status == 1 and "the reference holds outputs only: the intermediate stages are not compared" in table
    assert "FAIL: out (" in table and "the configuration does not describe this checkpoint" in table


HAIKU_FUNCTION = """
import json

import haiku as hk
import jax

from converters.jax_reference import build
from perceiver_settings import CONFIG_TEXT

CONFIG = json.loads(CONFIG_TEXT)


def forward(images):
    \"\"\"A Haiku forward function of the checkpoint's true configuration, as a user's own code is.\"\"\"
    model = build("imagenet_fourier", CONFIG)
    params = hk.experimental.transparent_lift(lambda x: model.init(jax.random.PRNGKey(0), x)[0])(images)
    (logits, _), _ = model.apply(params, {}, None, images)
    return logits


def broken(images):
    raise RuntimeError("this function cannot run\\nsecond line")


def pair(images):
    return forward(images), images
"""


def _haiku_module(folder: Path, golden: Golden) -> Path:
    """The user's module `my_perceiver.py`, which imports its configuration from a module beside it."""
    (folder / "perceiver_settings.py").write_text(f"CONFIG_TEXT = {json.dumps(golden.config)!r}\n")
    module = folder / "my_perceiver.py"
    module.write_text(HAIKU_FUNCTION)
    return module


def test_a_config_that_keeps_every_shape_is_caught_against_your_own_haiku_code(capsys, tmp_path, monkeypatch):
    """--haiku-fn: the user's Haiku function (here, the true configuration's) run on the checkpoint fails a
    wrong num_blocks or head count and passes the right config; as a file (importing a module beside it) or
    as a module importable from the working folder."""
    pytest.importorskip("haiku")
    golden = Golden("imagenet_fourier")
    module = _haiku_module(tmp_path, golden)
    inputs = str(golden.folder / "inputs.npz")
    for name, config in _imagenet_configs(tmp_path).items():
        status, report = _verify(capsys, str(golden.checkpoint), "--task", "imagenet_fourier", "--config", str(config),
                                 "--inputs", inputs, "--haiku-fn", f"{module}:forward", "--json")
        assert [check["stage"] for check in report["stages"]] == ["out"]
        assert report["reference"].startswith(f"your Haiku function {module}:forward run now")
        assert (status, report["passed"]) == ((0, True) if name == "right" else (1, False)), name
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_perceiver", raising=False)
    monkeypatch.delitem(sys.modules, "perceiver_settings", raising=False)
    status, table = _verify(capsys, *_golden_args(golden), "--inputs", inputs, "--haiku-fn", "my_perceiver:forward")
    assert status == 0 and "vs your Haiku function my_perceiver:forward run now" in table and "PASS" in table


@pytest.mark.parametrize("option, value, message", [
    ("--haiku-fn", "no_colon", "--haiku-fn no_colon: expected module:function"),
    ("--haiku-fn", "__DIR__/absent.py:forward", "no Python file at __DIR__/absent.py"),
    ("--haiku-fn", "__MODULE__:absent", "has no function 'absent'"),
    ("--haiku-fn", "no_such_module_here:forward", "importing no_such_module_here failed: ModuleNotFoundError"),
    ("--haiku-fn", "__MODULE__:broken", "failed on the checkpoint and inputs: RuntimeError: this function cannot run"),
    ("--haiku-fn", "__MODULE__:pair", "returned a tuple; return the output array, or a mapping"),
    ("--haiku-fn", "__EXITS__:forward", "importing __EXITS__ failed: SystemExit: 3"),
    ("--jax-outputs", "__OUTPUTS__", "outputs file __OUTPUTS__: ['mask'] are not outputs"),
    ("--jax-outputs", "__NAMED__", "the outputs are named ['out/logits', 'out/probabilities'], the imagenet_fourier "
     "model's are ['out']"),
    ("--jax-outputs", "__SHORT__", "out has shape [2, 5], the model's output [2, 10]"),
    ("--jax-outputs", "__TEXT__", "out holds <U3 values, not floating-point ones"),
    ("--jax-outputs", "__NAN__", "out holds NaN or inf"),
])
def test_bad_user_reference_exits_2(option, value, message, capsys, tmp_path):
    golden = Golden("imagenet_fourier")
    module = _haiku_module(tmp_path, golden)
    (tmp_path / "exits.py").write_text("import sys\n\nsys.exit(3)\n")
    logits = golden.outputs["out"]
    outputs = {"OUTPUTS": {"out": logits, "mask": np.ones(2)}, "NAMED": {"logits": logits, "probabilities": logits},
               "SHORT": {"out": logits[:, :5]}, "TEXT": {"out": np.array([["abc"] * 10] * 2)},
               "NAN": {"out": np.where(np.eye(2, 10) > 0, np.nan, logits)}}
    replacements = {"__DIR__": str(tmp_path), "__MODULE__": str(module), "__EXITS__": str(tmp_path / "exits.py")}
    for name, arrays in outputs.items():
        replacements[f"__{name}__"] = str(tmp_path / f"{name.lower()}.npz")
        np.savez(replacements[f"__{name}__"], **arrays)
    for placeholder, path in replacements.items():
        value, message = value.replace(placeholder, path), message.replace(placeholder, path)
    status = main(["verify", *_golden_args(golden), "--inputs", str(golden.folder / "inputs.npz"), option, value])
    error = capsys.readouterr().err
    assert status == 2 and message in error and "\n" not in error.strip(), error


def test_jax_outputs_without_inputs_exits_2(capsys):
    golden = Golden("imagenet_fourier")
    assert main(["verify", *_golden_args(golden), "--jax-outputs", str(golden.folder / "outputs.npz")]) == 2
    assert "--jax-outputs needs --inputs" in capsys.readouterr().err


def test_jax_outputs_of_a_mapping_must_be_the_models_outputs_on_the_points_decoded(capsys, tmp_path):
    """The multimodal model's outputs by name (without `out/`) pass; an output of another shape, a missing
    one, or inputs that do not say which points were decoded exit 2, naming what is wrong."""
    golden = Golden("multimodal_autoencoding")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=golden.inputs["images"], audio=golden.inputs["audio"],
             **{f"subsampling/{m}": golden.intermediates[f"chunk1/subsampling/{m}"] for m in ("image", "audio")})
    outputs = {m: golden.outputs[f"chunk1/out/{m}"] for m in ("audio", "image", "label")}
    np.savez(tmp_path / "outputs.npz", **outputs)
    status, report = _verify(capsys, *_golden_args(golden), "--inputs", str(inputs), "--jax-outputs",
                             str(tmp_path / "outputs.npz"), "--json")
    assert status == 0 and [check["stage"] for check in report["stages"]] == ["out/audio", "out/image", "out/label"]
    np.savez(tmp_path / "no_points.npz", images=golden.inputs["images"], audio=golden.inputs["audio"])
    wrong = {
        "short": (dict(outputs, label=outputs["label"][:, :5]), inputs,
                  f"out/label has shape [2, 5], the model's output {list(outputs['label'].shape)}"),
        "missing": ({m: outputs[m] for m in ("audio", "image")}, inputs,
                    "the outputs are named ['out/audio', 'out/image'], the multimodal_autoencoding model's are "
                    "['out/audio', 'out/image', 'out/label']"),
        "no_points": (outputs, tmp_path / "no_points.npz", "has no subsampling/image and subsampling/audio"),
    }
    for name, (arrays, inputs_file, message) in wrong.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        status = main(["verify", *_golden_args(golden), "--inputs", str(inputs_file), "--jax-outputs",
                       str(tmp_path / f"{name}.npz")])
        error = capsys.readouterr().err
        assert status == 2 and message in error and "\n" not in error.strip(), (name, error)


LANGUAGE_FILE = ["__GOLDEN__", "--task", "language_mlm", "--config", "__CONFIG__"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.pickle", "--task", "language_mlm"], "no Haiku checkpoint at missing.pickle"),
        ([], "give SRC"),
        (["--tolerance", "-1"], "--tolerance must be positive"),
        (["__GOLDEN__"], "--task is required"),
        (["__GOLDEN__", "--task", "language_mlm", "--inputs", "__IMAGES__"], "takes ['input_mask', 'inputs']"),
        (["__GOLDEN__", "--task", "language_mlm", "--reference", "__IMAGES__"], "not a reference file"),
        (["__FOLDER__", "--task", "language_mlm"], "__FOLDER__ is a directory, not a regular file"),
        ([*LANGUAGE_FILE, "--inputs", "__TRUNCATED__"], "inputs file __TRUNCATED__ is not a readable npz archive"),
        ([*LANGUAGE_FILE, "--reference", "__TRUNCATED__"], "reference file __TRUNCATED__ is not a readable npz"),
        ([*LANGUAGE_FILE, "--inputs", "__NPY__"], "inputs file __NPY__ holds a single array (.npy), not an npz"),
        ([*LANGUAGE_FILE, "--inputs", "__SHORT__"], "__SHORT__: inputs has shape [3, 32], expected [B,64] (token ids"),
        ([*LANGUAGE_FILE, "--inputs", "__ROW__"], "__ROW__: inputs has shape [64], expected [B,64]"),
        ([*LANGUAGE_FILE, "--inputs", "__FLOAT__"], "__FLOAT__: inputs has dtype float32, expected integer [B,64]"),
        ([*LANGUAGE_FILE, "--inputs", "__VOCAB__"], "__VOCAB__: inputs holds values from 0 to 262, expected values in "
         "[0, 262)"),
        ([*LANGUAGE_FILE, "--inputs", "__BATCH__"], "__BATCH__: the inputs' batch sizes differ"),
    ],
)
def test_bad_input_exits_2(args, message, capsys, tmp_path):
    golden = Golden("language_mlm")
    ids, mask = golden.inputs["inputs"], golden.inputs["input_mask"]
    replacements = {"__GOLDEN__": str(golden.checkpoint), "__IMAGES__": str(GOLDEN / "imagenet_conv" / "inputs.npz"),
                    "__CONFIG__": str(golden.folder / "reduced_config.json"), "__FOLDER__": str(tmp_path / "folder"),
                    "__TRUNCATED__": str(tmp_path / "truncated.npz"), "__NPY__": str(tmp_path / "inputs.npy")}
    (tmp_path / "folder").mkdir()
    (tmp_path / "truncated.npz").write_bytes((golden.folder / "inputs.npz").read_bytes()[:200])
    np.save(tmp_path / "inputs.npy", ids)
    vocab = ids.copy()
    vocab[0, 0] = 262
    for name, inputs in {"SHORT": (ids[:, :32], mask[:, :32]), "ROW": (ids[0], mask[0]), "VOCAB": (vocab, mask),
                         "FLOAT": (ids.astype(np.float32), mask), "BATCH": (ids, mask[:2])}.items():
        replacements[f"__{name}__"] = str(tmp_path / f"{name.lower()}.npz")
        np.savez(replacements[f"__{name}__"], inputs=inputs[0], input_mask=inputs[1])
    status = main(["verify", *[replacements.get(arg, arg) for arg in args]])
    error = capsys.readouterr().err
    for placeholder, value in replacements.items():
        message = message.replace(placeholder, value)
    assert status == 2 and message in error, error


def test_save_reference_replaces_a_file_only_with_force_and_atomically(capsys, tmp_path, monkeypatch):
    golden = Golden("language_mlm")
    path = tmp_path / "reference.npz"
    path.write_bytes(b"precious")
    save = ["verify", *_golden_args(golden), "--save-reference", str(path)]
    assert main(save) == 2 and f"{path} already exists; pass --force" in capsys.readouterr().err

    def disk_full(fd):  # a full disk shows when the written pages go to it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main([*save, "--force"]) == 2
    assert f"cannot write {path}: No space left on device" in capsys.readouterr().err
    assert path.read_bytes() == b"precious" and list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    assert main([*save, "--force"]) == 0 and load_reference(path).task == "language_mlm"


def test_a_config_that_does_not_fit_the_checkpoint_exits_2(capsys, tmp_path):
    """A configuration of other shapes is named by the conversion's ledger on the command line, and by the
    reference's tree check through the API; a config of another ImageNet model type than --task is refused."""
    golden = Golden("imagenet_fourier")
    wider = {**golden.config, "encoder": {**golden.config["encoder"], "num_z_channels": 2 * golden.config["encoder"]["num_z_channels"]}}
    (tmp_path / "wider.json").write_text(json.dumps(wider))
    status = main(["verify", str(golden.checkpoint), "--task", "imagenet_fourier", "--config", str(tmp_path / "wider.json")])
    error = capsys.readouterr().err
    assert status == 2 and "does not match the imagenet_fourier model with this configuration" in error, error
    checkpoint = load_haiku_checkpoint(golden.checkpoint)
    with pytest.raises(ConfigError, match="the configuration does not describe this checkpoint"):
        compute_reference(checkpoint, "imagenet_fourier", wider, dict(golden.inputs))
    conv = Golden("imagenet_conv")
    status = main(["verify", str(conv.checkpoint), "--task", "imagenet_fourier", "--config",
                   str(conv.folder / "reduced_config.json")])
    error = capsys.readouterr().err
    assert status == 2 and "describes an imagenet_conv model (prep_type 'conv'" in error, error


def test_a_converted_file_beside_its_source_needs_no_config(capsys, tmp_path):
    """SRC with --converted: the configuration comes from the converted file's header."""
    golden = Golden("imagenet_conv")
    converted = convert_checkpoint(golden.checkpoint, tmp_path / "conv.safetensors", "imagenet_conv", golden.config)
    status, table = _verify(capsys, str(golden.checkpoint), "--converted", str(converted.output))
    assert status == 0 and "PASS" in table


def test_converted_file_of_another_task_or_config_exits_2(references, capsys, tmp_path):
    reference = _reference_of("imagenet_conv", references, capsys)
    golden = Golden("language_mlm")
    language = convert_checkpoint(golden.checkpoint, tmp_path / "language.safetensors", "language_mlm", golden.config)
    assert main(["verify", "--converted", str(language.output), "--reference", str(reference)]) == 2
    assert "holds a language_mlm model, not imagenet_conv" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_without_cuda_exits_2(capsys):
    assert main(["verify", "language_mlm", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _gpu_parity_script():
    spec = importlib.util.spec_from_file_location("gpu_parity", ROOT / "scripts" / "gpu_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_parity_script_runs_on_cpu(references, capsys, tmp_path):
    folder = tmp_path / "references"
    folder.mkdir()
    for task in ("imagenet_fourier", "optical_flow"):
        shutil.copy(_reference_of(task, references, capsys), folder / f"{task}.npz")
    status = _gpu_parity_script().main(["--device", "cpu", "--tasks", "imagenet_fourier", "optical_flow",
                                        "--dtypes", "float32", "bfloat16", "--references", str(folder),
                                        "--json", str(tmp_path / "reports.json")])
    out = capsys.readouterr().out
    print(out)
    assert status == 0
    summary = out[out.index("summary"):].splitlines()
    assert summary[1].split() == ["task", "float32", "bfloat16"]
    assert summary[2].split()[:2] == ["imagenet_fourier", "PASS"] and summary[3].split()[0] == "optical_flow"
    reports = json.loads((tmp_path / "reports.json").read_text())
    assert [(r["task"], r["dtype"], r["passed"]) for r in reports] == [
        ("imagenet_fourier", "float32", True), ("imagenet_fourier", "bfloat16", True),
        ("optical_flow", "float32", True), ("optical_flow", "bfloat16", True)]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("task", ["language_mlm", "imagenet_conv", "multimodal_autoencoding"])
def test_verify_on_cuda(task, dtype, references, capsys):
    golden = Golden(task)
    reference = _reference_of(task, references, capsys)
    status, report = _verify(capsys, *_golden_args(golden), "--reference", str(reference), "--device", "cuda",
                             "--dtype", dtype, "--json")
    print(f"{task} {dtype}: " + ", ".join(f"{c['stage']} {c['relative_error']:.1e}" for c in report["stages"]))
    assert report["device"] == "cuda" and report["dtype"] == dtype
    assert status == 0 and report["passed"], report["first_failure"]
    assert all(math.isfinite(check["max_abs_error"]) for check in report["stages"])
    if dtype == "float32" and task != "multimodal_autoencoding":  # TF32 off: as close to JAX as on the CPU
        assert max(check["relative_error"] for check in report["stages"]) <= 1e-5
