"""Parity of a PyTorch conversion with a JAX reference, stage by stage, on CPU or GPU, in float32,
bfloat16 or float16: what `convert-checkpoint verify` runs.

The same inputs go through a reference and through the PyTorch model (on `device`, in `dtype`). The
reference is one of:

- the project's JAX reference (`converters.jax_reference`, float32 on JAX's CPU) run now, on the
  configuration given: every stage is compared, in the order the data flows (the preprocessor's output,
  the latents, the encoder after its cross-attention and after each self-attention application, the
  decoder queries, the decoder output, the final output). It proves the conversion computes what the
  official modules compute *under that configuration*; a configuration that keeps every shape but
  changes the numbers (another `num_blocks`, head count or Fourier `max_resolution`) runs the same wrong
  model on both sides and passes;
- outputs the user computed with their own JAX code on the same inputs (`read_jax_outputs`), or the
  user's own Haiku forward function run now on the checkpoint (`run_haiku_function`): only the outputs
  are compared, and a configuration that does not describe the checkpoint fails;
- a reference saved earlier (`Reference.save`, `load_reference`), so that a machine without jax (a GPU
  machine, say) can verify against it.

The stages are compared by `converters.comparison`: each within `tolerance` times the reference stage's
scale, the first over it being where the conversion goes wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from perceiver_io.atomic import atomic_output
from perceiver_io.configs import OfficialConfig
from perceiver_io.errors import ConfigError, one_line
from perceiver_io.inputs import dtype_name
from perceiver_io.registry import get_task, parse_config
from perceiver_io.task_inputs import first_chunk, fits_layout, layout_text

from .comparison import StageReport, compare_stages, default_tolerance, is_compared_stage
from .haiku_pickle import HaikuCheckpoint
from .parity import jax_on_cpu, run_jax_reference, run_torch
from .stages import flatten, is_output, unflatten

REFERENCE_FORMAT = "perceiver-io-reference/1"


# ----------------------------------------------------------------------------------------------------
# Configurations and inputs


def reference_config(task: str, config: OfficialConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """The configuration as a reference file records it: every official key (`to_official`)."""
    return parse_config(task, config).to_official()


def synthetic_inputs(task: str, config: OfficialConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Deterministic inputs of the right kind for `task` under `config` (the official call's arguments; the
    task's `synthetic_inputs` in `perceiver_io.registry`): language rows full, half and all padding;
    normalised images; frame pairs in [-1,1]; clips with the colab's first chunk of points; custom inputs
    of the config's `input_shape`."""
    spec = get_task(task)
    return spec.synthetic_inputs(spec.parse_config(config))


def read_inputs(path: str | Path, task: str, config: OfficialConfig | Mapping[str, Any] | None = None,
                default_chunk: bool = True) -> dict:
    """Inputs from an npz file of the official call's arguments (a golden `inputs.npz`, say); nested ones
    as `name/key` (`subsampling/image`). The multimodal model's `subsampling` defaults to the first chunk,
    unless not `default_chunk` (outputs computed on them must say which points they decoded)."""
    inputs = unflatten(_read_npz(path, "inputs"))
    if task == "multimodal_autoencoding" and "subsampling" not in inputs:
        if not default_chunk:
            raise ConfigError(f"inputs file {path} has no subsampling/image and subsampling/audio: give the indices "
                              "of the points your JAX code decoded (its outputs are one chunk of queries)")
        inputs["subsampling"] = first_chunk(parse_config(task, config))
    check_inputs(task, config, inputs, str(path))
    return inputs


NUMPY_KINDS = {"integer": "iu", "floating": "f", "any": "biuf"}
"""numpy's dtype kinds for each kind of values of an `InputSpec`."""


