"""`convert-checkpoint`: Haiku checkpoints to PyTorch safetensors files, and back; parity with JAX.

    convert-checkpoint [convert] SRC -o DST [--task TASK] [--config CONFIG.json] [--force]
    convert-checkpoint example [-o DST] [--force]
    convert-checkpoint download TASK [-o DST] [--config CONFIG.json] [--force]
    convert-checkpoint list
    convert-checkpoint verify [SRC] [--task TASK] [--config CONFIG.json] [--converted FILE.safetensors]
                       [--inputs INPUTS.npz] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                       [--tolerance T] [--json] [--save-reference REF.npz [--force]]
                       [--reference REF.npz | --jax-outputs OUT.npz | --haiku-fn MODULE:FUNCTION]
    convert-checkpoint export SRC.safetensors -o DST.pickle|DST.pystate|DST.npz [--force]
    convert-checkpoint --version

`convert` is the default command: a first argument that is not a command is its SRC. `example` is the
project's main job on the small checkpoint that ships with it: convert, load, run, and print the parity,
stage by stage, against the official JAX outputs and intermediates and the JAX reference. `download`
fetches the released checkpoint of TASK into the cache (`perceiver_io.hub`) and, given -o, converts it.
`list` shows the released checkpoints and what the cache holds of them. `verify` runs a JAX reference (the
project's, the user's own outputs or Haiku function, or a saved one) and the PyTorch model on the same
inputs and reports the error of every stage (`converters.verify`). `export` writes a converted (or
fine-tuned) model back as a Haiku checkpoint, in the released pickle format or as npz (`converters.export`).
The flags of earlier versions, `--example`, `--download --task TASK` and `--list`, still name their commands.

Exit status: 0 done, 1 a verify or example stage over tolerance, 2 bad input (a missing, unreadable or
corrupt file, a wrong task or config, an unknown command, no memory), 130 interrupted (Ctrl-C). SIGTERM and
SIGHUP stop the command through the same clean-up as Ctrl-C, so no temporary file is left behind; they
exit 143 and 129 (128 + the signal's number).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from perceiver_io import hub
from perceiver_io.atomic import check_output
from perceiver_io.errors import ConfigError, PerceiverIOError
from perceiver_io.registry import TASKS, get_task, parse_config, ported

from .convert import ConversionReport, convert_checkpoint

TASK_CHOICES = list(TASKS)
"""The six released models, then `perceiver` (a custom model of the official building set, with --config)."""
EXAMPLE_TASK = "language_mlm"
EXAMPLE_CHECKPOINT = "language_perceiver_io_bytes.pickle"
EXAMPLE_OUTPUT = Path("pytorch_checkpoints/language_mlm_example.safetensors")
CONVERTED = (".safetensors",)
"""The suffix of every converted file this command writes."""


def _parser() -> argparse.ArgumentParser:
    import perceiver_io

    parser = argparse.ArgumentParser(
        prog="convert-checkpoint",
        description="Convert Haiku (JAX) Perceiver IO checkpoints to PyTorch safetensors files and back, and "
        "check a conversion against JAX, stage by stage.",
        epilog="convert is the default command: convert-checkpoint SRC -o DST --task TASK. Each command has its "
        "own --help, e.g. convert-checkpoint verify --help.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {perceiver_io.__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, (summary, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}."))
    return parser


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the Haiku checkpoint: .pickle/.pystate (released format) or "
                        ".npz with flat module/leaf keys; or a transformers-format folder (config.json and weights) "
                        "or Hugging Face Hub id (owner/name)")
    parser.add_argument("-o", "--output", metavar="DST", required=True, help="the .safetensors file to write")
    parser.add_argument("--task", choices=TASK_CHOICES,
                        help=f"which model a Haiku checkpoint holds (ported to PyTorch: {', '.join(ported())}); a "
                        "transformers folder says so in its config.json")
    _config_and_force(parser)


def _config_and_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="CONFIG.json", help="the model's configuration in the official colab "
                        "keys (default: the task's released configuration)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def _example_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="DST", default=str(EXAMPLE_OUTPUT),
                        help=f"the .safetensors file to write (default {EXAMPLE_OUTPUT})")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", choices=list(hub.RELEASES),
                        help=f"the released checkpoint: {', '.join(hub.RELEASES)}")
    parser.add_argument("-o", "--output", metavar="DST", help="also convert it to this .safetensors file")
    _config_and_force(parser)


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    """`list` takes no arguments."""


def _read_config(path: str | None):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error}); save it as UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None


def _output_path(text: str, suffixes: tuple[str, ...], option: str = "-o") -> Path:
    """The file to write, whose suffix must be one of `suffixes` (what is written there is of that format);
    a path ending in a separator names a folder, which is refused."""
    if text.endswith(("/", os.sep)):
        raise ConfigError(f"{option} {text} ends with a separator, so it names a folder; give the path of the "
                          "file to write")
    path = Path(text)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {text}: the file written is {' or '.join(suffixes)}; give a name ending so")
    return path


def _print_report(report: ConversionReport) -> None:
    state = f" + {report.num_state_values:,} state values" if report.num_state_values else ""
    print(
        f"converted {report.task}: {report.num_leaves} leaves, {report.num_parameters:,} parameters{state} "
        f"-> {report.output} in {report.seconds:.2f} s"
    )


def _example(args: argparse.Namespace) -> int:
    from perceiver_io.serialization import load

    from .haiku_pickle import load_haiku_checkpoint
    from .parity import jax_available
    from .verify import compute_reference, reference_from_stages, verify_model

    output, force = _output_path(args.output, CONVERTED), args.force
    example = resources.files("converters") / "examples" / EXAMPLE_TASK
    with resources.as_file(example) as folder:
        config = json.loads((folder / "reduced_config.json").read_text())
        source = folder / EXAMPLE_CHECKPOINT
        report = convert_checkpoint(source, output, EXAMPLE_TASK, config, overwrite=force)
        _print_report(report)
        inputs = dict(np.load(folder / "inputs.npz"))
        official = {**np.load(folder / "intermediates.npz"), **np.load(folder / "outputs.npz")}
        checkpoint = load_haiku_checkpoint(source)

    references = [reference_from_stages(EXAMPLE_TASK, config, inputs, official,
                                        "the official JAX outputs and intermediates (stored with the example)")]
    if jax_available():
        references.append(compute_reference(checkpoint, EXAMPLE_TASK, config, inputs))
    else:
        print("jax not installed: comparing with the stored official outputs and intermediates only "
              "(pip install '.[jax]' to run the JAX reference too)")
    model = load(output)
    reports = [verify_model(model, reference, model_origin=f"{output} (converted now)") for reference in references]
    for parity in reports:
        print(f"\n{parity.table()}")
    return 0 if all(parity.passed for parity in reports) else 1


def _downloaded(path: Path, approx_bytes: int) -> str:
    """'yes' for a cached file of about the release's size (within 5%), its size with a '?' for another."""
    if not path.exists():
        return "no"
    size = path.stat().st_size
    return "yes" if abs(size / approx_bytes - 1) <= 0.05 else f"{size / 1e6:.1f} MB?"


