"""The pipeline survives faults: killed jobs, concurrent runs, damaged files, a full disk.

Every test starts from one uninterrupted run of tests/workflow/micro.yaml (six jobs, one
per stage), shared by the module, and compares what a person reads (each metrics.json's
metrics, each dictionary's tensors, the tables' CSV) bitwise: on CPU a rerun after a fault
must give exactly what the uninterrupted run gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402
from harness import MICRO, MICRO_L1B, kill_task, snakemake, task_of  # noqa: E402

from tcspec import compute, layout  # noqa: E402
from tcspec.tasks import integrity, run_task  # noqa: E402

pytestmark = pytest.mark.slow
KILL_SEED = 20240607


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    store = tmp_path_factory.getbasetemp() / "micro"
    store.mkdir(exist_ok=True)
    return harness.baseline(store)


@pytest.fixture(scope="module")
def base_outputs(base) -> dict:
    return harness.outputs(base)


@pytest.fixture
def copy(base, tmp_path) -> Path:
    """A private copy of the finished baseline run."""
    return harness.copy_results(base, tmp_path / "results")


def job_seconds(results: Path, stage: str, task_id: str) -> float:
    """Wall time of a finished Snakemake job (its benchmark file)."""
    rows = layout.benchmark_file(results, stage, task_id).read_text().splitlines()
    return float(rows[1].split("\t")[0])


def tcspec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(harness.BIN / "tcspec"), *args],
        cwd=harness.ROOT,
        env=harness.env(),
        capture_output=True,
        text=True,
    )


def flip_byte(path: Path, at: float = 0.5) -> None:
    """Invert one byte, ``at`` of the way into the file: same size, different content."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


def context(results: Path, stage: str, spec: Path = MICRO):
    """(the stage's task, the job that runs it, that job's Context)."""
    from tcspec.tasks import Context

    task = task_of(stage, spec)
    job = harness.job_of(task, spec)
    harness.store(results, spec)
    return task, job, Context(job, results, "cpu")


# ----------------------------------------------------------------------- killed jobs
def kill_point(stage: str, results: Path, base: Path, rng: random.Random):
    """(trigger file, delay after it) for a kill inside the stage's own work: after the
    files it writes first appear, or at a random point of its baseline wall time."""
    t = task_of(stage)
    folder = t.dir(results)
    if stage == "model":
        return folder, rng.uniform(0.0, 1.0)  # its folder appears as training starts
    if stage == "tokens":
        return folder / ".tokens.tmp*", rng.uniform(0.0, 0.2)
    if stage == "acts":
        return folder / ".cache.tmp*" / "shard_00000", rng.uniform(0.0, 0.2)
    if stage == "train":
        return harness.job_checkpoints(results, "train", t.id) / "train.ckpt", 0.0
    # evaluate and tables write only at their end: a random point of the whole job
    job = harness.job_of(t)
    return None, rng.uniform(0.3, 1.0) * job_seconds(base, job.stage, job.id)


def test_killed_jobs_resume_to_identical_outputs(base, base_outputs, tmp_path):
    """SIGKILL each stage's job mid-work, let Snakemake finish the stage, and the finished
    run equals the uninterrupted one bitwise; training resumes from its checkpoint."""
    results = tmp_path / "results"
    rng = random.Random(KILL_SEED)
    kills = []
    for stage in ("model", "tokens", "acts", "train", "evaluate", "tables"):
        t = task_of(stage)
        trigger, delay = kill_point(stage, results, base, rng)
        k = kill_task(stage, t.id, results, trigger=trigger, delay_s=delay)
        kills.append(k)
        if stage == "acts" and not t.done(results).exists():
            assert not (t.dir(results) / "cache" / "manifest.json").exists()
        if stage == "train" and not t.done(results).exists():
            status = tcspec("status", str(MICRO), "--results", str(results)).stdout
            assert re.search(rf"acts\s+{task_of('acts').id}\s+done", status), status
            line = next(s for s in status.splitlines() if s.startswith("train"))
            assert "failed or running" in line and "checkpoint" in line, status
            assert re.search(r"evaluate\s+\S+\s+to do", status), status
            assert "done: 3, failed or running: 1, to do: 2" in status, status
        run = snakemake(results, "--rerun-incomplete", stage)
        assert run.returncode == 0, run.stderr[-3000:]
        assert t.done(results).exists()
        if stage == "train" and any(f.endswith("train.ckpt") for f in k.left):
            log = harness.job_log(results, "train", t.id).read_text()
            assert "resuming from" in log and "train.ckpt" in log
            assert not (harness.job_checkpoints(results, "train", t.id) / "train.ckpt").exists()
    final = snakemake(results, "--rerun-incomplete")
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Nothing to be done" in final.stdout + final.stderr
    assert harness.differences(harness.outputs(results), base_outputs) == []
    resumed = [k for k in kills if k.stage == "train" and "train.ckpt" in " ".join(k.left)]
    assert resumed, f"training was not killed between two checkpoints: {kills}"


