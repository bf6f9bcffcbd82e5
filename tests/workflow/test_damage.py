"""Damaged outputs are found, named and rebuilt, never used.

From one finished run of tests/workflow/micro_attribution.yaml (conftest's, shared), each
kind of artifact (a dictionary's weights, an activation cache shard, metrics, feature
statistics, an attribution graph) is damaged by truncation and by a same-size overwrite, one
at a time: `tcspec status` names it, the next job that reads it fails with one line naming
the file and the task that made it, `tcspec export` refuses damaged weights and `tcspec
tables` damaged metrics. Then all five at once: their next jobs fail (the training pass as
a real process), and one plain Snakemake run rebuilds them equal to the first run's. A
damaged tables task is not published.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402

from tcspec import layout  # noqa: E402
from tcspec.cli import main  # noqa: E402
from tcspec.compute.threads import JOB_ENVIRONMENT  # noqa: E402
from tcspec.plan import Task  # noqa: E402

pytestmark = pytest.mark.slow
SPEC = harness.WORKFLOW / "micro_attribution.yaml"
KINDS = {  # kind: (stage of the task that writes it, the file in its folder, the next job)
    "weights": ("train", "weights.safetensors", "interp"),
    "cache shard": ("acts", "cache/shard_00001/blocks.0.hook_mlp_out.npy", "train"),
    "metrics": ("evaluate", layout.METRICS, "tables"),
    "stats": ("interp", f"{layout.STATS}/stats.safetensors", "study"),
    "graph": ("circuits", layout.graph_json(Path(), "tc-single", 0).name, "tables"),
}


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def overwrite(path: Path) -> None:
    """16 bytes in the middle become four float32 3.4e38: the same size, other bytes."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    patch = struct.pack("<4f", *[3.4e38] * 4)
    if data[at : at + 16] == patch:
        patch = bytes(b ^ 0xFF for b in patch)
    data[at : at + 16] = patch
    path.write_bytes(bytes(data))


@dataclass
class Target:
    kind: str
    task: Task  # the task that wrote the file
    path: Path
    job: Task  # the next job that reads it

    def made_by(self) -> str:
        return f"made by {self.task.stage} {self.task.id}"


def target(kind: str, results: Path, plan) -> Target:
    stage, file, reader = KINDS[kind]
    task = plan.stage(stage)[0]
    job = harness.job_of(plan.stage(reader)[0], SPEC)  # a train task's job is its pass
    return Target(kind, task, task.dir(results) / file, job)


@pytest.fixture
def copy(micro_attribution_run, tmp_path, monkeypatch):
    """A private copy of the finished run, and its plan; the environment a job sets for
    itself (`tcspec task` in this process) is restored after the test."""
    for name, value in (JOB_ENVIRONMENT | {"TQDM_MININTERVAL": "15"}).items():
        monkeypatch.setenv(name, os.environ.get(name, value))
    base, plan = micro_attribution_run
    return harness.copy_results(base, tmp_path / "results"), plan


def tcspec(capsys, *argv) -> tuple[int, str, str]:
    """`tcspec ARGV` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(text: str) -> str:
    lines = [s for s in text.splitlines() if s.strip()]
    assert len(lines) == 1, text
    return lines[0]


def assert_job_refuses(capsys, t: Target, results: Path, why: str) -> None:
    """The next job exits 2 with one line naming the file, why, and the task that made it."""
    code, _, err = tcspec(capsys, "task", t.job.stage, t.job.id, "--results", results)
    line = one_line(err)
    assert code == 2, err
    assert line.startswith(f"tcspec: {t.job.stage} {t.job.id}: damaged input {t.path}: "), line
    assert why in line and t.made_by() in line and "rerun to rebuild it" in line, line


def assert_status_names(capsys, t: Target, results: Path, why: str) -> None:
    """`tcspec status` names the task, the file and why; the task is no longer done."""
    code, out, _ = tcspec(capsys, "status", SPEC, "--results", results)
    assert code == 0
    line = next(s for s in out.splitlines() if s.split()[:2] == [t.task.stage, t.task.id])
    assert f"damaged: {t.path}: {why}" in line and "a rerun rebuilds it" in line, line
    assert "damaged: 1" in out.splitlines()[-1], out
    assert not t.task.done(results).exists()


class Saved:
    """A file and its task's record as they were, to put back (times too)."""

    def __init__(self, t: Target, results: Path):
        self.t, self.results = t, results
        self.data = t.path.read_bytes()
        done = t.task.done(results)
        self.record, self.times = (
            done.read_bytes(),
            (done.stat().st_atime_ns, done.stat().st_mtime_ns),
        )

    def restore(self) -> None:
        t, done = self.t, self.t.task.done(self.results)
        t.path.write_bytes(self.data)
        layout.damaged_file(self.results, t.task.stage, t.task.id).unlink()
        done.write_bytes(self.record)
        os.utime(done, ns=self.times)


