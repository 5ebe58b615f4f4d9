"""Interleaved timing: the variants of one comparison alternate, repetition by repetition.

On a shared, noisy machine a slow minute hits every variant alike, so ratios stay fair. We
report the median throughput of each variant and the median of the per-repetition ratios.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(fn: Callable[[], object], device: torch.device | str, target_s: float) -> int:
    """How many calls of `fn` make one repetition of about `target_s` seconds (at least 1)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - t, 1e-6)
    return max(1, round(target_s / one))


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str, reps: int,
                target_s: float, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of every variant, `reps` samples each, variants alternating.

    The order rotates every repetition so that no variant always runs right after another.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    iters = {name: calibrate(fn, device, target_s) for name, fn in fns.items()}
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, n = fns[name], iters[name]
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            out[name].append((time.perf_counter() - t) / n)
    return out


class Reference:
    """Interleaved timings of `fns` accumulated one repetition per call: the in-process reference an
    HTTP bench re-measures between its phases, so both halves of a ratio ran under the same load."""

    def __init__(self, fns: dict[str, Callable[[], object]], device: torch.device | str, target_s: float,
                 warmup: int):
        self.fns, self.device, self.target_s, self.warmup = fns, device, target_s, warmup
        self.times: dict[str, list[float]] = {name: [] for name in fns}

    def rep(self) -> None:
        with torch.inference_mode():
            got = interleaved(self.fns, self.device, reps=1, target_s=self.target_s, warmup=self.warmup)
        self.warmup = 0  # only before the first repetition
        for k, t in got.items():
            self.times[k].append(t[0])


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over repetitions of num[i] / den[i] (paired: same repetition, same machine load)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def machine() -> dict:
    """What the numbers were measured on, for RESULTS.md."""
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def emit(result: dict) -> None:
    """The final line of every bench: one JSON object."""
    print(json.dumps(result, sort_keys=True))