def test_snakemake_reruns_a_job_killed_with_it(base, base_outputs, copy):
    """Kill Snakemake itself (and its job) during training: the next run is refused by the
    stale lock with advice to unlock; after unlocking, `--rerun-incomplete` resumes the
    training from its checkpoint and every output equals the uninterrupted run's."""
    t = task_of("train")
    for stage in ("train", "evaluate", "tables"):
        harness.remove_task(copy, stage, task_of(stage).id)
    ckpt = harness.job_checkpoints(copy, "train", t.id) / "train.ckpt"
    proc = harness.start_snakemake(copy, cores=1, log=copy / "snakemake.log")
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job: one session
    proc.wait()
    assert not t.done(copy).exists()
    if harness.drop_locks(copy, dry_run=True):  # unless someone ran `snakemake --unlock`
        refused = snakemake(copy)  # the killed run's stale lock refuses the next run
        message = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "cannot be locked" in message and "--unlock" in message, message[-2000:]
        harness.drop_locks(copy)  # `snakemake --unlock`, for this results folder only
    run = snakemake(copy, "--rerun-incomplete")
    assert run.returncode == 0, run.stderr[-3000:]
    assert harness.differences(harness.outputs(copy), base_outputs) == []
    assert "resuming from" in harness.job_log(copy, "train", t.id).read_text()


# --------------------------------------------------------------- concurrent invocations
def test_lock_and_a_shared_cache(base, base_outputs, copy):
    """Two specs that share one activation cache run side by side on one results folder
    and leave the cache untouched; a second run of a spec already running is refused by
    Snakemake's lock with a message that says what to do."""
    for stage in ("train", "evaluate", "tables"):
        harness.remove_task(copy, stage, task_of(stage).id)
    acts = task_of("acts")
    assert task_of("acts", MICRO_L1B).id == acts.id
    cache = acts.dir(copy) / "cache"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("*") if p.is_file()}
    done_before = acts.done(copy).stat().st_mtime_ns

    first = harness.start_snakemake(copy, cores=1, log=copy / "first.log")
    started = harness.job_log(copy, "train", task_of("train").id)
    while not started.exists() and first.poll() is None:
        time.sleep(0.01)
    other = harness.start_snakemake(copy, spec=MICRO_L1B, cores=1, log=copy / "other.log")
    # the same spec while the first run holds its outputs (with --rerun-incomplete, as in
    # profiles/local: without it the running job's output is reported as incomplete instead)
    again = snakemake(copy, "--rerun-incomplete")
    first_still_running = first.poll() is None
    assert first.wait() == 0, (copy / "first.log").read_text()[-3000:]
    assert other.wait() == 0, (copy / "other.log").read_text()[-3000:]

    assert first_still_running, "the first run ended before the second could try the lock"
    assert again.returncode != 0
    message = again.stdout + again.stderr
    assert "cannot be locked" in message and "--unlock" in message, message[-2000:]

    assert harness.differences(harness.outputs(copy), base_outputs) == []
    assert harness.outputs(copy, MICRO_L1B)  # the other spec finished too
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("*") if p.is_file()}
    assert after == before
    assert acts.done(copy).stat().st_mtime_ns == done_before


# ----------------------------------------------------------------------- damaged files
def shard_file(results: Path, shard: int = 1) -> Path:
    manifest = json.loads((task_of("acts").dir(results) / "cache" / "manifest.json").read_text())
    entry = manifest["shards"][shard]["files"]
    return task_of("acts").dir(results) / "cache" / next(iter(entry.values()))["file"]


