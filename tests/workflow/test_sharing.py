"""Content addressing in real use: specs share work and never destroy it.

Real Snakemake runs of the micro spec (tests/workflow/micro.yaml) and variants of it on one
results folder: a second spec adding one sweep point trains only that point; switching
back has nothing to do; no shared output is touched; `tcspec status` says what
`snakemake -n` will run; an interrupted run resumes with the plain command; an imported
dictionary goes through interp and a circuit study.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402
from harness import MICRO, snakemake  # noqa: E402

from tcspec import layout  # noqa: E402
from tcspec.plan.stages import PASSES, STAGES  # noqa: E402

pytestmark = pytest.mark.slow


def variant(folder: Path, name: str, replace: dict[str, str], base: Path = MICRO) -> Path:
    """A copy of the micro spec named ``name`` with text replaced."""
    text = base.read_text().replace("experiment: micro", f"experiment: {name}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def snapshot(results: Path, stages=("model", "tokens", "acts", "train")) -> dict:
    """(mtime_ns, sha256) of every file of the given stages' task folders."""
    out = {}
    for stage in stages:
        for f in sorted((results / "tasks" / stage).rglob("*")):
            if f.is_file():
                out[str(f)] = (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def dry_run_tasks(results: Path, spec: Path) -> set[tuple[str, str]]:
    """(stage, id) of every task whose done marker `snakemake -n` would write."""
    run = snakemake(results, "-n", spec=spec)
    assert run.returncode == 0, run.stderr[-3000:]
    pattern = re.escape(str(results)) + r"/tasks/([\w-]+)/([^/\s,]+)/task\.json"
    found = set()
    for line in run.stdout.splitlines():
        if line.strip().startswith("output:"):
            found |= set(re.findall(pattern, line))
    return found


def status_tasks(results: Path, spec: Path) -> set[tuple[str, str]]:
    """(stage, id) of every task `tcspec status` does not call done."""
    out = subprocess.run(
        [str(harness.BIN / "tcspec"), "status", str(spec), "--results", str(results)],
        cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split(None, 2) for line in out.splitlines()]
    rows = [r for r in rows if r and r[0] in STAGES]
    return {(r[0], r[1]) for r in rows if len(r) == 3 and not r[2].startswith("done")}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Spec A (micro) run to the end in a fresh results folder."""
    results = tmp_path_factory.mktemp("shared") / "results"
    run = snakemake(results)
    assert run.returncode == 0, run.stderr[-3000:]
    return results


def test_a_second_spec_trains_only_its_new_point_and_switching_back_is_a_no_op(shared, tmp_path):
    b = variant(tmp_path, "micro-b", {"l1: 1.0e-3": "l1: [1.0e-3, 2.0e-3]"})
    plan_a, plan_b = harness.plan(MICRO), harness.plan(b)
    for stage in ("model", "tokens", "acts"):
        assert [t.id for t in plan_a.stage(stage)] == [t.id for t in plan_b.stage(stage)]
    (old,) = [t.id for t in plan_a.stage("train")]
    new = {t.id for t in plan_b.stage("train")} - {old}
    assert len(new) == 1 and old in {t.id for t in plan_b.stage("train")}
    before = snapshot(shared)

    todo = dry_run_tasks(shared, b)
    assert todo == status_tasks(shared, b)  # status says what snakemake -n will run
    assert {i for s, i in todo if s == "train"} == new
    run = snakemake(shared, spec=b)
    assert run.returncode == 0, run.stderr[-3000:]
    (job,) = [p for p in (shared / "configs" / "group").glob("*.json")
              if json.loads(p.read_text())["config"]["members"] == sorted(new)]  # fmt: skip
    assert (layout.log_file(shared, "group", job.stem)).exists()
    assert not re.search(rf"rule train_\w+:[^\n]*\n(?:.*\n)*?.*{old}", run.stdout)
    after_b = snapshot(shared)
    assert {k: v for k, v in after_b.items() if k in before} == before  # untouched

    # back to A: nothing to do, and A's tables are shown again as they were
    assert dry_run_tasks(shared, MICRO) == set() == status_tasks(shared, MICRO)
    again = snakemake(shared)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert snapshot(shared) == after_b
    (tables,) = plan_a.stage("tables")
    shown = layout.tables_dir(shared, "micro")
    built = tables.dir(shared) / layout.TABLES
    assert sorted(p.name for p in shown.iterdir()) == sorted(p.name for p in built.iterdir())
    assert sorted(p.name for p in layout.tables_dir(shared, "micro-b").iterdir())


def test_status_agrees_with_a_dry_run_after_a_change_upstream(shared, tmp_path):
    results = harness.copy_results(shared, tmp_path / "results")
    later = time.time() + 5
    (tokens,) = harness.plan(MICRO).stage("tokens")
    os.utime(tokens.done(results), (later, later))
    todo = dry_run_tasks(results, MICRO)
    assert todo == status_tasks(results, MICRO)
    # a done train task is final: content addressing, not modification times, names it
    assert {s for s, _ in todo} == {"acts", "evaluate", "tables"}


def test_an_imported_dictionary_goes_through_interp_and_a_circuit_study(shared, tmp_path):
    """The trained micro transcoder, copied beside a spec and imported (`kind:
    pretrained`, a path relative to the spec): dashboards, the blind study and the
    greater-than study run on it, and the import's id follows the files' bytes."""
    (train,) = harness.plan(MICRO).stage("train")
    folder = tmp_path / "dicts" / "L0"
    folder.mkdir(parents=True)
    for name in ("cfg.json", "weights.safetensors"):
        shutil.copy(train.dir(shared) / name, folder / name)
    spec = variant(
        tmp_path,
        "micro-import",
        {
            "dictionaries:": 'dictionaries:\n  imp: {kind: pretrained, path: "dicts/L{layer}"}\n'
            "unused:",
            "evaluate: {batch_contexts: 16}": "evaluate: {batch_contexts: 16}\n"
            "interp: {features: 2, dashboard_features: 2, examples: 4, bands: 2, "
            "min_examples: 1}\n"
            "circuits: [{task: greater_than, dictionary: {name: imp}, prompts: 4, "
            "iterations: 1, branches: 2, top_paths: 2, keep_top_k: 4}]\n"
            "tables: {include: [sparsity_fidelity, interpretability, greater_than]}",
        },
    )
    text = spec.read_text()
    spec.write_text(text[: text.index("unused:")] + text[text.index("evaluate:") :])
    plan = harness.plan(spec)
    (imp,) = plan.stage("import")
    assert imp.config.path == str(folder.resolve())
    run = snakemake(shared, spec=spec)
    assert run.returncode == 0, run.stderr[-3000:]
    (features,) = plan.stage("interp")
    assert (features.dir(shared) / layout.DASHBOARD / "index.html").exists()
    (study,) = plan.stage("study")
    assert (study.dir(shared) / "packet" / "packet.html").exists()
    (circuit,) = plan.stage("circuits")
    summary = json.loads((circuit.dir(shared) / layout.SUMMARY).read_text())
    assert summary["coders"][0]["stage"] == "import"
    merged = (layout.tables_dir(shared, "micro-import") / "greater_than.csv").read_text()
    assert merged.splitlines()[0].startswith("yy,original,mlp_zero_ablated,")
    # the same metrics as the trained original (same weights, same eval tokens)
    (ev,) = plan.stage("evaluate")
    (ev_a,) = harness.plan(MICRO).stage("evaluate")
    metrics = [json.loads((t.dir(shared) / layout.METRICS).read_text()) for t in (ev, ev_a)]
    assert metrics[0]["metrics"] == metrics[1]["metrics"]
    # new bytes in the files: a new id
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "weights.safetensors").write_bytes(bytes(data))
    (moved,) = harness.plan(spec).stage("import")
    assert moved.id != imp.id


def test_sigint_to_snakemake_stops_training_and_the_plain_command_resumes(tmp_path):
    spec = variant(
        tmp_path,
        "micro-long",
        {"train_tokens: 8192": "train_tokens: 65536", "expansion: 2": "expansion: 32",
         "batch_size: 64": "batch_size: 8", "checkpoint_every: 16": "checkpoint_every: 512"},
    )  # fmt: skip
    results = tmp_path / "results"
    (train,) = harness.plan(spec).stage("train")
    job = harness.job_of(train, spec)
    ckpt = layout.checkpoint_dir(results, job.id) / "train.ckpt"
    proc = harness.start_snakemake(results, spec=spec, log=tmp_path / "first.log")
    t0 = time.monotonic()
    while not ckpt.exists() and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    assert ckpt.exists(), (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGINT)  # Snakemake alone, not its process group
    assert proc.wait(timeout=60) != 0
    assert not _running(job.id), "the training job outlived Snakemake"
    assert not train.done(results).exists()
    run = snakemake(results, spec=spec)  # the README's command: no extra flags
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert train.done(results).exists()
    assert "resuming from" in layout.log_file(results, job.stage, job.id).read_text()


def _running(text: str) -> bool:
    """Whether a process whose command line holds ``text`` is alive."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


def test_clean_lists_and_removes_what_no_given_spec_needs(shared, tmp_path):
    results = harness.copy_results(shared, tmp_path / "results")
    b = variant(tmp_path, "micro-b", {"l1: 1.0e-3": "l1: [1.0e-3, 2.0e-3]"})
    assert snakemake(results, "-n", spec=b).returncode == 0  # stores B's configs
    plan_a = harness.plan(MICRO)
    only_b = {(t.stage, t.id) for t in harness.plan(b).tasks.values()} - set(plan_a.tasks)

    def clean(*args: str) -> str:
        cmd = [str(harness.BIN / "tcspec"), "clean", *args, "--results", str(results)]
        run = subprocess.run(cmd, cwd=harness.ROOT, env=harness.env(), capture_output=True,
                             text=True, check=True)  # fmt: skip
        return run.stdout

    clean(str(MICRO), str(b), "--yes")  # what other tests here left in the shared folder
    assert clean(str(MICRO), str(b)).splitlines()[-1].startswith("0 of ")
    listed = clean(str(MICRO))
    rows = {tuple(line.split()) for line in listed.splitlines()[:-1]}
    assert {(s, i) for s, i in rows if s not in PASSES} == only_b
    assert "remove with --yes" in listed
    a_dirs = [str(t.dir(results)) for t in plan_a.tasks.values()]
    before = {k: v for k, v in snapshot(results).items() if k.startswith(tuple(a_dirs))}
    clean(str(MICRO), "--yes")
    assert clean(str(MICRO)).splitlines()[-1].startswith("0 of ")
    assert {k: v for k, v in snapshot(results).items() if k.startswith(tuple(a_dirs))} == before
    again = snakemake(results, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_a_point_trained_alone_equals_it_trained_beside_others(shared, tmp_path):
    """One id, one result: the micro point trained alone (spec A) and in one pass with a
    second point (spec B, fresh folder) has byte-identical weights."""
    b = variant(tmp_path, "micro-b", {"l1: 1.0e-3": "l1: [1.0e-3, 2.0e-3]"})
    results = tmp_path / "results"
    run = snakemake(results, spec=b)
    assert run.returncode == 0, run.stderr[-3000:]
    (group,) = harness.plan(b).groups
    assert len(group) == 2  # both points in one pass
    (train,) = harness.plan(MICRO).stage("train")
    files = ("weights.safetensors", "density.safetensors")
    for name in files:
        alone = (train.dir(shared) / name).read_bytes()
        assert (train.dir(results) / name).read_bytes() == alone, name