def _list(args: argparse.Namespace) -> int:
    print(f"{'name':25s} {'file':44s} {'size':>8s}  {'downloaded':10s} {'converted':9s} use with")
    for name, release in hub.RELEASES.items():
        downloaded = _downloaded(hub.original_path(name), release.approx_bytes)
        converted = "yes" if hub.converted_path(name).exists() else "no"
        spec = TASKS[name]
        use = (spec.pipeline or spec.model).replace(":", ".") if spec.model else "not ported yet"
        print(f"{name:25s} {release.file_name:44s} {release.approx_bytes / 1e9:5.2f} GB  {downloaded:10s} "
              f"{converted:9s} {use}")
    print(f"cache: {hub.get_cache_dir()} (set ${hub.CACHE_ENV} to change it)")
    return 0


def _download(args: argparse.Namespace) -> int:
    if args.config and not args.output:
        raise ConfigError("--config is for the conversion: give -o DST too")
    if args.output and not hub.is_ported(args.task):
        raise ConfigError(f"the {args.task} model is not ported to PyTorch yet, so its checkpoint cannot be "
                          "converted; run download without -o to fetch the original file only")
    output = _output_path(args.output, CONVERTED) if args.output else None
    config = _read_config(args.config)
    original = hub.download(args.task)
    print(f"{args.task}: {original}")
    if output:
        report = convert_checkpoint(original, output, args.task, config, args.force)
        _print_report(report)
    return 0


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_io.placement import DTYPES

    parser.description = (
        "Run a JAX reference and the PyTorch model on the same inputs, and report for every stage the max abs "
        "error, the error relative to the stage's scale, and the first stage over tolerance. The reference is the "
        "project's JAX reference run on --config (default), which proves the conversion computes what the "
        "official modules compute under that configuration; a configuration that keeps every shape but changes "
        "the numbers is caught only against your own outputs (--jax-outputs) or your own Haiku code (--haiku-fn). "
        "Exit status: 0 all within tolerance, 1 over tolerance, 2 bad input.")
    parser.add_argument("source", nargs="?", metavar="SRC",
                        help="the Haiku checkpoint: a released name (" + ", ".join(hub.RELEASES) + "; downloaded "
                        "into the cache if needed) or a .pickle/.pystate/.npz file")
    parser.add_argument("--task", choices=TASK_CHOICES, help="the checkpoint's model (required for a file, unless "
                        "--converted or --reference names it)")
    parser.add_argument("--config", help="JSON file with the model's configuration in official colab keys "
                        "(default: the task's released configuration)")
    parser.add_argument("--converted", help="the PyTorch conversion to check (.safetensors); default: convert SRC "
                        "in memory")
    parser.add_argument("--inputs", help="npz file of the official call's arguments (e.g. a golden inputs.npz; "
                        "nested ones as subsampling/image); default: deterministic synthetic inputs of the right "
                        "kind for the task and config")
    parser.add_argument("--device", default="cpu", help="where PyTorch runs: cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--dtype", default="float32", help=f"PyTorch's dtype: {', '.join(DTYPES)} or an alias such "
                        "as bf16 (default float32)")
    parser.add_argument("--tolerance", type=float,
                        help="max error relative to each stage's scale (default: 1e-4 in float32, 1e-3 for "
                        "multimodal_autoencoding; 4e-2 in bfloat16, 5e-3 in float16)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--save-reference", metavar="REF.npz",
                        help="also write the reference's inputs and stages to REF.npz")
    parser.add_argument("--force", action="store_true", help="replace the --save-reference file if it exists")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--reference", metavar="REF.npz",
                           help="compare with a reference saved by --save-reference instead of running JAX "
                           "(its inputs are used; no jax needed)")
    reference.add_argument("--jax-outputs", metavar="OUT.npz",
                           help="compare with outputs your own JAX code computed on --inputs: the output under "
                           "'out', or a mapping of outputs under 'out/<name>' (no jax needed)")
    reference.add_argument("--haiku-fn", metavar="MODULE:FUNCTION",
                           help="run your own Haiku forward function (package.module:function or file.py:function; "
                           "hk.transform-able, called with the inputs as keyword arguments) on SRC as the reference")