def test_corrupted_cache_shard_fails_the_job_and_names_the_file(copy):
    """One flipped byte in a shard: the training job fails, its message names the file and
    the acts task (now marked not done), and neither task.json nor weights appear; `tcspec
    status` shows the job's line and the damaged cache."""
    t, acts = task_of("train"), task_of("acts")
    harness.remove_task(copy, "train", t.id)
    bad = shard_file(copy)
    flip_byte(bad)
    job = harness.start_task("train", t.id, copy)
    assert job.wait() != 0
    log = harness.job_log(copy, "train", t.id).read_text()
    last = harness.last_line(log)
    assert str(bad) in last and "checksum differs" in last and f"acts {acts.id}" in last, last
    assert not t.done(copy).exists() and not acts.done(copy).exists()
    assert not list(t.dir(copy).rglob("weights.safetensors"))
    status = tcspec("status", str(MICRO), "--results", str(copy)).stdout
    line = next(s for s in status.splitlines() if s.startswith("train"))
    assert "failed or running" in line and str(bad) in line, status
    line = next(s for s in status.splitlines() if s.startswith("acts"))
    assert f"damaged: {bad}: " in line, status


def test_truncated_cache_shard_is_named(copy):
    truncate(shard_file(copy, 0))
    task, job, _ = context(copy, "train")
    harness.remove_task(copy, "train", task.id)
    with pytest.raises(ValueError, match=re.escape(str(shard_file(copy, 0))) + ".*truncated"):
        run_task(job, copy)
    assert not task.done(copy).exists()


@pytest.mark.parametrize("split,stage", [("train", "acts"), ("eval", "evaluate")])
@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_damaged_token_file_is_named(copy, split, stage, damage):
    tokens = task_of("tokens").dir(copy) / "tokens" / f"{split}.npy"
    damage(tokens)
    task, job, _ = context(copy, stage)
    harness.remove_task(copy, stage, task.id)
    why = "truncated to" if damage is truncate else "its xxh3_128 checksum differs"
    made_by = f"made by tokens {task_of('tokens').id}"
    with pytest.raises(ValueError, match=f"{re.escape(str(tokens))}: {why}.*; {made_by}"):
        run_task(job, copy)
    assert not task.done(copy).exists() and not task_of("tokens").done(copy).exists()


def partial_training(results: Path, stop_after: int) -> Path:
    """Train the micro transcoder until batch ``stop_after`` fails to arrive (a crash), so
    that the checkpoint of step 16 is left behind; returns its path."""
    from tcspec.data.cache import ActivationReader
    from tcspec.tasks import group as group_run
    from tcspec.training import train_group

    task, _, ctx = context(results, "train")
    harness.remove_task(results, "train", task.id)
    group = [group_run.member(ctx, task)]
    keys = sorted({k for m in group for k in (m.in_key, m.out_key)})
    reader = ActivationReader(
        ctx.dep_dir("acts") / "cache", keys, batch_size=64, seed=task.config.data_seed
    )

    def batches(start: int):
        for i, batch in enumerate(reader.iter_batches(start), start):
            if i == stop_after:
                raise ConnectionError("the data went away")
            yield batch

    with pytest.raises(ConnectionError):
        train_group(
            group,
            batches,
            task.config.steps,
            ctx.checkpoints,
            progress=False,
            log=lambda s: None,
        )
    ckpt = ctx.checkpoints / "train.ckpt"
    assert ckpt.is_file()  # the checkpoint of step 16
    return ckpt


def test_crashed_training_resumes_to_identical_weights(copy, base_outputs):
    """The in-process twin of the SIGKILL test: a crash after step 20, then the job."""
    partial_training(copy, stop_after=20)
    _, job, _ = context(copy, "train")
    run_task(job, copy)
    out = harness.outputs(copy)
    weights = {k: v for k, v in base_outputs.items() if k.startswith("weights/")}
    assert {k: out[k] for k in weights} == weights


@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_damaged_checkpoint_is_named_and_never_used(copy, damage):
    ckpt = partial_training(copy, stop_after=20)
    damage(ckpt)
    task, job, _ = context(copy, "train")
    with pytest.raises(ValueError, match=re.escape(str(ckpt))):
        run_task(job, copy)
    assert not task.done(copy).exists()


# -------------------------------------------------------------------------- full disk
def test_disk_full_while_caching_leaves_no_complete_looking_cache(copy):
    """Writes fail past 256 kB per file (a shard file is 256 kB + header): the acts job
    fails saying so, and leaves no task.json, no cache folder, no temporary folder."""
    t = task_of("acts")
    harness.remove_task(copy, "acts", t.id)
    run = harness.limited_run(
        harness.task_cmd("acts", t.id, copy), 256 * 1024, cwd=harness.ROOT, env=harness.env()
    )
    assert run.returncode != 0
    last = harness.last_line(run.stdout + run.stderr)
    assert "File too large" in last, last
    assert not t.done(copy).exists()
    assert not (t.dir(copy) / "cache").exists()
    assert not list(t.dir(copy).glob(".cache.tmp*"))


