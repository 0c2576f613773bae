"""Forward latency and peak memory of the six task models, side by side, as ratios.

    python3 scripts/benchmark.py [--tasks TASK ...] [--warmup 2] [--repeats 5] [--quick]
                                 [--device cpu|cuda] [--dtype float32|bfloat16]
                                 [--skip-compiled] [--skip-transformers] [--skip-jax] [--json RESULTS.json]

Each task runs at its released size, batch 1, with the official input shapes (the video model: the
encoder and one chunk of 6288 queries, 6272 image points + 15 audio patches + 1 label, the colab's first
of 128 chunks), in four implementations with random weights:

- `ours`: this port, `perceiver_io.build_model(task)`, eval mode, under `torch.inference_mode`;
- `compiled`: the same model through `perceiver_io.compile_for_inference` (`torch.compile` with inductor's
  freezing), its first call (the warm-up) compiling it;
- `transformers`: Hugging Face's Perceiver models (PerceiverForMaskedLM, ...ImageClassificationLearned /
  Fourier / ConvProcessing, ...OpticalFlow, ...MultimodalAutoencoding), configured as the released
  models (the same parameter counts as the official manifests), eval mode, `torch.inference_mode`;
- `jax`: the project's JAX reference (`converters.jax_reference.build`) under `jax.jit`, with the
  manifest's configuration and a random parameter tree of the manifest's shapes. Its apply also returns
  the recorded intermediates, as the reference always does.

Every (implementation, task) runs in a child process of its own, so that peak memory is that child's
high-water mark (`ru_maxrss`; on CUDA, the framework's peak device memory) and nothing is shared. Each
child makes `--warmup` untimed forward passes first (the first of which includes compilation for the
compiled port and JAX, reported apart), one child after the other. Then the timed passes go in rounds:
one pass of each implementation in turn, `--repeats` rounds, the children idle between their turns. So
a machine whose speed drifts over minutes (a shared VM) slows every implementation alike. Latency is the
median over the rounds. The input preparation the models expect is outside the timing:
transformers' flow model takes the 3x3 patches already extracted (ours and JAX extract them in the call),
its image models take channels-first pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from perceiver_io.registry import RELEASES  # noqa: E402  (torch-free, so the parent process stays light)

TASKS = tuple(RELEASES)
IMPLEMENTATIONS = ("ours", "compiled", "transformers", "jax")
OURS = ("ours", "compiled")  # the ratios are these over the others
SETTLE_SECONDS = 1.0  # before each timed pass: the previous child's OpenMP/Eigen workers spin ~0.2 s after a pass
IMAGE_CHUNK, AUDIO_CHUNK = 16 * 224 * 224 // 128, 30720 // 16 // 128  # the colab's first chunk: 6272, 15


def _rss() -> int:
    """The current resident set size in bytes (Linux), else the high-water mark."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _serve(run, warmup: int, synchronize) -> dict:
    """The child's side of the rounds: `warmup` untimed calls (the first one's seconds kept), then one timed
    call per "RUN" line on stdin, each answered with "TIME wall cpu" (CPU seconds of all threads), until
    stdin ends."""
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        run()
        synchronize()
        first = first if first is not None else time.perf_counter() - start
    print("READY", flush=True)
    wall, cpu = [], []
    for line in sys.stdin:
        if line.strip() != "RUN":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        print(f"TIME {wall[-1]} {cpu[-1]}", flush=True)
    return {"first": first, "times": wall, "cpu_times": cpu}


# --- the three implementations, each run in a child process -------------------------------------------


def _torch_setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return torch, device, dtype, synchronize


