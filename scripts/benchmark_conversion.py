"""How fast `convert-checkpoint` converts the full-size language checkpoint, as ratios to the machine.

    python3 scripts/benchmark_conversion.py [--task language_mlm] [--repeats 3] [--workdir DIR] [--keep]

A random tree with the released shapes (`tests/data/manifests/<task>.json`, 201M parameters, 767 MiB for
language_mlm) is written in the released pickle format with `save_haiku_pickle`. Then, from the page
cache:

- the references: `shutil.copyfile` of the same file; the same followed by an fsync of the copy (the
  conversion fsyncs its output before renaming it into place, so that a crash never leaves a partial file
  under the final name); and the sha256 of the source on one core (the converted file records it);
- the conversion: `convert-checkpoint SRC -o DST --task TASK` in a child process, start-up included; its
  peak resident memory is the child's own `ru_maxrss` (from `os.wait4`, so no other child counts). The
  first run starts with an empty cache (`$PERCEIVER_IO_CACHE` is a fresh folder), so it builds the model
  on the meta device to learn the state_dict shapes, which imports torch; the next `--repeats` runs read
  those shapes from the cache, as every later conversion of the same configuration does. The figures are
  the medians.

Each kind of run is repeated back to back. On this VM a plain copy that comes right after any fsynced
800 MB write (a conversion, or a copy with fsync) takes about 2 s instead of 0.25 s, whatever the wait,
so alternating the kinds would make the copy reference meaningless.

Printed: wall time / copy time (target at most 2x) and peak RSS / file size (target at most 1.25x).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converters.haiku_pickle import save_haiku_pickle  # noqa: E402
from converters.synthetic import random_tree  # noqa: E402

MANIFESTS = ROOT / "tests" / "data" / "manifests"
WALL_TARGET = 2.0
MEMORY_TARGET = 1.25


def write_source(task: str, folder: Path) -> Path:
    """The task's full-size random checkpoint in the released format, in `folder` (reused if there)."""
    manifest = json.loads((MANIFESTS / f"{task}.json").read_text())
    path = folder / manifest["checkpoint"].rsplit("/", 1)[-1]
    if not path.exists():
        rng = np.random.default_rng(0)
        state = random_tree(manifest["state"], rng) if manifest.get("state") else None
        save_haiku_pickle(path, random_tree(manifest["params"], rng), state)
    return path


def read_through(path: Path) -> None:
    """Reads the file once, so that what follows reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def time_copy(source: Path, folder: Path, durable: bool) -> float:
    """Seconds of `shutil.copyfile`, and with `durable` of an fsync of the copy too (as the conversion's
    atomic output does before its rename)."""
    target = folder / "copy.bin"
    start = time.perf_counter()
    shutil.copyfile(source, target)
    if durable:
        with open(target, "rb") as copy:
            os.fsync(copy.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def time_sha256(source: Path) -> float:
    """Seconds of the sha256 of the file (one core), which the converted file's header records."""
    start = time.perf_counter()
    with open(source, "rb") as f:
        hashlib.file_digest(f, "sha256")
    return time.perf_counter() - start


def time_conversion(source: Path, output: Path, task: str, cache: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and stdout of one `convert-checkpoint` run in a child process, to a new
    output file (as the copy: replacing an existing file would add its deletion)."""
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "converters.cli", str(source), "-o", str(output), "--task", task]
    environment = {**os.environ, "PERCEIVER_IO_CACHE": str(cache)}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the max over all children
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"convert-checkpoint failed ({child.returncode}):\n{stderr.read()}")
        return seconds, usage.ru_maxrss * 1024, stdout.read().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="language_mlm", help="which released shapes (default language_mlm)")
    parser.add_argument("--repeats", type=int, default=3, help="copies and conversions timed (median; default 3)")
    parser.add_argument("--workdir", type=Path, help="folder for the source and the output (default: a temporary "
                        "one); a source already there is reused")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    folder = args.workdir or Path(tempfile.mkdtemp(prefix="perceiver_conversion_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        source = write_source(args.task, folder)
        size = source.stat().st_size
        print(f"source: {source} ({size / 2**20:.0f} MiB, written in {time.perf_counter() - start:.1f} s)")
        read_through(source)
        output, cache = folder / f"{args.task}.safetensors", folder / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cold = time_conversion(source, output, args.task, cache)
        measures = {  # each kind run `repeats` times in a row, each from the page cache
            "copies": lambda: time_copy(source, folder, durable=False),
            "durable": lambda: time_copy(source, folder, durable=True),
            "hashes": lambda: time_sha256(source),
            "runs": lambda: time_conversion(source, output, args.task, cache),
        }
        timings = {kind: [] for kind in measures}
        for kind, measure in measures.items():
            for _ in range(args.repeats):
                read_through(source)
                timings[kind].append(measure())
        copies, durable_copies, hashes, runs = timings.values()
        print(runs[-1][2])
        copy, durable, sha256 = (statistics.median(times) for times in (copies, durable_copies, hashes))
        wall = statistics.median(seconds for seconds, _, _ in runs)
        peak = max(rss for _, rss, _ in runs)
        print(f"\n{'':38s} {'measured':>12s} {'ratio':>7s} {'target':>7s}")
        print(f"{'copy (shutil.copyfile)':38s} {copy:10.2f} s")
        print(f"{'copy, then fsync':38s} {durable:10.2f} s {durable / copy:6.2f}x")
        print(f"{'sha256 of the source (one core)':38s} {sha256:10.2f} s {sha256 / copy:6.2f}x")
        print(f"{'convert-checkpoint wall':38s} {wall:10.2f} s {wall / copy:6.2f}x {WALL_TARGET:6.2f}x"
              f"   ({wall / durable:.2f}x the copy with fsync)")
        print(f"{'convert-checkpoint peak RSS':38s} {peak / 2**20:8.0f} MiB {peak / size:6.2f}x {MEMORY_TARGET:6.2f}x"
              f"   (of the file's {size / 2**20:.0f} MiB)")
        print(f"{'first run, empty shape cache: wall':38s} {cold[0]:10.2f} s {cold[0] / copy:6.2f}x")
        print(f"{'first run, empty shape cache: RSS':38s} {cold[1] / 2**20:8.0f} MiB {cold[1] / size:6.2f}x")
        print(f"runs: wall {', '.join(f'{s:.2f}' for s, _, _ in runs)} s; copies {', '.join(f'{s:.2f}' for s in copies)}"
              f" s; with fsync {', '.join(f'{s:.2f}' for s in durable_copies)} s")
        within = wall / copy <= WALL_TARGET and peak / size <= MEMORY_TARGET
        print("within both targets" if within else "over a target")
        return 0 if within else 1
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(folder)


if __name__ == "__main__":
    sys.exit(main())