def test_disk_full_while_training_leaves_no_weights(copy):
    """Checkpoints (~50 kB) cannot be written: the job fails on the first one, with no
    task.json, no weights and no temporary files left."""
    t = task_of("train")
    harness.remove_task(copy, "train", t.id)
    run = harness.limited_run(
        harness.task_cmd("train", t.id, copy), 32 * 1024, cwd=harness.ROOT, env=harness.env()
    )
    assert run.returncode != 0
    assert not t.done(copy).exists()
    assert not list(t.dir(copy).rglob("weights.safetensors"))
    assert not list(t.dir(copy).rglob("cfg.json"))
    ckpt = harness.job_checkpoints(copy, "train", t.id)
    assert not ckpt.exists() or not list(ckpt.iterdir())
    last = harness.last_line(run.stdout + run.stderr)
    assert "File too large" in last or "No space" in last, last


# ------------------------------------------------------------------ determinism, records
def test_same_spec_twice_is_bitwise_identical(base_outputs, tmp_path):
    """A second fresh run (one core, so jobs also run in another order) gives byte-identical
    metrics, weights and tables."""
    run = snakemake(tmp_path / "again", cores=1)
    assert run.returncode == 0, run.stderr[-3000:]
    assert harness.differences(harness.outputs(tmp_path / "again"), base_outputs) == []


def test_every_task_records_its_provenance(base):
    from importlib.metadata import version

    plan = harness.plan(MICRO)

    def is_commit(sha: str) -> bool:
        return not subprocess.run(
            ["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=harness.ROOT, capture_output=True
        ).returncode

    for task in plan.tasks.values():
        record = json.loads(task.done(base).read_text())
        assert (record["stage"], record["id"]) == (task.stage, task.id)
        folder = task.dir(base)
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert set(record["outputs"]) == files - {layout.DONE}  # every file it wrote
        assert integrity.problems(folder) == []  # at its recorded size and checksum
        assert record["config"] == task.config.model_dump(mode="json")
        assert (
            record["config_sha256"] == hashlib.sha256(task.config.canonical().encode()).hexdigest()
        )
        assert record["deps"] == {k: list(v) for k, v in task.deps.items()}
        prov = record["provenance"]
        assert prov["threads"] == task.resources["threads"]
        assert prov["versions"]["torch"] == version("torch")
        assert prov["versions"]["tcspec"] == version("tcspec")
        assert prov["device"] == "cpu"
        assert prov["determinism"]["bitwise_resume"] == "cpu"  # no CUDA setting on a CPU
        assert not prov["determinism"]["deterministic_algorithms"]
        assert (prov["cpu"], prov["cpu_features"]) == (compute.cpu_model(), compute.cpu_features())
        if task.stage == "train":  # the precision it trained in (auto: fp32 on a CPU)
            assert record["summary"]["result"]["precision"] == task.config.opts.precision == "fp32"
        commit = prov["git_commit"]  # None outside a git checkout
        assert commit is None or (re.fullmatch(r"[0-9a-f]{40}", commit) and is_commit(commit))
        job = harness.job_of(task)
        assert 0 < prov["wall_s"] <= job_seconds(base, job.stage, job.id)
        time.strptime(prov["finished"], "%Y-%m-%dT%H:%M:%S%z")


def test_status_of_a_finished_and_a_touched_run(copy):
    status = tcspec("status", str(MICRO), "--results", str(copy))
    assert status.returncode == 0
    assert "done: 6;" in status.stdout
    later = time.time() + 5
    os.utime(task_of("tokens").done(copy), (later, later))  # tokens finished again, later
    status = tcspec("status", str(MICRO), "--results", str(copy)).stdout
    assert "done: 3, stale: 3" in status, status
    evaluate = next(s for s in status.splitlines() if s.startswith("evaluate"))
    assert f"upstream tokens {task_of('tokens').id} finished after it" in evaluate
    train = next(s for s in status.splitlines() if s.startswith("train"))
    assert "done" in train  # final: its id names the cache it trained on