def _torch_cell(args, build, inputs_for, wrap=None) -> tuple[dict, object, object, dict]:
    """A torch implementation's cell: `build()` in eval mode on the device, timed on
    `inputs_for(task, floats, tokens, padding_mask, points)` (random float inputs, token ids, the padding mask
    of the language batch, the first chunk's points) under `torch.inference_mode`, through `wrap(model)` if
    given. Returns the result, the model, its inputs, and the torch setup (for the matrix-product floor)."""
    torch, device, dtype, synchronize = _torch_setup(args)
    baseline = _rss()
    model = build().eval().to(device, dtype)
    generator = torch.Generator().manual_seed(0)
    inputs = inputs_for(
        args.task,
        lambda *shape: torch.rand(*shape, generator=generator).to(device, dtype),
        lambda: torch.randint(6, 262, (1, 2048), generator=generator).to(device),
        (torch.arange(2048) < 1500).int()[None].to(device),
        {"image": torch.arange(IMAGE_CHUNK).to(device), "audio": torch.arange(AUDIO_CHUNK).to(device), "label": None},
    )
    run = wrap(model) if wrap else model
    with torch.inference_mode():
        timing = _serve(lambda: run(**inputs), args.warmup, synchronize)
    setup = {"torch": torch, "device": device, "dtype": dtype, "synchronize": synchronize}
    return _torch_result(torch, device, baseline, timing), model, inputs, setup


def _our_inputs(task, floats, tokens, padding_mask, points) -> dict:
    """The official call: channels-last pixels, the language mask, the video chunk's points."""
    if task == "language_mlm":
        return {"inputs": tokens(), "input_mask": padding_mask}
    if task.startswith("imagenet"):
        return {"images": floats(1, 224, 224, 3) * 2 - 1}
    if task == "optical_flow":
        return {"images": floats(1, 2, 368, 496, 3) * 2 - 1}
    return {"images": floats(1, 16, 224, 224, 3), "audio": floats(1, 30720, 1) * 2 - 1, "subsampled_points": points}


def _ours(args) -> dict:
    import perceiver_io

    wrap = perceiver_io.compile_for_inference if args.child == "compiled" else None
    result, model, inputs, setup = _torch_cell(args, lambda: perceiver_io.build_model(args.task), _our_inputs, wrap)
    if args.child == "ours":
        model.requires_grad_(False)  # FlopCounterMode's module hooks trip over parameters that want gradients
        result.update(_matmul_floor(run=lambda: model(**inputs), **setup))
    return result