def check_inputs(task: str, config: OfficialConfig | Mapping[str, Any] | None, inputs: Mapping[str, Any],
                 where: str) -> None:
    """Raises ConfigError, naming `where` and the array, unless `inputs` are the official call's arrays of
    `task` with the layouts, dtypes and index ranges of its `inputs` (`perceiver_io.registry`)."""
    spec = get_task(task)
    specs = spec.inputs(spec.parse_config(config))
    arrays = {name: np.asarray(value) for name, value in flatten(inputs).items()}
    if set(arrays) != set(specs):
        raise ConfigError(f"{where}: the {task} model takes {sorted(specs)}, found {sorted(arrays)}")
    for name, spec in specs.items():
        array = arrays[name]
        expected = layout_text(spec.layout, spec.what)
        if not fits_layout(array.shape, spec.layout):
            raise ConfigError(f"{where}: {name} has shape {list(array.shape)}, expected {expected}")
        if array.dtype.kind not in NUMPY_KINDS[spec.values]:
            raise ConfigError(f"{where}: {name} has dtype {array.dtype}, expected {spec.values} {expected}")
        if spec.bound is not None and array.size and not 0 <= array.min() <= array.max() < spec.bound:
            raise ConfigError(f"{where}: {name} holds values from {array.min()} to {array.max()}, expected values "
                              f"in [0, {spec.bound}) ({spec.what})")
    batches = {name: arrays[name].shape[0] for name, spec in specs.items() if spec.layout[0] == "B"}
    if len(set(batches.values())) > 1:
        raise ConfigError(f"{where}: the inputs' batch sizes differ: {batches}; give each the same batch")


