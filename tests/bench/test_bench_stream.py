"""Smoke test of the stream benchmarks at tiny shapes: they run and report their figures.

No timing is asserted (the machine is shared); the reports' structure and counts are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

from bench import gpu_stream  # noqa: E402
from bench.stream import SHAPES, run_shared, run_throughput  # noqa: E402


def test_shared_and_throughput_sections_report_ratios():
    text, headline = run_shared(SHAPES["tiny"], rounds=1)
    assert "(F_max + sum T) / sum (F_l + T)" in text and "F_2" in text
    measured, ideal, ideal_jobs = headline.values()
    # 6 dictionaries at 3 layers, 2 sweep points: sharing saves at least the forwards
    assert 0 < ideal_jobs < ideal < 1 and measured > 0
    assert "| forward batches run: one job / all separate jobs | 6 / 36 |" in text
    text, headline = run_throughput(SHAPES["tiny"], rounds=1)
    assert "cache (training only)" in text and headline["stream/cache tokens per s"] > 0


def test_gpu_job_runs_tiny_on_the_cpu(tmp_path):
    r = gpu_stream.run(gpu_stream.TINY, "cpu", torch.float32, seconds=120)
    assert r["dictionaries"] == 12 and r["steps"] == gpu_stream.TINY.steps
    assert r["train_tokens_per_s"] > 0 and r["estimated_memory_gb"] > 0


@pytest.mark.slow
def test_gpu_script_smoke(tmp_path):
    """bench/gpu.sh at tiny shapes on the CPU: every measure in both precisions, the resume
    check in both, its figures in $OUT (gpu.json, gpu.md)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    args = ["--tiny", "--steps", "2", "--warmup", "1", "--stream-steps", "4"]
    out = subprocess.run([str(ROOT / "bench" / "gpu.sh"), *args],
                         capture_output=True, text=True, check=True, env=env)  # fmt: skip
    r = json.loads((tmp_path / "gpu.json").read_text())
    measures = [
        "per-layer relu",
        "per-layer topk",
        "CLT relu",
        "CLT topk",
        "CLT topk, one part",
        "stream (12 transcoders)",
    ]
    assert sorted((row["what"], row["precision"]) for row in r["rows"]) == sorted(
        (m, p) for m in measures for p in ("fp32", "bf16")
    )
    assert not [row for row in r["rows"] if "error" in row] and not r["partial"]
    assert all(row["tokens_per_s"] > 0 and row["peak_gb"] >= 0 for row in r["rows"])
    assert sorted(r["bf16_over_fp32"]) == sorted(measures) and r["info"]["shapes"] == "tiny"
    assert [(x["precision"], x["bitwise"], x["tensors"]) for x in r["resume"]] == [
        ("fp32", True, 23),
        ("bf16", True, 23),
    ]
    md = (tmp_path / "gpu.md").read_text()
    assert "| CLT topk | bf16 |" in md and "| bf16 | yes | 0 | 0 / 23 |" in md
    assert "TopK CLT TFLOP/s over the ReLU CLT's" in md and "gpu.json" in out.stdout
    assert "`sustained_tflops` for the plan" in md


def test_gpu_script_reports_a_failing_measure_and_goes_on(tmp_path, monkeypatch):
    """A step variant that raises (an op the device lacks) becomes a row with its error;
    the rest are measured, and the figures are written after every row."""
    from bench import gpu

    def broken(*a, **k):
        raise RuntimeError("no kernel for this op on this device\nsecond line")

    monkeypatch.setattr(gpu, "tcspec_step", broken)
    written = []
    rows = gpu.step_rows(gpu.TINY, "cpu", 0, 1, lambda r: written.append(len(r)))
    failed = [r for r in rows if "error" in r]
    assert [r["what"] for r in failed] == ["per-layer relu", "per-layer topk"] * 2
    assert failed[0]["error"] == "RuntimeError: no kernel for this op on this device"
    assert all(r["tokens_per_s"] > 0 for r in rows if "error" not in r)
    assert written == list(range(1, len(rows) + 1)) and len(rows) == 10
    assert "failed: RuntimeError: no kernel" in gpu.step_table(rows)


def test_resume_check_finds_a_resumed_pass_that_differs(monkeypatch):
    """bench/resume.py: bitwise on the CPU; a resumed pass fed other data after its
    checkpoint is reported as differing, with the size of the difference."""
    from bench import resume

    assert resume.check("cpu", "fp32")["bitwise"]
    calls, real = [], resume.batches

    def other_after_resume(crash_at=None):
        calls.append(crash_at)
        source = real(crash_at)
        if len(calls) < 3:  # the uninterrupted pass and the one that crashes
            return source
        return lambda start: ({k: v + 1e-3 for k, v in b.items()} for b in source(start))

    monkeypatch.setattr(resume, "batches", other_after_resume)
    r = resume.check("cpu", "fp32")
    assert not r["bitwise"] and r["differ"] and 0 < r["max_abs_diff"] < 1
