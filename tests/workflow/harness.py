"""Run the pipeline the way a person does (Snakemake, `tcspec task`), break it, and compare.

Shared by tests/workflow/test_faults.py, tests/plan/test_cluster.py and bench/faults.py. Everything runs
as real subprocesses from the repository root; nothing is mocked.

- ``snakemake(results, ...)``: a Snakemake run of a spec (``-c2`` unless told otherwise).
- ``start_task`` / ``kill_task``: one job's command line (``tcspec task STAGE ID``) with
  its log where the rule writes it, killed with SIGKILL when a file appears or at a delay;
  a train task runs as its group's training pass (``job_of``).
- ``outputs(results, spec)``: every result a person reads, as comparable values: each
  metrics.json's ``metrics``, each dictionary's tensors (bytes), the tables' CSV files.
- ``limited_run``: a command under a file-size limit (RLIMIT_FSIZE), the portable stand-in
  for a full disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "tests" / "workflow"
MICRO = WORKFLOW / "micro.yaml"
MICRO_L1B = WORKFLOW / "micro_l1b.yaml"
CLUSTER_PROFILE = ROOT / "profiles" / "cluster-sim"
BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    """The environment of every run: offline, one thread per job, the venv's bin first."""
    out = dict(os.environ)
    out.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=str(BIN) + os.pathsep + os.environ.get("PATH", ""),
    )
    out.update(extra)
    return out


# ------------------------------------------------------------------------------ the plan
def plan(spec: Path = MICRO):
    from tcspec.plan import compile_plan
    from tcspec.spec.loader import load_spec

    return compile_plan(load_spec(spec))


def job_of(task, spec: Path = MICRO):
    """The job that runs ``task``: itself, or for a train (evaluate) task the training
    (evaluation) pass of its whole group (what a fresh run starts)."""
    from tcspec.plan import pass_task

    p = plan(spec)
    groups = p.member_groups().get(task.stage)
    if groups is None:
        return task
    (ids,) = [g for g in groups if task.id in g]
    return pass_task([p.get(task.stage, i) for i in ids], p)


def task_of(stage: str, spec: Path = MICRO):
    """The one task of ``stage`` in the spec's plan (the micro spec has one per stage)."""
    tasks = plan(spec).stage(stage)
    if len(tasks) != 1:
        raise ValueError(f"{spec} has {len(tasks)} {stage} tasks; name one")
    return tasks[0]


# ------------------------------------------------------------------------------- running
def snakemake_cmd(results: Path, *args: str, spec: Path = MICRO, cores: int | None = 2):
    cmd = [sys.executable, "-m", "snakemake"]
    if cores is not None:
        cmd.append(f"-c{cores}")
    return cmd + ["--config", f"spec={spec}", f"results={results}", *args]


def snakemake(
    results: Path, *args: str, spec: Path = MICRO, cores: int | None = 2, **kw
) -> subprocess.CompletedProcess:
    """Run Snakemake on ``spec`` to completion; returns the finished process (text)."""
    return subprocess.run(
        snakemake_cmd(results, *args, spec=spec, cores=cores),
        cwd=ROOT,
        env=kw.pop("env", None) or env(),
        capture_output=True,
        text=True,
        **kw,
    )


