"""Compute dtypes chosen by measurement: `auto` means bfloat16 only where it is faster (docs/algorithms.md §0).

A CPU with AVX512-BF16 (or AMX) runs bfloat16 matrix products 2-3x faster than float32; a CPU with only AVX2
falls back to a scalar kernel and runs them 10-40x slower. No fixed default is right on both, so every dtype
chosen for speed (target steps, fine-tuning autocast) defaults to `auto`, resolved by a short probe: one
matrix product of the model's own MLP shape, timed in both dtypes. The measurements live in a
`DtypeResolver` that an entry point creates and hands down (there is no module-level cache).

`EDITDECAY_AUTO_DTYPE=float32` (or `bfloat16`) forces what `auto` resolves to, e.g. to reproduce the choice a
slower machine makes; an explicit dtype is always honoured, with a warning when the probe measured it slower.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
SpeedDtype = Literal["auto", "bfloat16", "float32"]
SPEED_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32")
FORCE_ENV = "EDITDECAY_AUTO_DTYPE"
# bfloat16 must beat float32 by this factor: below it the rounding is not worth a marginal gain.
MIN_SPEEDUP = 1.2
PROBE_TOKENS = 64
PROBE_SECONDS = 0.02
PROBE_MAX_REPEATS = 50

# (device, dtype, tokens, d_in, d_out) -> seconds for one product; replaced in tests to force an answer.
Measure = Callable[[str, torch.dtype, int, int, int], float]


def time_matmul(device: str, dtype: torch.dtype, tokens: int, d_in: int, d_out: int) -> float:
    """Fastest of repeated (tokens x d_in) @ (d_in x d_out) products after a warm-up, repeated for about
    PROBE_SECONDS (the minimum is robust to other processes), but only once when one product is that slow."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=generator).to(device, dtype)
    w = torch.randn(d_in, d_out, generator=generator).to(device, dtype)
    cuda = device.startswith("cuda")
    torch.mm(x, w)  # warm-up: kernel selection, first-touch allocation
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats == 0 or (spent < PROBE_SECONDS and repeats < PROBE_MAX_REPEATS):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(x, w)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best, spent, repeats = min(best, elapsed), spent + elapsed, repeats + 1
    return best


@dataclass(frozen=True)
class ProbeResult:
    """One measurement and the dtype it implies."""

    device: str
    shape: tuple[int, int, int]  # tokens, d_in, d_out
    float32_s: float | None  # None: not timed (CUDA decides by capability)
    bfloat16_s: float | None
    chosen: Literal["bfloat16", "float32"]
    reason: str

    @property
    def speedup(self) -> float | None:
        """float32 time over bfloat16 time (> 1: bfloat16 is faster)."""
        if self.float32_s is None or self.bfloat16_s is None:
            return None
        return self.float32_s / max(self.bfloat16_s, 1e-12)

    def to_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "shape": list(self.shape),
            "float32_s": self.float32_s,
            "bfloat16_s": self.bfloat16_s,
            "speedup": self.speedup,
            "chosen": self.chosen,
            "reason": self.reason,
        }


@dataclass
class DtypeResolver:
    """Resolves `auto` once per (device, shape); create one per process entry point and pass it down."""

    measure: Measure = time_matmul
    forced: str | None = field(default_factory=lambda: os.environ.get(FORCE_ENV) or None)
    results: dict[tuple[str, int, int], ProbeResult] = field(default_factory=dict)
    _said: set[tuple[str, str, str]] = field(default_factory=set, repr=False)  # (decision, purpose, dtype) logged

    def __post_init__(self) -> None:
        if self.forced is not None and self.forced not in ("bfloat16", "float32"):
            raise ValueError(f"{FORCE_ENV}={self.forced!r}: use bfloat16 or float32 (or leave it unset).")

    def probe(self, device: str, d_in: int, d_out: int) -> ProbeResult:
        key = (_device_name(device), d_in, d_out)
        if key not in self.results:
            self.results[key] = self._measure(*key)
        return self.results[key]

    def resolve(self, requested: str | None, *, device: str, d_in: int, d_out: int, purpose: str) -> str:
        """The concrete dtype for `requested` (`auto`, `bfloat16` or `float32`); `purpose` names it in logs."""
        if requested not in SPEED_DTYPES:
            raise ValueError(f"dtype {requested!r} for {purpose}: choose one of {', '.join(SPEED_DTYPES)}.")
        if requested == "float32":
            return requested  # nothing to measure: float32 is never the slow path
        result = self.probe(device, d_in, d_out)
        said = (result.reason, purpose, requested)
        first = said not in self._said
        self._said.add(said)
        if requested == AUTO:
            if first:
                log.info("%s: %s in %s", result.reason, purpose, result.chosen)
            return result.chosen
        if first and requested == "bfloat16" and result.speedup is not None and result.speedup < 1:
            log.warning("%s in bfloat16 as requested, although %s (auto would choose float32)", purpose, result.reason)
        return requested

    def _measure(self, device: str, d_in: int, d_out: int) -> ProbeResult:
        shape = (PROBE_TOKENS, d_in, d_out)
        if self.forced is not None:
            return ProbeResult(
                device,
                shape,
                None,
                None,
                self.forced,  # type: ignore[arg-type]
                f"{FORCE_ENV}={self.forced} set",
            )
        if device.startswith("cuda"):
            supported = torch.cuda.is_bf16_supported()
            return ProbeResult(
                device,
                shape,
                None,
                None,
                "bfloat16" if supported else "float32",
                "the CUDA device supports bfloat16" if supported else "the CUDA device has no bfloat16 support",
            )
        # One thread: the per-core ratio is what differs between CPUs, and a second thread's wake-up on a busy
        # machine costs milliseconds that would drown both timings.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            float32_s = self.measure(device, torch.float32, *shape)
            bfloat16_s = self.measure(device, torch.bfloat16, *shape)
        finally:
            torch.set_num_threads(threads)
        speedup = float32_s / max(bfloat16_s, 1e-12)
        chosen: Literal["bfloat16", "float32"]
        if speedup >= MIN_SPEEDUP:
            chosen, reason = "bfloat16", f"bfloat16 matmuls {speedup:.1f}x faster here"
        elif speedup >= 1:
            chosen, reason = "float32", f"bfloat16 matmuls only {speedup:.2f}x faster here (below {MIN_SPEEDUP}x)"
        else:
            chosen = "float32"
            reason = f"bfloat16 is {1 / speedup:.1f}x slower on this {device.upper()} (no native support)"
        return ProbeResult(device, shape, float32_s, bfloat16_s, chosen, reason)


def _device_name(device: str | torch.device) -> str:
    name = str(device)
    return "cuda" if name.startswith("cuda") else name


def mlp_shape(config: object) -> tuple[int, int]:
    """(d_model, MLP width) of a transformers config: the shape of the edited matrix and most of the compute."""
    hidden = int(getattr(config, "hidden_size"))  # noqa: B009 (configs map n_embd to hidden_size)
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return hidden, int(width)
