"""The parity suite on a GPU: every ported task's golden checkpoint (`tests/data/golden/<task>`) converted
and run by PyTorch on CUDA in float32, bfloat16 and float16, against the JAX reference (float32, JAX on
CPU), stage by stage as `convert-checkpoint verify` reports it. Prints a table per task and run, then a
summary; exit status 0 when every run is within its tolerance, 1 otherwise, 2 on bad input.

    python3 scripts/gpu_parity.py                                  # cuda if PyTorch sees one, else cpu
    python3 scripts/gpu_parity.py --device cpu --dtypes float32 --tasks language_mlm
    python3 scripts/gpu_parity.py --device cpu --save-references .parity-references   # JAX here, saved
    python3 scripts/gpu_parity.py --references .parity-references  # no jax needed

The reference runs once per task and serves every dtype. It needs jax only (not dm-haiku); the GPU
machines of this workplace have jax (0.11.2). Pure-Python wheels a machine lacks can be fetched here, in
the repository root, into .whl and carried (`scripts/gpu_parity.sh` installs that folder into /tmp/site):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl PACKAGE==VERSION

Where jax is missing (jaxlib alone is about 80 MB, over the device tool's 64 MiB for what travels),
compute the references here and carry them instead:

    echo /.parity-references/ >> .git/info/exclude
    python3 scripts/gpu_parity.py --device cpu --save-references .parity-references
    # there, with carry [".parity-references"]:
    python3 scripts/gpu_parity.py --references .parity-references

For float32 on GPU, TF32 is off in PyTorch's matmuls and convolutions, and JAX runs its matmuls at
'highest' precision, so both sides compute in full float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project need not be installed on the GPU machine

import torch  # noqa: E402

from converters.haiku_pickle import load_haiku_checkpoint  # noqa: E402
from converters.parity import jax_available  # noqa: E402
from converters.verify import compute_reference, load_reference, read_inputs, verify_model  # noqa: E402
from perceiver_io.errors import ConfigError  # noqa: E402
from perceiver_io.placement import DTYPES  # noqa: E402
from perceiver_io.registry import TASKS  # noqa: E402
from perceiver_io.serialization import load  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden"


def golden_tasks() -> list[str]:
    return [task for task in TASKS if (GOLDEN / task / "reduced_config.json").exists()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--tasks", nargs="+", choices=golden_tasks(), default=golden_tasks())
    parser.add_argument("--tolerance", type=float, help="override every run's tolerance (relative to scale)")
    references = parser.add_mutually_exclusive_group()
    references.add_argument("--references", type=Path, help="folder of <task>.npz references saved earlier")
    references.add_argument("--save-references", type=Path, help="write each task's reference to <task>.npz here")
    parser.add_argument("--json", type=Path, help="also write every report to this JSON file")
    return parser


def _reference(task: str, folder: Path, args: argparse.Namespace):
    config = json.loads((folder / "reduced_config.json").read_text())
    if args.references:
        reference = load_reference(args.references / f"{task}.npz")
        if reference.task != task:
            raise ConfigError(f"{args.references / f'{task}.npz'} is a reference of {reference.task}")
        return reference, config
    if not jax_available():
        raise ConfigError("jax is needed for the reference: bring its wheels, or pass "
                          "--references with references saved elsewhere (see this script's docstring)")
    checkpoint = load_haiku_checkpoint(folder / json.loads((folder / "config.json").read_text())["checkpoint_file"])
    reference = compute_reference(checkpoint, task, config, read_inputs(folder / "inputs.npz", task, config))
    if args.save_references:
        args.save_references.mkdir(parents=True, exist_ok=True)
        reference.save(args.save_references / f"{task}.npz", overwrite=True)
    return reference, config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_parity: error: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"PyTorch {torch.__version__} on {args.device} ({device_name})")
    reports = []
    summary: dict[str, dict[str, str]] = {}
    for task in args.tasks:
        folder = GOLDEN / task
        try:
            start = time.perf_counter()
            reference, config = _reference(task, folder, args)
            print(f"\n{task}: reference ready in {time.perf_counter() - start:.1f} s")
        except (ConfigError, FileNotFoundError) as error:
            print(f"gpu_parity: error: {error}", file=sys.stderr)
            return 2
        checkpoint = folder / json.loads((folder / "config.json").read_text())["checkpoint_file"]
        for dtype in args.dtypes:
            model = load(checkpoint, args.device, DTYPES[dtype], task=task, config=config)
            report = verify_model(model, reference, model_origin=f"golden {checkpoint.name} (converted in memory)",
                                  tolerance=args.tolerance)
            print(f"\n{report.table()}")
            reports.append(report.to_json())
            worst = max(report.stages, key=lambda check: check.relative_error)
            summary.setdefault(task, {})[dtype] = (
                f"PASS {worst.relative_error:.1e}" if report.passed
                else f"FAIL at {report.first_failure}"
            )
    print(f"\nsummary ({args.device}, {device_name}): worst error relative to the stage's scale, or the first "
          "stage over tolerance")
    print(f"  {'task':26s}" + "".join(f"{dtype:>26s}" for dtype in args.dtypes))
    for task, row in summary.items():
        print(f"  {task:26s}" + "".join(f"{row[dtype]:>26s}" for dtype in args.dtypes))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0 if all(report["passed"] for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
