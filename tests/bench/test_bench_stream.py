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
    """bench/gpu.sh at tiny shapes on the CPU: every measure in both precisions, its figures
    in $OUT (gpu.json, gpu.md)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    args = ["--tiny", "--steps", "2", "--warmup", "1", "--stream-steps", "4"]
    out = subprocess.run([str(ROOT / "bench" / "gpu.sh"), *args],
                         capture_output=True, text=True, check=True, env=env)  # fmt: skip
    r = json.loads((tmp_path / "gpu.json").read_text())
    measures = [
        "per-layer relu",
        "per-layer topk",
        "CLT relu",
        "CLT topk",
        "stream (12 transcoders)",
    ]
    assert sorted((row["what"], row["precision"]) for row in r["rows"]) == sorted(
        (m, p) for m in measures for p in ("fp32", "bf16")
    )
    assert all(row["tokens_per_s"] > 0 and row["peak_gb"] >= 0 for row in r["rows"])
    assert sorted(r["bf16_over_fp32"]) == sorted(measures) and r["info"]["shapes"] == "tiny"
    assert "| CLT topk | bf16 |" in (tmp_path / "gpu.md").read_text() and "gpu.json" in out.stdout
