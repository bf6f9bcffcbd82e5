"""Smoke test of the benchmark suite: `python -m bench --tiny` runs and writes its report.

No timing is asserted (the machine is shared); the report's structure and the parsers are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

from bench.common import linear_fit, markdown_table  # noqa: E402
from bench.pipeline import read_benchmarks, stage_table  # noqa: E402

pytestmark = pytest.mark.slow  # real runs of minutes: the full suite's, not the quick loop's


def test_linear_fit_recovers_a_line():
    slope, icpt, r2 = linear_fit([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0])
    assert slope == pytest.approx(2.0) and icpt == pytest.approx(1.0) and r2 == pytest.approx(1)


def test_markdown_table_formats_numbers():
    t = markdown_table(["a", "b"], [["x", 1234.5], ["y", 0.012345], ["z", float("nan")]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| x | 1,234 |", "| y | 0.0123 |",
                              "| z | n/a |"]  # fmt: skip


def test_stage_table_reads_snakemake_benchmark_files(tmp_path):
    assert "not run yet" in stage_table(tmp_path)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for stage, job, s in [("train", "tc-a", 12.5), ("train", "tc-b", 7.5), ("acts", "c", 3.0)]:
        f = tmp_path / "benchmarks" / stage / f"{job}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(header + f"{s}\t0:00:{int(s):02d}\t100.5\t1\t1\t1\t0\t0\t50\t{s / 2}\n")
    assert {k: len(v) for k, v in read_benchmarks(tmp_path).items()} == {"acts": 1, "train": 2}
    table = stage_table(tmp_path)
    assert "| acts | 1 | 3 | 3 | 1.5 | 100 | c |" in table
    assert "| train | 2 | 20 | 12.5 | 10 | 100 | tc-a |" in table
    assert table.index("| acts") < table.index("| train")  # pipeline order


def test_python_m_bench_tiny_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out), "--results",
         str(tmp_path / "no-results")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for heading in ["## Headline", "## Training throughput against SAELens and sparsify",
                    "## Training precision: bf16 against fp32 and the peers",
                    "## Dictionary families", "## Roofline", "## Sweep efficiency",
                    "## Pipeline", "## Scaling", "## Streaming", "## Cross-layer transcoder",
                    "## Integrity"]:  # fmt: skip
        assert heading in text
    assert "load average (1, 5, 15 min) at start" in text
    assert "saelens standard" in text and "sparsify topk adam" in text
    assert "tcspec relu fp32" in text and "native bf16: " in text  # bf16 rows where native
    assert "not run yet" in text
    for K in (1, 2, 4, 8):
        assert f"sweep K={K} separate/one-pass" in text


def test_bench_families_tiny_times_every_family_and_saelens(tmp_path):
    out = tmp_path / "families.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "families", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "## Dictionary families: step time vs the roofline and SAELens" in text
    for family in ("relu", "topk", "jumprelu", "batchtopk", "matryoshka"):
        assert f"| {family} step of fp32 matmul peak (transcoder) |" in text
    for family in ("jumprelu", "batchtopk"):
        assert f"| tcspec sae {family} |" in text and f"| saelens {family} |" in text
        assert f"| saelens {family} / tcspec (wall min) |" in text