def _verify(args: argparse.Namespace) -> int:
    from perceiver_io.placement import resolve_device, resolve_dtype
    from perceiver_io.serialization import load, task_of

    from .haiku_pickle import load_haiku_checkpoint
    from .parity import jax_available
    from .verify import (
        compute_reference,
        load_reference,
        read_inputs,
        read_jax_outputs,
        run_haiku_function,
        synthetic_inputs,
        verify_model,
    )

    resolve_device(args.device)
    if args.tolerance is not None and not args.tolerance > 0:
        raise ConfigError(f"--tolerance must be positive, got {args.tolerance}")
    if args.reference and (args.inputs or args.save_reference):
        raise ConfigError("--reference brings its own inputs and is saved already; leave out --inputs and "
                          "--save-reference")
    if args.jax_outputs and not args.inputs:
        raise ConfigError("--jax-outputs needs --inputs, the file of the arguments your JAX code was called with")
    if not (args.source or args.converted or args.reference):
        raise ConfigError("give SRC, the Haiku checkpoint (or --converted FILE.safetensors with --reference REF.npz "
                          "or --jax-outputs OUT.npz)")
    save_to = _output_path(args.save_reference, (".npz",), "--save-reference") if args.save_reference else None
    if save_to:
        check_output(save_to, args.force)
    config = _read_config(args.config)
    task = args.task
    source = None
    if args.source:
        if args.source in hub.RELEASES and not Path(args.source).exists():
            if task and task != args.source:
                raise ConfigError(f"the released checkpoint {args.source!r} holds {args.source}, not --task {task}")
            task = args.source
            source = hub.download(args.source)
        else:
            source = Path(args.source)
            if not source.exists():
                raise FileNotFoundError(f"no Haiku checkpoint at {source}, and {args.source!r} is not a released "
                                        f"name ({', '.join(hub.RELEASES)})")

    if args.reference:
        reference = load_reference(args.reference)
        if task and task != reference.task:
            raise ConfigError(f"{args.reference} is a reference of {reference.task}, not of {task}")
        task, config = reference.task, config or reference.config
    dtype = resolve_dtype(args.dtype)
    model = None
    if args.converted:
        model = load(args.converted, args.device, dtype)
        if task and task_of(model) != task:
            raise ConfigError(f"{args.converted} holds a {task_of(model)} model, not {task}")
        task = task_of(model)
        config = config or model.config
        origin = f"{args.converted} (converted file)"
    if not task:
        raise ConfigError(f"--task is required for a checkpoint file; one of {', '.join(hub.RELEASES)}")
    get_task(task).model_class()  # ConfigError for an unknown task or one without a PyTorch model yet
    if not args.reference:
        inputs = (read_inputs(args.inputs, task, config, default_chunk=not args.jax_outputs) if args.inputs
                  else synthetic_inputs(task, config))
    if model is None and source is not None:
        # converted before the reference runs: a configuration that does not fit the checkpoint is named by
        # the conversion's ledger
        model = load(source, args.device, dtype, task=task, config=config)
        origin = f"{source} (converted in memory)"
    if model is None:
        raise ConfigError("with --reference or --jax-outputs, give the PyTorch model: --converted "
                          "FILE.safetensors or SRC")
    if not args.reference:
        if args.jax_outputs:
            reference = read_jax_outputs(args.jax_outputs, task, config, inputs, args.inputs)
        elif source is None:
            raise ConfigError(f"the {'Haiku function' if args.haiku_fn else 'JAX reference'} runs on the Haiku "
                              "checkpoint: give SRC (or compare with --reference REF.npz or --jax-outputs OUT.npz)")
        elif args.haiku_fn:
            reference = run_haiku_function(args.haiku_fn, load_haiku_checkpoint(source), task, config, inputs)
        elif not jax_available():
            raise ConfigError("the JAX reference needs jax (pip install '.[jax]'), or compare with a reference "
                              "saved elsewhere: --reference REF.npz")
        else:
            reference = compute_reference(load_haiku_checkpoint(source), task, config, inputs)
        if save_to:
            reference.save(save_to, overwrite=args.force)
    if model.config != parse_config(task, config):
        raise ConfigError(f"{args.converted} holds another configuration of {task} than the reference's "
                          "(give the checkpoint's --config)")
    report = verify_model(model, reference, model_origin=origin, tolerance=args.tolerance)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write a converted PyTorch checkpoint back as a Haiku checkpoint (released pickle format, "
                          "or npz for a .npz output) that the Haiku code loads as it loads the released files.")
    parser.add_argument("source", metavar="SRC", help="a .safetensors file written by convert-checkpoint or "
                        "perceiver_io.save, or a released name (converted in the cache)")
    parser.add_argument("-o", "--output", metavar="DST", required=True,
                        help="the Haiku checkpoint to write (.pickle, .pkl, .pystate or .npz)")
    parser.add_argument("--layout", choices=["params", "params_and_state"],
                        help="a pickle's top level: bare params, or {'params': ..., 'state': ...} (default: the "
                        "layout of the Haiku checkpoint SRC came from, else the container only for a model with "
                        "state)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")


