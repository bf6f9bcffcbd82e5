"""End to end: a real Snakemake run of a tiny spec, from nothing to tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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
        record = json.loads(f.read_text())
        m = record["metrics"]
        assert m["ce_loss_zero_ablated"] > m["ce_loss_original"] > 0
        if record["splice"] == "each":
            assert 0 < m["l0"] <= record["d_sae"] and 0 <= m["fvu"]


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
        assert prov["versions"]["torch"] and prov["device"] == "cpu" and prov["wall_s"] >= 0
        assert len(record["config_sha256"]) == 64 and prov["threads"] >= 1


@pytest.mark.slow
def test_exports_reimport_through_the_pipeline(tiny_run, tmp_path):
    """Dictionaries exported to SAELens format, imported back by a second spec as
    `kind: pretrained`, evaluate to the same metrics as the originals."""
    export = tiny_run / "tiny" / "export"
    assert (export / "circuit-tracer" / "tc-l1_0.001" / "config.yaml").exists()
    spec = yaml.safe_load(TINY.read_text())
    spec["experiment"] = "reimported"
    spec["dictionaries"] = {
        "tc": {
            "kind": "pretrained",
            "path": str(export / "saelens" / "tc-L{layer}-l1_0.001"),
            "format": "saelens",
        }
    }
    spec["evaluate"] = {"batch_contexts": 16}
    del spec["export"]
    path = tmp_path / "reimported.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = snakemake(tiny_run, spec=path)
    assert out.returncode == 0, out.stderr[-4000:]

    def metrics(prefix: str) -> dict:
        (f,) = (tiny_run / "tasks" / "evaluate").glob(f"{prefix}-*/metrics.json")
        return json.loads(f.read_text())["metrics"]

    for layer in (0, 1):
        original = metrics(f"tc-L{layer}-l1_0.001")
        imported = metrics(f"tc-L{layer}-pretrained")
        for name in ("l0", "fvu", "ce_loss_replaced", "kl"):
            assert imported[name] == pytest.approx(original[name], rel=1e-5, abs=1e-6), name
