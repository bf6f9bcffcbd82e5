"""Sustained FLOP/s by device class and precision: the one table every time estimate reads.

GPUs: the published dense peak of each precision (NVIDIA's data sheets, SXM parts; fp32 is
the CUDA cores', tf32 and bf16 the tensor cores' without sparsity) times ``GPU_EFFICIENCY``,
0.5. A training step of a sparse dictionary is a few large GEMMs, which sustain most of the
peak, plus elementwise work, TopK selection and Adam, which run far below it; the plan
counts a per-layer TopK dictionary's FLOPs as a dense one's, more than it executes (and a
TopK CLT's sparse products at `tcspec.plan.cost.SPARSE_COST` times theirs). 0.5 is a stated
assumption, not a measurement (`bench/gpu.sh` measures the steps on a card); the scheduler
is asked for twice the estimate (`tcspec.plan.estimate.TIME_MARGIN`), since an estimate that
is too long costs queue time while one that is too short kills the job.

CPU: per thread, the GEMM rate measured here (AMD Zen 4 with avx512_bf16, torch 2.13, a
[4096, 768] x [768, 8192] GEMM, quiet machine: fp32 82 GFLOP/s on one thread and 153 on
two, bf16 171 and 335), times ``CPU_EFFICIENCY``, which also covers a Zen 3 core (fp32
86-94 GFLOP/s on 2 threads) and the small GEMMs of the toy model. A CPU has no TF32: its
tf32 row is fp32's. bf16 on a CPU without native bf16 is a hundred times slower; the
precision setting never picks it there, and this table assumes native bf16.

The machine side picks the class of a GPU job (Snakemake's ``--config gpu_class=a100``, or
a profile's ``config:``) and may override a sustained rate
(``--config sustained_tflops=120``): neither changes a task's id.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcspec.compute import PRECISIONS

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "h100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "h200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
}
"""Published dense peak TFLOP/s of each GPU class (SXM) and precision."""

GPU_EFFICIENCY = 0.5
"""Fraction of a GPU's peak a job is assumed to sustain (see the module doc)."""

CPU_GFLOPS_PER_THREAD: dict[str, float] = {"fp32": 80.0, "tf32": 80.0, "bf16": 170.0}
"""Measured GEMM GFLOP/s of one thread of this project's CPU (see the module doc)."""

CPU_EFFICIENCY = 0.4
"""Fraction of the measured CPU rate a job is assumed to sustain."""

DEFAULT_GPU_CLASS = "a100"
"""The GPU class a plan assumes when the machine side names none: the slowest listed."""

GPU_CLASSES: tuple[str, ...] = tuple(PEAK_TFLOPS)


@dataclass(frozen=True)
class Rates:
    """Where GPU jobs run and how fast: the machine side's choice, never the spec's."""

    gpu_class: str = DEFAULT_GPU_CLASS
    """A key of ``PEAK_TFLOPS``."""
    sustained_tflops: float | None = None
    """Overrides the table's sustained TFLOP/s for every GPU job (any precision)."""

    def __post_init__(self):
        if self.gpu_class not in PEAK_TFLOPS:
            raise ValueError(
                f"unknown gpu_class `{self.gpu_class}`; one of {', '.join(GPU_CLASSES)}"
            )
        if self.sustained_tflops is not None and self.sustained_tflops <= 0:
            raise ValueError(f"sustained_tflops must be > 0, got {self.sustained_tflops}")

    def flops_per_s(self, gpu: int, precision: str, threads: int = 1) -> float:
        """Sustained FLOP/s of a job with ``gpu`` GPUs (0: ``threads`` CPU threads)."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision `{precision}`; one of {', '.join(PRECISIONS)}")
        if not gpu:
            return CPU_GFLOPS_PER_THREAD[precision] * 1e9 * CPU_EFFICIENCY * max(1, threads)
        if self.sustained_tflops is not None:
            return self.sustained_tflops * 1e12 * gpu
        return PEAK_TFLOPS[self.gpu_class][precision] * 1e12 * GPU_EFFICIENCY * gpu

    def describe(self, precision: str = "fp32") -> str:
        """``'a100 fp32: 5.85 TFLOP/s sustained'`` (the table's or the override)."""
        rate = self.flops_per_s(1, precision) / 1e12
        how = "override" if self.sustained_tflops is not None else f"{GPU_EFFICIENCY:g} x peak"
        return f"{self.gpu_class} {precision}: {rate:.3g} TFLOP/s sustained ({how})"
