"""The one comparison of stages: a PyTorch model's stages against a reference's, each within a tolerance
of the reference stage's scale (its max |value|), in the order the data flows, so that the first stage
over tolerance is where two implementations part (every later stage inherits its error).
`convert-checkpoint verify`, `convert-checkpoint --example` and the golden tests all report through it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from perceiver_io.errors import InputError

from .stages import is_output

FLOAT32_TOLERANCE = {"multimodal_autoencoding": 1e-3}
"""1e-4 of the scale for the five other tasks; 1e-3 for the multimodal model, whose audio
Fourier features (arguments up to 5e4 radians) differ between any two float32 implementations."""
DEFAULT_FLOAT32_TOLERANCE = 1e-4
LOW_PRECISION_TOLERANCE = {"bfloat16": 4e-2, "float16": 5e-3}
"""Bands for the half-precision types, relative to each stage's scale. On CPU the six golden models reach
at most 2.3e-2 in bfloat16 and 2.5e-3 in float16 (any stage); float16's band is twice its worst, and
bfloat16's is 8 times float16's, as its rounding unit is (8 significant bits against 11). To be confirmed
on GPU with `scripts/gpu_parity.py`. These bands are far above a conversion slip such as exact-erf GELU
(2e-4), which only float32 resolves; a transposed weight is found in any dtype."""

STAGE_ORDER = (
    "encoder_inputs",
    "inputs_without_pos",
    "encoder_query",
    "encoder_cross_attention",
    "encoder_self_attention",
    "z",
    "decoder_query",
    "decoder_outputs",
    "out",
)
"""The compared stages in the order the data flows: the preprocessor's output (with and without positions),
the latents, the encoder after its cross-attention and after each self-attention application
(`encoder_self_attention_{k}`), its output `z` (the last application's, and all that the official
intermediates record of the encoder), the decoder's queries and output, the final output. Per-modality
stages are `name/modality`."""


def default_tolerance(task: str, dtype: str = "float32") -> float:
    """The task's float32 tolerance, widened to the band of `dtype` (relative to each stage's scale)."""
    return max(FLOAT32_TOLERANCE.get(task, DEFAULT_FLOAT32_TOLERANCE), LOW_PRECISION_TOLERANCE.get(dtype, 0.0))


def stage_sort_key(name: str) -> tuple[int, int, str]:
    base, _, modality = name.partition("/")
    match = re.fullmatch(r"encoder_self_attention_(\d+)", base)
    if match:
        return STAGE_ORDER.index("encoder_self_attention"), int(match.group(1)), modality
    return STAGE_ORDER.index(base), 0, modality


def is_compared_stage(name: str) -> bool:
    base = name.partition("/")[0]
    return base in STAGE_ORDER or re.fullmatch(r"encoder_self_attention_\d+", base) is not None


def max_abs_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The max abs difference in float64; inf where `ours` holds NaN or inf. Shapes must agree."""
    if ours.shape != theirs.shape:
        raise InputError(f"shapes differ: ours {ours.shape}, reference {theirs.shape}")
    if not np.isfinite(ours).all():
        return float("inf")
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0))


