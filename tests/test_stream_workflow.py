"""A stream spec through Snakemake: no activation cache, the cache path's CE recovered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "workflow"))
import harness  # noqa: E402

from tcspec.tasks import run_task, save_task  # noqa: E402

STREAM = harness.WORKFLOW / "micro_stream.yaml"


def _metrics(results: Path, spec: Path) -> dict:
    (task,) = harness.plan(spec).stage("evaluate")
    return json.loads((task.dir(results) / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_stream_spec_runs_end_to_end_without_a_cache(tmp_path):
    results = tmp_path / "results"
    stream = harness.snakemake(results, spec=STREAM)
    assert stream.returncode == 0, stream.stderr[-4000:]
    assert not (results / "tasks" / "acts").exists()
    plan = harness.plan(STREAM)
    assert not plan.stage("acts") and len(plan.groups) == 1
    (member,) = plan.stage("train")
    assert set(member.deps) == {"model", "tokens"}
    assert (member.dir(results) / "weights.safetensors").is_file()
    assert (results / "micro-stream" / "tables").is_dir()

    # the same spec from a cache, in this process (it shares the model and tokens tasks)
    spec = yaml.safe_load(STREAM.read_text())
    spec["experiment"], spec["acts"] = "micro-cache", {"batch_contexts": 16}
    cache_spec = tmp_path / "cache.yaml"
    cache_spec.write_text(yaml.safe_dump(spec))
    cache = harness.plan(cache_spec)
    for t in cache.tasks.values():
        save_task(results, t)
    (acts,) = cache.stage("acts")
    run_task(acts, results, "cpu")
    (ids,) = cache.groups
    run_task(harness.job_of(cache.get("train", ids[0]), cache_spec), results, "cpu")
    run_task(cache.stage("evaluate")[0], results, "cpu")

    s, c = _metrics(results, STREAM), _metrics(results, cache_spec)
    assert s["ce_loss_original"] == c["ce_loss_original"]  # same model, same eval tokens
    print(f"CE recovered: stream {s['ce_recovered']:.4f}, cache {c['ce_recovered']:.4f}")
    assert 0.5 < c["ce_recovered"] < 1.0
    assert abs(s["ce_recovered"] - c["ce_recovered"]) < 0.05
