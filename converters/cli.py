"""`convert-checkpoint`: Haiku checkpoints to PyTorch safetensors files.

    convert-checkpoint SRC -o DST [--task TASK] [--config CONFIG.json] [--force]
    convert-checkpoint --example [-o DST] [--force]
    convert-checkpoint --download --task TASK [-o DST] [--config CONFIG.json] [--force]
    convert-checkpoint --list

The second form is the project's main job on the small checkpoint that ships with it: convert, load,
run, and print the parity against the official JAX outputs and the Haiku reference. The third fetches
the released checkpoint of TASK into the cache (`perceiver_io.hub`) and, given -o, converts it there.
The fourth lists the released checkpoints and what the cache holds of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from perceiver_io.checkpoint_file import CheckpointFileError
from perceiver_io.configs import ConfigError
from perceiver_io import hub
from perceiver_io.tasks import TASKS

from .convert import ConversionReport, convert_checkpoint
from .errors import ConversionError

EXAMPLE_TASK = "language_mlm"
EXAMPLE_CHECKPOINT = "language_perceiver_io_bytes.pickle"
EXAMPLE_OUTPUT = Path("pytorch_checkpoints/language_mlm_example.safetensors")
EXAMPLE_TOLERANCE = 1e-4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert-checkpoint",
        description="Convert a Haiku (JAX) Perceiver IO checkpoint to a PyTorch safetensors file.",
    )
    parser.add_argument("source", nargs="?", help="Haiku checkpoint: .pickle/.pystate (released format) or .npz")
    parser.add_argument("-o", "--output", help="the safetensors file to write")
    parser.add_argument("--task", choices=list(hub.RELEASES),
                        help=f"which model the checkpoint holds (ported to PyTorch: {', '.join(sorted(TASKS))})")
    parser.add_argument("--config", help="JSON file with the model's configuration in the official colab keys "
                        "(default: the task's released configuration)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--example", action="store_true",
                        help="convert the small language checkpoint that ships with the project, run it, and "
                        "print its parity with the official JAX outputs")
    parser.add_argument("--download", action="store_true",
                        help="fetch the released checkpoint of --task into the cache (PERCEIVER_IO_CACHE, default "
                        "~/.cache/perceiver_io); with -o, convert it to DST")
    parser.add_argument("--list", action="store_true",
                        help="list the released checkpoints, their sizes, and which are downloaded and converted "
                        "in the cache")
    return parser


def _read_config(path: str | None):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None


def _print_report(report: ConversionReport) -> None:
    state = f" + {report.num_state_values:,} state values" if report.num_state_values else ""
    print(
        f"converted {report.task}: {report.num_leaves} leaves, {report.num_parameters:,} parameters{state} "
        f"-> {report.output} in {report.seconds:.2f} s"
    )


def _run_example(output: Path, force: bool) -> int:
    from perceiver_io.serialization import load

    from .haiku_pickle import load_haiku_checkpoint
    from .parity import compare, haiku_available, run_haiku_reference, run_torch

    example = resources.files("converters") / "examples" / EXAMPLE_TASK
    with resources.as_file(example) as folder:
        config = json.loads((folder / "reduced_config.json").read_text())
        source = folder / EXAMPLE_CHECKPOINT
        report = convert_checkpoint(source, output, EXAMPLE_TASK, config, overwrite=force)
        _print_report(report)
        inputs = dict(np.load(folder / "inputs.npz"))
        official = dict(np.load(folder / "outputs.npz"))
        checkpoint = load_haiku_checkpoint(source)

    model = load(output)
    ours = run_torch(model, inputs)
    rows = [("official JAX outputs (stored)", compare({"out": ours["out"]}, official))]
    if haiku_available():
        reference = run_haiku_reference(checkpoint, EXAMPLE_TASK, config, inputs)
        rows.append(("Haiku reference (run now)", compare(ours, reference)))
    else:
        print("jax/dm-haiku not installed: comparing with the stored official outputs only "
              "(pip install '.[jax]' to run the Haiku reference too)")
    print(f"\nparity of {output} (PyTorch) on the example batch {inputs['inputs'].shape}:")
    print(f"  {'against':32s} {'stage':16s} {'max abs error':>14s} {'output scale':>13s}")
    worst = 0.0
    for against, errors in rows:
        for error in errors:
            print(f"  {against:32s} {error.stage:16s} {error.max_abs_error:14.3e} {error.scale:13.3f}")
            worst = max(worst, error.max_abs_error)
    nan = any(not np.isfinite(value).all() for value in ours.values())
    passed = worst <= EXAMPLE_TOLERANCE and not nan
    print(f"\n{'PASS' if passed else 'FAIL'}: worst max abs error {worst:.3e} "
          f"(tolerance {EXAMPLE_TOLERANCE:g}){', NaN found' if nan else ''}")
    return 0 if passed else 1


def _list_releases() -> int:
    print(f"{'name':25s} {'file':44s} {'size':>8s}  {'downloaded':10s} {'converted':9s} PyTorch model")
    for name, release in hub.RELEASES.items():
        downloaded = "yes" if hub.original_path(name).exists() else "no"
        converted = "yes" if hub.converted_path(name).exists() else "no"
        ported = "yes" if release.task in TASKS else "not yet"
        print(f"{name:25s} {release.file_name:44s} {release.approx_bytes / 1e9:5.2f} GB  {downloaded:10s} "
              f"{converted:9s} {ported}")
    print(f"cache: {hub.get_cache_dir()} (set ${hub.CACHE_ENV} to change it)")
    return 0


def _download(args: argparse.Namespace) -> int:
    if args.source:
        raise ConfigError("--download takes no SRC: it fetches the released checkpoint of --task")
    if not args.task:
        raise ConfigError(f"--download needs --task; one of {', '.join(hub.RELEASES)}")
    if args.config and not args.output:
        raise ConfigError("--config is for the conversion: give -o DST too")
    if args.output and not hub.is_ported(args.task):
        raise ConfigError(f"the {args.task} model is not ported to PyTorch yet, so its checkpoint cannot be "
                          "converted; run --download without -o to fetch the original file only")
    original = hub.download(args.task)
    print(f"{args.task}: {original}")
    if args.output:
        config = _read_config(args.config)
        _print_report(convert_checkpoint(original, args.output, args.task, config or hub.RELEASES[args.task].config,
                                         args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list:
            return _list_releases()
        if args.download:
            return _download(args)
        if args.example:
            if args.source or args.task or args.config:
                raise ConfigError("--example takes no SRC, --task or --config")
            return _run_example(Path(args.output) if args.output else EXAMPLE_OUTPUT, args.force)
        if not args.source or not args.output:
            _parser().print_usage(sys.stderr)
            print("convert-checkpoint: error: SRC and -o DST are required (or --example)", file=sys.stderr)
            return 2
        if not args.task:
            raise ConfigError(f"--task is required; one of {', '.join(sorted(TASKS))}")
        report = convert_checkpoint(args.source, args.output, args.task, _read_config(args.config), args.force)
        _print_report(report)
        return 0
    except (ConversionError, ConfigError, CheckpointFileError, hub.DownloadError, FileExistsError,
            FileNotFoundError) as error:
        print(f"convert-checkpoint: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