def test_each_damaged_artifact_is_named_by_status_and_its_next_job(copy, capsys, tmp_path):
    """Per kind and damage: the job finds a truncation first (status then shows what it
    found), status finds an overwrite first (the job then names it); either way the task
    is marked not done. Export refuses damaged weights, `tcspec tables` damaged metrics."""
    results, plan = copy
    for kind, damage in product(KINDS, (truncate, overwrite)):
        t = target(kind, results, plan)
        saved = Saved(t, results)
        damage(t.path)
        why = "truncated to" if damage is truncate else "its xxh3_128 checksum differs"
        checks = [assert_job_refuses, assert_status_names]
        for check in checks if damage is truncate else checks[::-1]:
            check(capsys, t, results, why)
        record = json.loads(layout.damaged_file(results, t.task.stage, t.task.id).read_text())
        assert record["damaged"]["files"][0].startswith(f"{t.path}: "), (kind, record)
        if kind == "weights":
            out = tmp_path / f"export-{damage.__name__}"
            code, _, err = tcspec(capsys, "export", t.path.parent, "--to", "saelens", out)
            assert code == 2 and t.made_by() in one_line(err) and str(t.path) in err, err
            assert not out.exists()
        if kind == "metrics":
            code, _, err = tcspec(capsys, "tables", SPEC, "--results", results)
            assert code == 2 and f"damaged input {t.path}: " in one_line(err), err
        saved.restore()
    code, out, _ = tcspec(capsys, "status", SPEC, "--results", results)
    assert f"done: {len(plan.tasks)};" in out, out


def test_a_plain_rerun_rebuilds_what_jobs_found_damaged(copy, micro_attribution_run, capsys):
    """All five damaged at once (truncated and overwritten in turn); their next jobs fail,
    the training pass as the process Snakemake runs; one plain Snakemake run rebuilds every
    one of them, equal to the first run's, and status shows everything done."""
    results, plan = copy
    base, _ = micro_attribution_run
    targets = [target(kind, results, plan) for kind in KINDS]
    for i, t in enumerate(targets):
        (truncate if i % 2 == 0 else overwrite)(t.path)
    shard = targets[1]
    job = subprocess.run(
        [harness.BIN / "tcspec", "task", shard.job.stage, shard.job.id, "--results", results],
        cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert job.returncode == 2 and shard.made_by() in one_line(job.stderr), job.stderr
    for t in targets:
        if t is not shard:
            code, _, err = tcspec(capsys, "task", t.job.stage, t.job.id, "--results", results)
            assert code == 2 and "damaged input" in err, err
    assert not any(t.task.done(results).exists() for t in targets)

    run = harness.snakemake(results, spec=SPEC)
    assert run.returncode == 0, run.stderr[-3000:]
    code, out, _ = tcspec(capsys, "status", SPEC, "--results", results)
    assert f"done: {len(plan.tasks)};" in out and "damaged" not in out, out
    for t in targets:
        assert t.task.done(results).exists()
        assert not layout.damaged_file(results, t.task.stage, t.task.id).exists()
        before = base / t.path.relative_to(results)
        if t.kind == "metrics":  # its record holds the training's wall times
            same = (
                json.loads(t.path.read_text())["metrics"]
                == json.loads(before.read_text())["metrics"]
            )
        else:
            same = t.path.read_bytes() == before.read_bytes()
        assert same, t.kind


def test_damaged_tables_are_not_published(copy, capsys):
    """After a run, a damaged tables task is not copied to results/<experiment>/tables/: the
    run says so in one line and marks it not done, so the next run rebuilds it."""
    from tcspec.tasks.tables import publish_experiment

    results, plan = copy
    (task,) = plan.stage("tables")
    built = task.dir(results) / layout.TABLES / "sparsity_fidelity.csv"
    shown = layout.tables_dir(results, plan.spec.experiment) / built.name
    before = shown.read_bytes()
    overwrite(built)
    publish_experiment(plan, results)
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"tcspec: not published: damaged input {built}: "), line
    assert f"made by tables {task.id}" in line and not task.done(results).exists()
    assert shown.read_bytes() == before