def _export(args: argparse.Namespace) -> int:
    from perceiver_io.checkpoint_file import is_safetensors_file
    from perceiver_io.serialization import load

    from .export import export_haiku_checkpoint

    output = _output_path(args.output, (".pickle", ".pkl", ".pystate", ".npz"))
    check_output(output, args.force)
    source = Path(args.source)
    if args.source in hub.RELEASES and not source.exists():
        source = hub.download_converted(args.source)
    if source.is_file() and not is_safetensors_file(source):
        raise ConfigError(f"{args.source} is not a converted .safetensors file; export takes one (convert a Haiku "
                          "checkpoint with: convert-checkpoint SRC -o DST.safetensors --task TASK)")
    model = load(source)
    container = None if args.layout is None else args.layout == "params_and_state"  # None: the model's own
    path = export_haiku_checkpoint(model, output, overwrite=args.force, container=container)
    print(f"exported {args.source} ({type(model).__name__}) -> {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    output = _output_path(args.output, CONVERTED)
    from perceiver_io.hf_hub import is_repository_id, is_transformers_folder

    if is_repository_id(args.source) or is_transformers_folder(args.source):
        return _convert_transformers(args, output)
    if args.task is None:
        raise ConfigError(f"--task is required for a Haiku checkpoint; one of {', '.join(TASKS)}")
    report = convert_checkpoint(args.source, output, args.task, _read_config(args.config), args.force)
    _print_report(report)
    return 0


def _convert_transformers(args: argparse.Namespace, output: Path) -> int:
    """A transformers-format folder or Hub repository, imported (`perceiver_io.load`) and saved as a converted
    file."""
    from perceiver_io.serialization import load, save

    if args.task or args.config:
        raise ConfigError(f"{args.source} is a transformers-format folder: its config.json gives the task and "
                          "configuration; leave out --task and --config")
    check_output(output, args.force)
    model = load(args.source)
    path = save(model, output, overwrite=args.force)
    count = sum(parameter.numel() for parameter in model.parameters())
    print(f"converted {model.task} from the transformers folder {args.source}: {count:,} parameters -> {path}")
    return 0


COMMANDS = {
    "convert": ("convert a Haiku checkpoint to a PyTorch safetensors file (the default command)", _convert_arguments,
                _convert),
    "verify": ("check a PyTorch conversion against a JAX reference, stage by stage", _verify_arguments, _verify),
    "export": ("write a converted or fine-tuned model back as a Haiku checkpoint", _export_arguments, _export),
    "download": ("fetch a released checkpoint into the cache, and convert it with -o", _download_arguments,
                 _download),
    "list": ("list the released checkpoints and what the cache holds of them", _list_arguments, _list),
    "example": ("convert the small checkpoint shipped with the project and check its parity with JAX",
                _example_arguments, _example),
}
"""Each command: its summary, what adds its arguments to its parser, and what runs it."""

LEGACY_FLAGS = {"--example": "example", "--list": "list", "--download": "download"}
"""The flags that named these commands in earlier versions (`--download --task TASK` too)."""


def _with_command(argv: list[str]) -> list[str]:
    """`argv` with its command first: a legacy flag becomes its command, and a first argument that is no
    command is the SRC of `convert`. A first word that is neither a command nor a file is refused, so a
    mistyped command is named as such."""
    if not argv or argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version"):
        return argv
    flags = [flag for flag in LEGACY_FLAGS if flag in argv]
    if len(flags) > 1:
        raise ConfigError(f"{' and '.join(flags)} are different commands; give one")
    if flags:
        rest = [argument for argument in argv if argument != flags[0]]
        if flags[0] == "--download":  # its --task TASK (or --task=TASK) is now the command's TASK
            task = next((argument for argument in rest if argument.startswith("--task=")), None)
            if task is not None:
                rest = [task.partition("=")[2], *(argument for argument in rest if argument != task)]
            elif "--task" in rest[:-1]:
                at = rest.index("--task")
                rest = [rest[at + 1], *rest[:at], *rest[at + 2:]]
        return [LEGACY_FLAGS[flags[0]], *rest]
    first = argv[0]
    if not first.startswith("-") and not Path(first).suffix and os.sep not in first and not Path(first).exists():
        raise ConfigError(f"{first!r} is neither a command ({', '.join(COMMANDS)}) nor a checkpoint file")
    return ["convert", *argv]


def _stop(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP stop the command through the same cleanup as Ctrl-C (no temporary file is left)."""
    raise SystemExit(128 + signum)


def _message(error: BaseException) -> str:
    """The error in one line for the user: an OSError as `file: reason`, without its errno."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, MemoryError) and not str(error):
        return "out of memory"
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python handles signals
    previous = {signum: signal.signal(signum, _stop) for signum in signals} if in_main_thread else {}
    program = f"convert-checkpoint {argv[0]}" if argv[:1] and argv[0] in COMMANDS else "convert-checkpoint"
    try:
        argv = _with_command(argv)
        args = _parser().parse_args(argv)
        if args.command is None:
            _parser().print_help(sys.stderr)
            return 2
        return COMMANDS[args.command][2](args)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`convert-checkpoint list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, MemoryError, PerceiverIOError) as error:
        print(f"{program}: error: {_message(error)}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