def torch_inputs(task: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The official call's arguments as the PyTorch task model's keyword arguments."""
    if task == "multimodal_autoencoding":
        torch_kwargs = {key: value for key, value in inputs.items() if key != "subsampling"}
        torch_kwargs["subsampled_points"] = {**inputs["subsampling"], "label": None}
        return torch_kwargs
    return dict(inputs)


def _read_npz(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an npz file by name; a missing or unreadable file is an error naming `what` it is."""
    try:
        arrays = np.load(path)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ConfigError(f"{what} file {path} holds a single array (.npy), not an npz archive of named "
                              "arrays; write it with np.savez(path, name=array, ...)")
        with arrays:
            return {name: arrays[name] for name in arrays.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except (ConfigError, MemoryError):
        raise
    except Exception as error:  # numpy's and zipfile's errors for a truncated or foreign file
        raise ConfigError(f"{what} file {path} is not a readable npz archive of named arrays (np.savez) "
                          f"({type(error).__name__}: {error})") from None


# ----------------------------------------------------------------------------------------------------
# The reference


@dataclass(frozen=True)
class Reference:
    """A reference's stages on `inputs` (official call arguments) for `task` under `config`."""

    task: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    stages: dict[str, np.ndarray]
    origin: str

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Writes an npz file: `inputs/<name>`, `stages/<name>` and a JSON header under `__meta__`. Atomic; an
        existing file is kept (FileExistsError) unless `overwrite`."""
        meta = {"format": REFERENCE_FORMAT, "task": self.task, "config": self.config, "origin": self.origin}
        arrays = {f"inputs/{name}": value for name, value in flatten(self.inputs).items()}
        arrays.update({f"stages/{name}": value for name, value in self.stages.items()})
        with atomic_output(path, overwrite) as file:
            np.savez_compressed(file, __meta__=np.array(json.dumps(meta)), **arrays)
        return Path(path)

    @property
    def outputs_only(self) -> bool:
        """Whether the reference holds the outputs alone (the user's JAX outputs or Haiku function's)."""
        return all(is_output(name) for name in self.stages)

    def check_outputs(self, ours: Mapping[str, np.ndarray]) -> None:
        """Raises ConfigError unless the reference's outputs are the PyTorch model's (`ours`, flat stages):
        the same names and shapes, finite floating-point values. A mismatch is bad input, not a failed
        stage: the user's outputs cannot be of this model on these inputs."""
        expected = {name: value.shape for name, value in ours.items() if is_output(name)}
        if set(self.stages) != set(expected):
            raise ConfigError(f"{self.origin}: the outputs are named {sorted(self.stages)}, the {self.task} "
                              f"model's are {sorted(expected)}")
        for name, value in self.stages.items():
            value = np.asarray(value)
            if value.dtype.kind != "f":
                raise ConfigError(f"{self.origin}: {name} holds {value.dtype} values, not floating-point ones")
            if value.shape != expected[name]:
                raise ConfigError(f"{self.origin}: {name} has shape {list(value.shape)}, the model's output "
                                  f"{list(expected[name])}")
            if not np.isfinite(value).all():
                raise ConfigError(f"{self.origin}: {name} holds NaN or inf")


def reference_from_stages(task: str, config: OfficialConfig | Mapping[str, Any] | None, inputs: Mapping[str, Any],
                          arrays: Mapping[str, np.ndarray], origin: str) -> Reference:
    """A reference of the compared stages among `arrays` (flat names): what the JAX reference recorded, or
    what the official code did (a golden or example folder's `intermediates.npz` and `outputs.npz`)."""
    stages = {name: np.asarray(value) for name, value in arrays.items() if is_compared_stage(name)}
    return Reference(task, reference_config(task, config), dict(inputs), stages, origin)


def compute_reference(
    checkpoint: HaikuCheckpoint, task: str, config: OfficialConfig | Mapping[str, Any] | None, inputs: Mapping
) -> Reference:
    """Runs the project's JAX reference (float32, JAX on CPU) on the checkpoint; needs jax."""
    stages = run_jax_reference(checkpoint, task, parse_config(task, config), inputs)
    origin = f"JAX reference run now (jax {importlib.metadata.version('jax')}, float32 on CPU)"
    return reference_from_stages(task, config, inputs, stages, origin)


def read_jax_outputs(path: str | Path, task: str, config: OfficialConfig | Mapping[str, Any] | None,
                     inputs: Mapping[str, Any], inputs_path: str | Path) -> Reference:
    """The outputs the user's own JAX code computed on `inputs` (read from `inputs_path`), as a reference
    whose only stages are the outputs. The npz file holds the output under `out`, or a mapping of outputs
    (the multimodal model's) under `out/<name>`; a file without `out` names is read as that mapping's
    names (`audio`, `image`, `label`), and a file of one array as the output itself."""
    flat = _read_npz(path, "outputs")
    if not flat:
        raise ConfigError(f"outputs file {path} holds no array")
    if not any(is_output(name) for name in flat):
        flat = {"out": next(iter(flat.values()))} if len(flat) == 1 else {f"out/{name}": v for name, v in flat.items()}
    unknown = sorted(name for name in flat if not is_output(name))
    if unknown:
        raise ConfigError(f"outputs file {path}: {unknown} are not outputs; name the output `out` (or `out/<name>` "
                          "for each output of a mapping)")
    origin = f"your JAX outputs {path} on {inputs_path}"
    return Reference(task, reference_config(task, config), dict(inputs), flat, origin)


def load_haiku_function(spec: str):
    """The callable that `spec` names: `package.module:function`, or `path/to/file.py:function`. The module
    is imported as Python would run it: the working folder (and a file's own folder) on `sys.path`, the
    module in `sys.modules`; its failure, `sys.exit` included, is a ConfigError."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise ConfigError(f"--haiku-fn {spec}: expected module:function (a module path or a .py file, then the "
                          "function's name)")
    is_file = module_name.endswith(".py") or os.sep in module_name
    if is_file and not Path(module_name).is_file():
        raise ConfigError(f"--haiku-fn {spec}: no Python file at {module_name}")
    folders = [os.getcwd(), *([str(Path(module_name).resolve().parent)] if is_file else [])]
    saved_path = list(sys.path)
    sys.path[:0] = folders
    try:
        module = _import_file(Path(module_name)) if is_file else importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # the user's module failed to import, or exited
        raise ConfigError(f"--haiku-fn {spec}: importing {module_name} failed: {one_line(error)}") from None
    finally:
        sys.path[:] = saved_path
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"--haiku-fn {spec}: {module_name} has no function {function_name!r}")
    return function


def _import_file(path: Path):
    """The module of a .py file, registered in `sys.modules` by its stem (with a suffix if the stem names a
    module already imported, which it must not replace)."""
    name = path.stem if path.stem not in sys.modules else f"{path.stem}__haiku_fn"
    loaded = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loaded)
    sys.modules[name] = module
    try:
        loaded.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run_haiku_function(spec: str, checkpoint: HaikuCheckpoint, task: str,
                       config: OfficialConfig | Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> Reference:
    """The user's Haiku forward function `spec` (see `load_haiku_function`), transformed with
    `hk.transform_with_state` and applied, unjitted, to the checkpoint's parameters and state and to `inputs`
    as keyword arguments (the official call's: `images`; `inputs`, `input_mask`; `images`, `audio`,
    `subsampling`), on JAX's CPU (`parity.jax_on_cpu`). Its return value, an array or a mapping of them by
    name, is the reference's outputs. Needs jax and dm-haiku."""
    if importlib.util.find_spec("haiku") is None or importlib.util.find_spec("jax") is None:
        raise ConfigError("--haiku-fn needs jax and dm-haiku (pip install '.[jax]')")
    function = load_haiku_function(spec)
    arguments = dict(inputs)
    if "subsampling" in arguments:
        arguments["subsampling"] = {"label": None, **arguments["subsampling"]}  # as the colab passes it
    with jax_on_cpu() as jax:
        import haiku as hk

        try:
            out, _ = hk.transform_with_state(function).apply(
                checkpoint.params, checkpoint.state, jax.random.PRNGKey(0), **arguments)
        except Exception as error:  # the user's code failed on this checkpoint or these inputs
            raise ConfigError(f"--haiku-fn {spec} failed on the checkpoint and inputs: {one_line(error)}") from None
    if not isinstance(out, Mapping) and not hasattr(out, "shape"):
        raise ConfigError(f"--haiku-fn {spec} returned a {type(out).__name__}; return the output array, or a "
                          "mapping of the outputs by name")
    stages = {name: np.asarray(value) for name, value in flatten({"out": out}).items()}
    origin = f"your Haiku function {spec} run now (jax {jax.__version__}, dm-haiku {hk.__version__}, float32 on CPU)"
    return Reference(task, reference_config(task, config), dict(inputs), stages, origin)


def load_reference(path: str | Path) -> Reference:
    """A reference saved by `Reference.save` (or `convert-checkpoint verify --save-reference`)."""
    flat = _read_npz(path, "reference")
    not_a_reference = f"{path} is not a reference file written by verify --save-reference"
    try:
        meta = json.loads(str(flat.pop("__meta__")))
        format_, task, config, origin = meta["format"], meta["task"], meta["config"], meta["origin"]
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{not_a_reference} ({type(error).__name__}: {error})") from None
    if format_ != REFERENCE_FORMAT:
        raise ConfigError(f"{not_a_reference} (format {format_!r})")
    inputs = unflatten({name[len("inputs/"):]: value for name, value in flat.items() if name.startswith("inputs/")})
    stages = {name[len("stages/"):]: value for name, value in flat.items() if name.startswith("stages/")}
    check_inputs(task, config, inputs, str(path))
    return Reference(task, config, inputs, stages, f"{origin}, saved in {path}")


@contextlib.contextmanager
def full_float32_matmuls() -> Iterator[None]:
    """TF32 off in PyTorch's matmuls and convolutions (on by default for cuDNN), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def verify_model(
    model: nn.Module,
    reference: Reference,
    *,
    model_origin: str,
    tolerance: float | None = None,
) -> StageReport:
    """Runs `model` (already on its device and in its dtype) on the reference's inputs and compares."""
    parameter = next(model.parameters())
    dtype = dtype_name(parameter.dtype)
    tolerance = default_tolerance(reference.task, dtype) if tolerance is None else tolerance
    with full_float32_matmuls():
        ours = run_torch(model, torch_inputs(reference.task, reference.inputs))
    if reference.outputs_only:
        reference.check_outputs(ours)
    checks, only_ours, only_theirs = compare_stages(ours, reference.stages, tolerance)
    inputs = {name: f"{'x'.join(map(str, value.shape))} {value.dtype}" for name, value in flatten(reference.inputs).items()}
    return StageReport(
        task=reference.task,
        model=model_origin,
        reference=reference.origin,
        device=parameter.device.type,
        dtype=dtype,
        tolerance=tolerance,
        inputs=inputs,
        stages=checks,
        only_in_pytorch=only_ours,
        only_in_reference=only_theirs,
    )
