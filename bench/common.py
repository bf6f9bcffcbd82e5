"""Helpers shared by the benchmark sections: clocks, interleaved timing, machine facts, tables.

Timing on a shared machine: every section interleaves the things it compares (A, B, C, A, B,
C, ...) so that a change in load hits all of them alike, and reports the minimum (the run
least disturbed by other jobs) and the median over the rounds, by wall clock and by this
process's CPU time.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata

import torch


# ------------------------------------------------------------------------------- timing
def clocks() -> tuple[float, float]:
    """(wall, CPU time of this process), in seconds."""
    return time.perf_counter(), time.process_time()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of `fn`."""
    w, c = clocks()
    fn()
    return time.perf_counter() - w, time.process_time() - c


@dataclass
class Timing:
    """The rounds of one measured thing; each round is (wall, cpu) seconds of one call."""

    name: str
    rounds: list[tuple[float, float]] = field(default_factory=list)

    def wall(self, how: str = "min") -> float:
        return _reduce([r[0] for r in self.rounds], how)

    def cpu(self, how: str = "min") -> float:
        return _reduce([r[1] for r in self.rounds], how)


def _reduce(xs: list[float], how: str) -> float:
    if not xs:
        return float("nan")
    return min(xs) if how == "min" else statistics.median(xs)


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time each of `fns` `rounds` times, in the order A, B, C, A, B, C, ... after `warmup`
    untimed calls of each (buffers allocated, pages touched, lazy inits done)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing(name) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].rounds.append(timed(fn))
    return out


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ machine facts
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def versions(names: tuple[str, ...] = ("torch", "numpy", "sae-lens", "eai-sparsify")) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def machine() -> dict:
    """What the numbers were measured on, including the load when measuring began."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in load_average()],
        "platform": platform.platform(),
        "versions": versions(),
    }


# ------------------------------------------------------------------------------ tables
def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are written with 3 significant digits (4 for >= 1000)."""

    def fmt(v) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x: (slope b, intercept a, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx > 0 else float("nan")
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return b, a, r2
