"""A stream spec through Snakemake: no activation cache, the cache path's CE recovered; its
pass killed and rerun through the task layer: the uninterrupted weights."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402

from tcspec.plan.store import save_task  # noqa: E402
from tcspec.tasks import run_task  # noqa: E402

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


def _weights(results: Path, task_id: str) -> dict:
    from safetensors.torch import load_file

    from tcspec import layout
    from tcspec.vocab import WEIGHTS_FILE

    return load_file(layout.task_dir(results, "train", task_id) / WEIGHTS_FILE)


def test_killed_stream_pass_resumes_to_identical_weights(tmp_path):
    """SIGKILL the stream pass's job (`tcspec task group ID`) after its first checkpoint;
    the rerun resumes from the checkpoint (the stream's position and buffer rebuilt) and
    its weights equal an uninterrupted job's bitwise."""
    from tcspec import layout
    from tcspec.training import CHECKPOINT, read_checkpoint

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    plan = harness.plan(STREAM)
    harness.store(clean, STREAM)
    for stage in ("model", "tokens"):  # upstream of the pass, once for both runs
        run_task(plan.stage(stage)[0], clean, "cpu")
    harness.copy_results(clean, killed)
    (ids,) = plan.groups
    (member,) = [plan.get("train", i) for i in ids]
    steps = member.config.steps
    ckpt = harness.job_checkpoints(killed, "train", member.id, STREAM) / CHECKPOINT
    delay = random.Random(13).uniform(0.0, 0.3)  # a step after the first checkpoint
    kill = harness.kill_task("train", member.id, killed, trigger=ckpt, delay_s=delay, spec=STREAM)
    assert kill.killed and not member.done(killed).exists(), kill
    at = read_checkpoint(ckpt)["step"]
    assert 0 < at < steps and at % member.config.opts.checkpoint_every == 0

    for results in (killed, clean):  # the rerun, and the uninterrupted job
        rerun = harness.start_task("train", member.id, results, spec=STREAM)
        assert rerun.wait(timeout=300) == 0, harness.job_log(results, "train", member.id, STREAM)
    log = harness.job_log(killed, "train", member.id, STREAM).read_text()
    assert f"resuming from {ckpt} at step {at}/{steps}" in log
    assert not ckpt.exists()  # a finished pass drops its checkpoint
    assert not layout.task_dir(killed, "acts", member.id).parent.exists()  # no cache
    a, b = _weights(clean, member.id), _weights(killed, member.id)
    assert a.keys() == b.keys() and len(a) >= 4
    for k in a:
        assert torch.equal(a[k], b[k]), (k, at)