def _matmul_floor(torch, run, device, dtype, synchronize) -> dict:
    """The forward pass's matrix-product FLOPs (linear layers, convolutions, attention; counted by
    `FlopCounterMode`) and this device's matrix-product rate: the best of 10 products of 2048x2048
    matrices. FLOPs / rate is the time no implementation of the same arithmetic can beat here."""
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    try:  # the CPU attention kernel is not in torch's table
        register_flop_formula(cpu_flash)(lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
    except RuntimeError:  # registered already
        pass
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    a, b = (torch.randn(2048, 2048, device=device).to(dtype) for _ in range(2))
    seconds = []
    for index in range(12):
        start = time.perf_counter()
        a @ b
        synchronize()
        seconds.append(time.perf_counter() - start)
    return {"flops": counter.get_total_flops(), "matmul_rate": 2 * 2048**3 / min(seconds[2:])}


def _transformers_model(task: str):
    import transformers
    from transformers import PerceiverConfig

    transformers.logging.set_verbosity_error()
    imagenet = dict(num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6,
                    num_cross_attention_heads=1, num_self_attention_heads=8, qk_channels=None, v_channels=None,
                    num_labels=1000, image_size=224)
    models = {
        "language_mlm": ("PerceiverForMaskedLM", dict(qk_channels=256, v_channels=1280)),
        "imagenet_learned": ("PerceiverForImageClassificationLearned", dict(imagenet, d_model=512)),
        "imagenet_fourier": ("PerceiverForImageClassificationFourier", dict(imagenet, d_model=261)),
        "imagenet_conv": ("PerceiverForImageClassificationConvProcessing", dict(imagenet, d_model=322)),
        "optical_flow": ("PerceiverForOpticalFlow", dict(
            num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=24,
            num_self_attention_heads=16, num_cross_attention_heads=1, train_size=[368, 496])),
        "multimodal_autoencoding": ("PerceiverForMultimodalAutoencoding", dict(
            num_latents=784, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
            num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, samples_per_patch=16,
            output_num_channels=512, image_size=224, num_frames=16, audio_samples_per_frame=1920,
            output_shape=[1, 16, 224, 224])),
    }
    name, config = models[task]
    return getattr(transformers, name)(PerceiverConfig(**config))


def _transformers_inputs(task, floats, tokens, padding_mask, points) -> dict:
    """transformers' call: channels-first pixels, the flow model's 3x3 patches already extracted."""
    if task == "language_mlm":
        return {"inputs": tokens(), "attention_mask": padding_mask}
    if task.startswith("imagenet"):
        return {"inputs": floats(1, 3, 224, 224) * 2 - 1}
    if task == "optical_flow":
        return {"inputs": floats(1, 2, 27, 368, 496) * 2 - 1}
    image, audio = floats(1, 16, 3, 224, 224), floats(1, 30720, 1) * 2 - 1
    return {"inputs": {"image": image, "audio": audio, "label": audio.new_zeros(1, 700)},
            "subsampled_output_points": points}


def _transformers(args) -> dict:
    return _torch_cell(args, lambda: _transformers_model(args.task), _transformers_inputs)[0]


def _torch_result(torch, device, baseline: int, timing: dict) -> dict:
    peak_device = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {**timing, "baseline_rss": baseline, "peak_device": peak_device, "threads": torch.get_num_threads()}


def _jax(args) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "cuda" else "cpu")
    # The other implementations' children share the GPU through the rounds: no grabbing 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from converters.jax_reference import build

    baseline = _rss()
    manifest = json.loads((ROOT / "tests" / "data" / "manifests" / f"{args.task}.json").read_text())
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)

    def tree(leaves):
        out = {}
        for leaf in leaves:
            if leaf["dtype"] == "int32":
                value = np.ones(leaf["shape"], np.int32)
            elif leaf["module"].endswith("var_ema"):
                value = rng.uniform(0.5, 2.0, leaf["shape"]).astype(np.float32)
            else:
                value = rng.standard_normal(leaf["shape"], dtype=np.float32) * 0.02
            out.setdefault(leaf["module"], {})[leaf["name"]] = jnp.asarray(value, jnp.int32 if value.dtype == np.int32
                                                                           else dtype)
        return out

    params, state = tree(manifest["params"]), tree(manifest.get("state", []))
    floats = lambda *shape: jnp.asarray(rng.random(shape, dtype=np.float32), dtype)  # noqa: E731
    if args.task == "language_mlm":
        inputs = {"inputs": jnp.asarray(rng.integers(6, 262, (1, 2048)), jnp.int32),
                  "input_mask": jnp.asarray((np.arange(2048) < 1500)[None], jnp.int32)}
    elif args.task.startswith("imagenet"):
        inputs = {"images": floats(1, 224, 224, 3) * 2 - 1}
    elif args.task == "optical_flow":
        inputs = {"images": floats(1, 2, 368, 496, 3) * 2 - 1}
    else:
        inputs = {"images": floats(1, 16, 224, 224, 3), "audio": floats(1, 30720, 1) * 2 - 1,
                  "subsampling": {"image": jnp.arange(IMAGE_CHUNK), "audio": jnp.arange(AUDIO_CHUNK), "label": None}}
    apply = jax.jit(build(args.task, manifest["config"]).apply)
    key = jax.random.PRNGKey(0)
    timing = _serve(lambda: jax.block_until_ready(apply(params, state, key, **inputs)), args.warmup, lambda: None)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return {**timing, "baseline_rss": baseline, "peak_device": stats.get("peak_bytes_in_use") if stats else None,
            "threads": os.cpu_count()}


CHILDREN = {"ours": _ours, "compiled": _ours, "transformers": _transformers, "jax": _jax}


def _child(args) -> int:
    if args.threads:  # XLA sizes its pools by the cores it may use; torch by set_num_threads and OMP_NUM_THREADS
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    result = CHILDREN[args.child](args)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result))
    return 0


# --- the parent: one child per cell, timed in rounds, then the table ----------------------------------


