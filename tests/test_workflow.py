"""End to end: a real Snakemake run of a tiny spec, from nothing to tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "workflow" / "tiny.yaml"


def snakemake(results: Path, *args: str, spec: Path = TINY) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-c2",
        "--config",
        f"spec={spec}",
        f"results={results}",
    ]
    return subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = snakemake(results)
    assert out.returncode == 0, out.stderr[-4000:]
    return results


@pytest.mark.slow
def test_tiny_spec_runs_end_to_end(tiny_run):
    results = tiny_run
    tables = results / "tiny" / "tables"
    assert (tables / "sparsity_fidelity.md").exists()
    assert (tables / "sparsity_fidelity.csv").exists()
    assert list(tables.glob("pareto_L*.png"))
    metrics = sorted((results / "tasks" / "evaluate").glob("*/metrics.json"))
    # tc: 2 layers x 2 sweep points + 2 spliced-all-layers; sae: 1 layer x 1 point
    assert len(metrics) == 2 * 2 + 2 + 1
    for f in metrics:
        m = json.loads(f.read_text())["metrics"]
        assert m["ce_loss_zero_ablated"] > 0 and m["l0"] >= 0


@pytest.mark.slow
def test_rerun_is_a_no_op(tiny_run):
    out = snakemake(tiny_run, "-n")
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.slow
def test_every_task_records_provenance(tiny_run):
    for done in (tiny_run / "tasks").glob("*/*/task.json"):
        record = json.loads(done.read_text())
        prov = record["provenance"]
        assert prov["versions"]["torch"] and prov["spec_hash"] and prov["wall_s"] >= 0