def start_snakemake(
    results: Path, *args: str, spec: Path = MICRO, cores: int | None = 2, log: Path
) -> subprocess.Popen:
    """Start Snakemake in the background, its output to ``log``."""
    out = open(log, "w")  # noqa: SIM115 - closed by the caller's wait()
    return subprocess.Popen(
        snakemake_cmd(results, *args, spec=spec, cores=cores),
        cwd=ROOT,
        env=env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def task_cmd(stage: str, task_id: str, results: Path, spec: Path = MICRO) -> list[str]:
    """The command a Snakemake job runs (rules/common.smk); a train or evaluate task's is
    its pass's."""
    job = job_of(plan(spec).get(stage, task_id), spec)
    stage, task_id = job.stage, job.id
    return [str(BIN / "tcspec"), "task", stage, task_id, "--results", str(results)]


def store(results: Path, spec: Path = MICRO) -> None:
    """Store every task's config of the spec, and its fresh training and evaluation
    passes', as building the DAG does."""
    from tcspec.plan.store import save_task

    p = plan(spec)
    passes = [job_of(p.get("train", g[0]), spec) for g in p.groups]
    passes += [job_of(p.get("evaluate", g[0]), spec) for g in p.eval_groups]
    for t in [*p.tasks.values(), *passes]:
        save_task(results, t)


def job_log(results: Path, stage: str, task_id: str, spec: Path = MICRO) -> Path:
    """The log of the job that runs a task (a train or evaluate task's: its pass's)."""
    from tcspec import layout

    if stage in ("train", "evaluate"):
        job = job_of(plan(spec).get(stage, task_id), spec)
        return layout.log_file(results, job.stage, job.id)
    return layout.log_file(results, stage, task_id)


def job_checkpoints(results: Path, stage: str, task_id: str, spec: Path = MICRO) -> Path:
    from tcspec import layout

    job = job_of(plan(spec).get(stage, task_id), spec)
    return layout.checkpoint_dir(results, job.id)


def start_task(
    stage: str,
    task_id: str,
    results: Path,
    spec: Path = MICRO,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """Start one job as Snakemake would (its config stored first, as building the DAG
    does), its output in the job's log file."""
    store(results, spec)
    log = job_log(results, stage, task_id, spec)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(
            task_cmd(stage, task_id, results, spec),
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )


@dataclass
class Kill:
    """What happened to one job killed with SIGKILL."""

    stage: str
    trigger: str
    delay_s: float
    killed: bool
    """False when the job had already finished when the signal was due."""
    elapsed_s: float
    left: list[str] = field(default_factory=list)
    """Files of the task (and its checkpoints) that the killed job left behind."""


def appeared(path: Path) -> bool:
    """Whether a path (glob patterns allowed in any part) exists."""
    path = Path(path)
    return any(Path(path.anchor).glob(str(path.relative_to(path.anchor))))


def kill_task(
    stage: str,
    task_id: str,
    results: Path,
    *,
    trigger: Path | None = None,
    delay_s: float = 0.0,
    spec: Path = MICRO,
    timeout_s: float = 600.0,
) -> Kill:
    """Start a job and SIGKILL it ``delay_s`` seconds after ``trigger`` exists (after its
    start when ``trigger`` is None; ``trigger`` may hold glob patterns, e.g. the per-process
    temporary ``.cache.tmp*/shard_00000``). Polls every 2 ms."""
    from tcspec import layout

    t0 = time.monotonic()
    proc = start_task(stage, task_id, results, spec)
    while trigger is not None and not appeared(trigger) and proc.poll() is None:
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            raise TimeoutError(f"{trigger} did not appear within {timeout_s} s")
        time.sleep(0.002)
    deadline = time.monotonic() + delay_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    elapsed = time.monotonic() - t0
    roots = [
        layout.task_dir(results, stage, task_id),
        job_checkpoints(results, stage, task_id, spec),
    ]
    left = sorted(str(p.relative_to(results)) for r in roots if r.exists() for p in r.rglob("*"))
    return Kill(stage, str(trigger.name) if trigger else "start", delay_s, killed, elapsed, left)


def drop_locks(results: Path, dry_run: bool = False) -> list[Path]:
    """Remove the Snakemake locks that name files under ``results`` (only list them with
    ``dry_run``): what ``snakemake --unlock`` does after a killed run, limited to one
    results folder (the lock folder ROOT/.snakemake/locks is shared by every run started in
    the repository)."""
    dropped = []
    prefix = str(Path(results).absolute())
    for lock in (ROOT / ".snakemake" / "locks").glob("*.lock"):
        try:
            files = lock.read_text().splitlines()
        except FileNotFoundError:
            continue
        if any(f.startswith(prefix) for f in files):
            if not dry_run:
                lock.unlink(missing_ok=True)
            dropped.append(lock)
    return dropped


def limited_run(cmd: list[str], max_file_bytes: int, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` where no file may grow past ``max_file_bytes``: writes past it fail with
    EFBIG ("File too large"), as they fail with ENOSPC on a full disk (SIGXFSZ, which would
    kill the process instead, is ignored)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------- comparing
def outputs(results: Path, spec: Path = MICRO) -> dict[str, object]:
    """Every result of the spec as comparable values (raise if one is missing):

    ``metrics/<evaluate id>``: the ``metrics`` dict of metrics.json (floats, exact);
    ``weights/<train id>/<tensor>``: sha256 of each tensor's bytes (safetensors);
    ``tables/<file>.csv``: the CSV text.
    """
    from safetensors.numpy import load_file

    from tcspec import layout

    p = plan(spec)
    out: dict[str, object] = {}
    for t in p.stage("evaluate"):
        record = json.loads((t.dir(results) / "metrics.json").read_text())
        out[f"metrics/{t.id}"] = record["metrics"]
    for t in p.stage("train"):
        folder = layout.task_dir(results, t.stage, t.id)
        for name, array in sorted(load_file(str(folder / "weights.safetensors")).items()):
            out[f"weights/{t.id}/{name}"] = hashlib.sha256(array.tobytes()).hexdigest()
    tables = layout.tables_dir(results, p.spec.experiment)
    csvs = sorted(tables.glob("*.csv"))
    if not csvs:
        raise FileNotFoundError(f"no tables in {tables}")
    for f in csvs:
        out[f"tables/{f.name}"] = f.read_text()
    return out


def differences(a: dict, b: dict) -> list[str]:
    """Keys whose values differ (or that only one side has)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def copy_results(src: Path, dst: Path) -> Path:
    """A copy of a results folder, modification times kept (Snakemake compares them)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def remove_task(results: Path, stage: str, task_id: str, spec: Path = MICRO) -> None:
    """Forget a finished task: its folder, its job's log and checkpoints."""
    from tcspec import layout

    shutil.rmtree(layout.task_dir(results, stage, task_id), ignore_errors=True)
    shutil.rmtree(job_checkpoints(results, stage, task_id, spec), ignore_errors=True)
    job_log(results, stage, task_id, spec).unlink(missing_ok=True)


def baseline(store: Path) -> Path:
    """An uninterrupted ``-c2`` run of the micro spec in ``store/baseline`` (made once per
    folder: a second call finds it finished and returns it)."""
    results = store / "baseline"
    tables_done = task_of("tables").done(results)
    if not tables_done.exists():
        shutil.rmtree(results, ignore_errors=True)
        run = snakemake(results)
        if run.returncode != 0:
            raise RuntimeError(f"baseline run failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return results


def last_line(text: str) -> str:
    """The line that says why a job failed: the last ``SomeError: message`` or
    ``tcspec [command]: message`` line (a traceback's last line, or the CLI's one-line error;
    progress bars closing at exit may follow it), else the last non-blank line. Carriage returns of progress bars end lines too."""
    lines = [s.strip() for s in text.replace("\r", "\n").splitlines() if s.strip()]
    errors = [m.group(0) for s in lines if (m := ERROR_LINE.search(s))]
    return errors[-1] if errors else (lines[-1] if lines else "")


# "SomeError: ..." (a traceback's last line) or "tcspec: ..." (a user error), anywhere in
# a line: a progress bar without a newline may precede it
ERROR_LINE = re.compile(r"(\b[A-Za-z_][\w.]*(Error|Exception|Exit)|\btcspec( [a-z]+)?): .*$")