@dataclass(frozen=True)
class StageCheck:
    stage: str
    shape: tuple[int, ...]
    max_abs_error: float  # inf for NaN/inf in the PyTorch stage or a shape that differs
    scale: float  # max |reference|
    relative_error: float  # max_abs_error / scale (max_abs_error where the scale is 0)
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class StageReport:
    """The checks of one PyTorch run against one reference, with where each side came from; `table()` is
    what verify, --example and the golden tests print."""

    task: str
    model: str  # where the PyTorch weights came from
    reference: str  # where the reference stages came from
    device: str
    dtype: str
    tolerance: float
    inputs: dict[str, str]  # name -> "shape dtype"
    stages: list[StageCheck]
    only_in_pytorch: list[str] = field(default_factory=list)
    only_in_reference: list[str] = field(default_factory=list)

    @property
    def first_failure(self) -> str | None:
        return next((check.stage for check in self.stages if not check.passed), None)

    @property
    def passed(self) -> bool:
        return bool(self.stages) and self.first_failure is None

    @property
    def outputs_only(self) -> bool:
        """Whether the reference had only outputs to compare (the user's outputs or Haiku function)."""
        return bool(self.stages) and all(is_output(check.stage) for check in self.stages)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for check in out["stages"]:
            for key in ("max_abs_error", "relative_error"):
                if not math.isfinite(check[key]):
                    check[key] = None  # JSON has no inf; `note` says why
        out["first_failure"] = self.first_failure
        out["passed"] = self.passed
        return out

    def table(self) -> str:
        lines = [
            f"verify {self.task}: {self.model}",
            f"PyTorch on {self.device} in {self.dtype} vs {self.reference}",
            "inputs: " + ", ".join(f"{name} {description}" for name, description in self.inputs.items()),
            f"tolerance: {self.tolerance:g} of each stage's scale (max |reference|)",
            "",
            f"  {'stage':28s} {'shape':>16s} {'max abs error':>14s} {'scale':>10s} {'rel. error':>11s}",
        ]
        first = self.first_failure
        for check in self.stages:
            shape = "x".join(map(str, check.shape))
            mark = "ok" if check.passed else ("FIRST FAIL" if check.stage == first else "fail")
            note = f"  ({check.note})" if check.note else ""
            lines.append(
                f"  {check.stage:28s} {shape:>16s} {check.max_abs_error:14.3e} {check.scale:10.4g} "
                f"{check.relative_error:11.2e}  {mark}{note}"
            )
        if self.outputs_only:
            lines.append("  the reference holds outputs only: the intermediate stages are not compared")
        elif self.only_in_pytorch:
            lines.append(f"  not recorded by the reference: {', '.join(self.only_in_pytorch)}")
        if self.only_in_reference:
            lines.append(f"  not recorded by the PyTorch model: {', '.join(self.only_in_reference)}")
        lines.append("")
        if self.passed:
            worst = max(self.stages, key=lambda check: check.relative_error)
            lines.append(f"PASS: every stage within {self.tolerance:g} of its scale "
                         f"(worst: {worst.stage}, {worst.relative_error:.2e})")
        elif not self.stages:
            lines.append("FAIL: no stage to compare")
        else:
            failed = next(check for check in self.stages if check.stage == first)
            over = f"{first} ({failed.relative_error:.2e} > {self.tolerance:g})"
            if self.outputs_only:
                lines.append(f"FAIL: {over} differs from your JAX code's. Either the conversion or the configuration "
                             "differs from your code; if verify passes against the JAX reference (without "
                             "--jax-outputs and --haiku-fn), the configuration does not describe this checkpoint")
            else:
                lines.append(f"FAIL: first stage over tolerance: {over}; the stages computed from it inherit its error")
        return "\n".join(lines)


def compare_stages(
    ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], tolerance: float
) -> tuple[list[StageCheck], list[str], list[str]]:
    """Checks of the stages both sides have, in data-flow order; and the names only one side has."""
    ours = {name: value for name, value in ours.items() if is_compared_stage(name)}
    reference = {name: value for name, value in reference.items() if is_compared_stage(name)}
    checks = []
    for name in sorted(set(ours) & set(reference), key=stage_sort_key):
        theirs = np.asarray(reference[name])
        scale = float(np.max(np.abs(theirs), initial=0.0))
        note = ""
        try:
            error = max_abs_error(ours[name], theirs)
        except ValueError as mismatch:
            error, note = math.inf, str(mismatch)
        if not note and not math.isfinite(error):
            note = "NaN or inf in the PyTorch stage"
        relative = error / scale if scale else error
        checks.append(StageCheck(name, tuple(theirs.shape), error, scale, relative, relative <= tolerance, note))
    only_ours = sorted(set(ours) - set(reference), key=stage_sort_key)
    only_theirs = sorted(set(reference) - set(ours), key=stage_sort_key)
    return checks, only_ours, only_theirs