class _Child:
    """One implementation of one task in a process of its own, warmed up at start, then timed one pass at a
    time through its stdin (see `_serve`)."""

    def __init__(self, implementation: str, task: str, args):
        command = [sys.executable, __file__, "--child", implementation, "--task", task, "--warmup", str(args.warmup),
                   "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads or 0)]
        environment = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        self.error: str | None = None
        self.stderr = tempfile.TemporaryFile("w+")
        self.start = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self._read("READY")

    def _read(self, word: str) -> str | None:
        """The rest of the child's next stdout line that starts with `word`; None once it has failed."""
        if self.error is None:
            for line in self.process.stdout:
                if line.startswith(word):
                    return line[len(word):].strip()
            self.error = "exited early"
        return None

    def run_once(self) -> None:
        if self.error is None:
            time.sleep(SETTLE_SECONDS)
            try:
                self.process.stdin.write("RUN\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                self.error = "exited early"
            self._read("TIME")

    def finish(self) -> dict:
        """Ends the child; its timings, first call, peak memory (its own rusage), or its error."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        text = self._read("RESULT")
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - self.start
        self.stderr.seek(0)
        if text is None or self.process.returncode != 0:
            tail = "\n".join(self.stderr.read().strip().splitlines()[-5:])
            return {"error": f"exit status {self.process.returncode}: {tail}", "wall": wall}
        result = json.loads(text)
        result.update(median=statistics.median(result["times"]), median_cpu=statistics.median(result["cpu_times"]),
                      wall=wall, peak_rss=usage.ru_maxrss * 1024)
        return result


def _run_task(task: str, implementations: list[str], args) -> dict[str, dict]:
    """Every implementation of `task`: warmed up one after the other, then `args.repeats` rounds of one timed
    pass each, so that a machine whose speed drifts (a shared VM) slows them all alike."""
    children = {name: _Child(name, task, args) for name in implementations}
    for _ in range(args.repeats):
        for child in children.values():
            child.run_once()
    return {name: child.finish() for name, child in children.items()}


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _ratio(ours, theirs) -> str:
    return "-" if ours is None or theirs is None else f"{ours / theirs:.2f}"


def _table(results: dict, implementations: list[str], device: str) -> str:
    pairs = [(ours, other) for ours in OURS if ours in implementations for other in implementations
             if other not in OURS]
    memory = "peak device memory, MiB" if device == "cuda" else "peak RSS, MiB"
    key = "peak_device" if device == "cuda" else "peak_rss"
    lines = []
    header = ["task"] + [f"{name} ms" for name in implementations] + [f"{a}/{b}" for a, b in pairs]
    rows = []
    for task, cells in results.items():
        latency = {name: cells[name].get("median") for name in implementations}
        rows.append([task] + [("error" if "error" in cells[name] else f"{latency[name] * 1e3:,.0f}")
                              for name in implementations]
                    + [_ratio(latency[a], latency[b]) for a, b in pairs])
    lines += _format("median forward latency", header, rows)
    if device != "cuda":
        rows = []
        for task, cells in results.items():
            cpu = {name: cells[name].get("median_cpu") for name in implementations}
            rows.append([task] + [("error" if "error" in cells[name] else f"{cpu[name]:,.1f}") for name in implementations]
                        + [_ratio(cpu[a], cpu[b]) for a, b in pairs])
        header_cpu = ["task"] + [f"{name} s" for name in implementations] + [f"{a}/{b}" for a, b in pairs]
        lines += _format("median CPU time per forward, all threads (threads waiting on each other count too)", header_cpu,
                         rows)
    header = ["task"] + [f"{name}" for name in implementations] + [f"{a}/{b}" for a, b in pairs]
    rows = []
    for task, cells in results.items():
        peak = {name: cells[name].get(key) for name in implementations}
        rows.append([task] + [_mib(peak[name]) for name in implementations]
                    + [_ratio(peak[a], peak[b]) for a, b in pairs])
    lines += _format(memory + " (whole process: framework, weights, activations)", header, rows)
    if device != "cuda":
        rows = []
        for task, cells in results.items():
            grown = {name: (cells[name]["peak_rss"] - cells[name]["baseline_rss"]) if "error" not in cells[name]
                     else None for name in implementations}
            rows.append([task] + [_mib(grown[name]) for name in implementations]
                        + [_ratio(grown[a], grown[b]) for a, b in pairs])
        lines += _format("peak RSS over the RSS after imports, MiB (weights, activations)", header, rows)
    if "ours" in implementations:
        lines += _floor_table(results, implementations)
    header = ["task"] + [f"{name} s" for name in implementations]
    rows = [[task] + [("-" if "error" in cells[name] else f"{cells[name]['first']:.1f}") for name in implementations]
            for task, cells in results.items()]
    lines += _format("first call (compiled and JAX: compilation included)", header, rows)
    errors = [f"{task} / {name}: {cells[name]['error']}" for task, cells in results.items() for name in implementations
              if "error" in cells[name]]
    return "\n".join(lines + errors)


def _floor_table(results: dict, implementations: list[str]) -> list[str]:
    """Each implementation's latency over the matrix-product floor: ours' FLOPs at the device's GEMM rate."""
    header = ["task", "GFLOP", "GEMM GFLOP/s", "floor ms"] + [f"{name}/floor" for name in implementations]
    rows = []
    for task, cells in results.items():
        if "flops" not in cells["ours"]:
            continue
        floor = cells["ours"]["flops"] / cells["ours"]["matmul_rate"]
        rows.append([task, f"{cells['ours']['flops'] / 1e9:,.0f}", f"{cells['ours']['matmul_rate'] / 1e9:,.0f}",
                     f"{floor * 1e3:,.0f}"] + [_ratio(cells[name].get("median"), floor) for name in implementations])
    return _format("matrix-product floor (the forward's matmul FLOPs at the device's best 2048x2048 GEMM rate; "
                   "no implementation of the same arithmetic goes below 1.00)", header, rows)


def _format(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return ["", f"{title}:", "", line(header), rule, *map(line, rows)]


def _machine(device: str) -> str:
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for package in ("torch", "transformers", "jax", "dm-haiku", "numpy"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:  # not installed
            versions.append(f"{package} -")
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; {', '.join(versions)}; device {device}"


def _load() -> str:
    """The 1-minute load average: other work on the machine slows every cell's latency (not its CPU time)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                        help=f"tasks to run (default: all six: {', '.join(TASKS)})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes; the median is shown (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed pass (about half the time)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and float inputs (bfloat16 is meant for the GPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="run each child on this many cores (CPU affinity; torch.set_num_threads and "
                        "OMP_NUM_THREADS too); default: all cores. 1 gives figures that other load on the machine "
                        "barely disturbs: threads that wait on each other at every operation suffer most when a "
                        "core is taken (Linux only)")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the compiled port (it takes the "
                        "longest: about a minute of compilation per task on 2 cores)")
    parser.add_argument("--skip-transformers", action="store_true", help="leave out Hugging Face transformers")
    parser.add_argument("--skip-jax", action="store_true", help="leave out the JAX reference")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = 1, 1
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1")
    if args.child:
        return _child(args)

    skipped = {"compiled": args.skip_compiled, "transformers": args.skip_transformers, "jax": args.skip_jax}
    implementations = [name for name in IMPLEMENTATIONS if not skipped.get(name)]
    machine = _machine(args.device)
    print(f"{machine}\n{args.dtype}, batch 1, median of {args.repeats} after {args.warmup} warm-up, "
          f"{args.threads or 'default'} threads, one child process per cell, timed in rounds; load average {_load()}", flush=True)
    results: dict[str, dict] = {}
    for task in args.tasks:
        results[task] = _run_task(task, implementations, args)
        for name, cell in results[task].items():
            shown = cell["error"].splitlines()[-1] if "error" in cell else (
                f"{cell['median'] * 1e3:,.0f} ms, peak RSS {_mib(cell['peak_rss'])} MiB")
            print(f"  {task:24s} {name:13s} {shown} ({cell['wall']:.0f} s; load average {_load()})", flush=True)
    print(_table(results, implementations, args.device))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "dtype": args.dtype, "warmup": args.warmup,
                                         "repeats": args.repeats, "results": results}, indent=1))
    return 1 if any("error" in cell for cells in results.values() for cell in cells.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
