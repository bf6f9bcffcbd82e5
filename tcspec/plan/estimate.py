"""A job's ``Cost``, its estimated seconds and what the scheduler is asked for it: the
units, margins and fixed allowances every estimate of the plan shares.

`tcspec plan` shows the estimates and the workflow asks the scheduler for them (Snakemake's
``mem_mb`` and ``runtime``); `tcspec.plan.cost` sizes the model and the dictionaries'
training, `tcspec.plan.stage_costs` every other stage's job, and `tcspec.plan.resources`
reads a task's sizes from its config and calls those formulas.

A job's ``Cost`` is what it holds (bytes) and does: FLOPs of model forwards, FLOPs of
dictionary work, bytes read or written, and a fixed ``STARTUP_S`` (interpreter, imports,
loading the model and inputs). Its time is

    seconds = STARTUP_S + model FLOPs / rate(model precision) + dictionary FLOPs /
              rate(training precision) + I/O bytes / IO_BYTES_PER_S + other seconds

with the rates of `tcspec.compute.throughput` for its device (a GPU class, or its CPU
threads): the model's precision is its dtype's, the dictionary work's a trained
dictionary's ``precision`` (fp32 for evaluation and interp, which encode in float32).
The scheduler is asked for ``runtime = ceil(TIME_MARGIN x seconds / 60)`` minutes and
``mem_mb = ceil(MEM_MARGIN x (bytes + RUNTIME_BYTES) / 2^20)``. A pass (several train or
evaluate tasks in one job) is costed as a whole: the model's forwards or the cache read
once, every member's own work added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tcspec.compute.throughput import Rates

if TYPE_CHECKING:
    from tcspec.plan.cost import ModelSize

# ------------------------------------------------------------------------------ assumptions
MB = 2**20
FP32 = 4
"""Bytes of a float32: dictionaries, their optimizer state and their work run in it."""
RUNTIME_BYTES = 1500 * MB
"""Memory of the interpreter, torch and the libraries a job imports (with room)."""
STARTUP_S = 120.0
"""Seconds a job spends before its work: imports, loading the model, tokens, inputs."""
TIME_MARGIN = 2.0
"""The scheduler's runtime is this multiple of the estimate (FLOP/s vary with shapes)."""
MEM_MARGIN = 1.2
"""The scheduler's memory is this multiple of the estimate."""
IO_BYTES_PER_S = 200e6
"""Disk or network bytes a second: reading a cache, writing one, loading weights."""


def disk_mb(n_bytes: int) -> int:
    """Megabytes of disk to ask for ``n_bytes`` (rounded up, and one more)."""
    return n_bytes // MB + 1


# ------------------------------------------------------------------------------ a job
@dataclass(frozen=True)
class Cost:
    """What one job holds and does (see the module doc)."""

    mem_bytes: int = 0
    model_flops: int = 0
    dict_flops: int = 0
    io_bytes: int = 0
    other_s: float = 0.0
    """Seconds of work counted in neither FLOPs nor bytes (tokenizing)."""


def seconds(
    cost: Cost, m: ModelSize, rates: Rates, gpu: int, threads: int, precision: str = "fp32"
) -> float:
    """Estimated wall seconds of a job whose dictionary work runs in ``precision`` (see
    the module doc)."""
    model_rate = rates.flops_per_s(gpu, m.model_precision, threads)
    dict_rate = rates.flops_per_s(gpu, precision, threads)
    return (
        STARTUP_S
        + cost.model_flops / model_rate
        + cost.dict_flops / dict_rate
        + cost.io_bytes / IO_BYTES_PER_S
        + cost.other_s
    )


def request(
    cost: Cost, m: ModelSize, rates: Rates, gpu: int, threads: int, precision: str = "fp32"
) -> dict:
    """What the scheduler is asked for a job, ``mem_mb`` and ``runtime`` (minutes), with
    the margins; and the estimate itself (``seconds``) for the plan's table."""
    s = seconds(cost, m, rates, gpu, threads, precision)
    return {
        "mem_mb": math.ceil(MEM_MARGIN * (cost.mem_bytes + RUNTIME_BYTES) / MB),
        "seconds": round(s, 1),
        "runtime": math.ceil(TIME_MARGIN * s / 60),
    }
