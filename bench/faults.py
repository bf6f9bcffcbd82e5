"""Fault injection over the real pipeline: what was tried, and what survived.

Starting from one uninterrupted run of tests/workflow/micro.yaml (one job per stage), each
trial breaks a private copy of it and records what happened:

- kill      SIGKILL a stage's job (`tcspec task`) at a random point of its baseline wall time,
            or right after the file it writes first appears; then Snakemake finishes the
            stage and its artifacts are compared with the baseline's, bitwise.
- kill-smk  SIGKILL Snakemake and its job (one session) during training; then
            `snakemake --rerun-incomplete` and every output is compared.
- corrupt   flip one byte in / truncate a file a job reads; the job must fail naming it.
- disk-full a job whose files may not grow past a limit (RLIMIT_FSIZE: writes fail with
            EFBIG as they fail with ENOSPC on a full disk); it must fail saying so and leave
            no task.json and no complete-looking artifact.
- lock      a second Snakemake on the same results folder while the first runs.

    python bench/faults.py                   # every fault once (~5-15 min on 2 busy cores)
    python bench/faults.py --kills 3         # three random kill points per stage
    python bench/faults.py --only kill corrupt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "workflow"))
import harness  # noqa: E402
from harness import copy_results, snakemake, task_of  # noqa: E402

from tcspec import layout as paths  # noqa: E402

STAGES = ("model", "tokens", "acts", "train", "evaluate", "tables")


@dataclass
class Row:
    fault: str
    target: str
    how: str
    outcome: str
    survived: bool


# --------------------------------------------------------------------------- helpers
def fingerprint(results: Path, stage: str) -> dict[str, str]:
    """The artifacts of one stage's task that a rerun must reproduce bitwise."""
    t = task_of(stage)
    d = t.dir(results)
    if stage == "model":
        files = [d / "weights.safetensors", d / "tokenizer.json"]
    elif stage == "tokens":
        files = [d / "tokens" / "train.npy", d / "tokens" / "eval.npy"]
    elif stage == "acts":
        files = sorted((d / "cache").rglob("*.npy"))
    elif stage == "train":
        files = sorted(d.rglob("weights.safetensors"))
    elif stage == "evaluate":
        record = json.loads((d / "metrics.json").read_text())
        return {"metrics": json.dumps(record["metrics"], sort_keys=True)}
    else:
        files = sorted(paths.tables_dir(results, "micro").glob("*.csv"))
    from tcspec.data.tokens import sha256_file

    return {str(f.relative_to(results)): sha256_file(f) for f in files}


def job_seconds(results: Path, stage: str) -> float:
    job = harness.job_of(task_of(stage), harness.MICRO)  # a train task's job is its pass
    rows = paths.benchmark_file(results, job.stage, job.id).read_text().splitlines()
    return float(rows[1].split("\t")[0])


def short(text: str, width: int = 70) -> str:
    text = text.replace(str(Path(tempfile.gettempdir())), "$TMP")
    return text if len(text) <= width else text[: width - 3] + "..."


def fresh_copy(base: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.rmtree(dst, ignore_errors=True)
    return copy_results(base, dst)


# ---------------------------------------------------------------------------- faults
def kills(base: Path, work: Path, n: int, rng: random.Random) -> list[Row]:
    rows = []
    for stage in STAGES:
        t = task_of(stage)
        first_file = {
            "tokens": t.dir(work) / ".tokens.tmp*",
            "acts": t.dir(work) / ".cache.tmp*" / "shard_00000",
            "train": harness.job_checkpoints(work, "train", t.id) / "train.ckpt",
        }.get(stage)
        points = [(None, rng.uniform(0.0, 1.2) * job_seconds(base, stage)) for _ in range(n)]
        if first_file is not None:
            points.append((first_file.name, rng.uniform(0.0, 0.05)))
        for trigger_name, delay in points:
            results = fresh_copy(base, work, f"kill-{stage}")
            for later in STAGES[STAGES.index(stage) :]:
                harness.remove_task(results, later, task_of(later).id)
            trigger = None
            if first_file is not None and trigger_name:
                trigger = results / first_file.relative_to(work)
            k = harness.kill_task(stage, t.id, results, trigger=trigger, delay_s=delay)
            how = f"after {trigger_name} + {delay:.2f} s" if trigger else f"at {delay:.1f} s"
            if not k.killed:
                how += " (job had ended)"
            run = snakemake(results, "--rerun-incomplete", stage)
            same = run.returncode == 0 and fingerprint(results, stage) == fingerprint(base, stage)
            resumed = (
                stage == "train"
                and "resuming from" in harness.job_log(results, stage, t.id).read_text()
            )
            outcome = f"left {len(k.left)} files, no task.json" if k.killed else "finished"
            outcome += "; resumed from checkpoint" if resumed else ""
            outcome += "; rerun bitwise equal" if same else f"; rerun DIFFERS (rc {run.returncode})"
            rows.append(Row("kill", stage, how, outcome, same))
    return rows


def kill_snakemake(base: Path, work: Path) -> list[Row]:
    results = fresh_copy(base, work, "kill-snakemake")
    for stage in ("train", "evaluate", "tables"):
        harness.remove_task(results, stage, task_of(stage).id)
    ckpt = harness.job_checkpoints(results, "train", task_of("train").id) / "train.ckpt"
    proc = harness.start_snakemake(results, cores=1, log=results / "snakemake.log")
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    plain = snakemake(results)  # what does the next run say?
    text = plain.stdout + plain.stderr
    if plain.returncode and "cannot be locked" in text and "--unlock" in text:
        said = "next run refused: stale lock, says --unlock"
    else:
        said = f"next run rc {plain.returncode}"
    harness.drop_locks(results)  # `snakemake --unlock` for this results folder only
    run = snakemake(results, "--rerun-incomplete")
    same = run.returncode == 0 and harness.outputs(results) == harness.outputs(base)
    return [
        Row(
            "kill-smk",
            "snakemake + train job",
            "after train.ckpt appears",
            f"{said}; --rerun-incomplete: "
            + ("all outputs bitwise equal" if same else "outputs DIFFER"),
            same,
        )
    ]


def run_job(stage: str, results: Path, max_file_bytes: int | None = None):
    t = task_of(stage)
    cmd = harness.task_cmd(stage, t.id, results)
    if max_file_bytes is None:
        return subprocess.run(
            cmd, cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True
        )
    return harness.limited_run(cmd, max_file_bytes, cwd=harness.ROOT, env=harness.env())


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def cut(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def partial_checkpoint(results: Path) -> Path:
    """Kill the training job right after its first checkpoint; return the checkpoint."""
    t = task_of("train")
    harness.remove_task(results, "train", t.id)
    ckpt = harness.job_checkpoints(results, "train", t.id) / "train.ckpt"
    k = harness.kill_task("train", t.id, results, trigger=ckpt)
    if not k.killed or not ckpt.exists():
        raise RuntimeError("training ended before it could be killed at a checkpoint")
    return ckpt


def corruptions(base: Path, work: Path) -> list[Row]:
    cache = task_of("acts").dir(work) / "cache"
    manifest = json.loads((task_of("acts").dir(base) / "cache" / "manifest.json").read_text())
    shard = cache / next(iter(manifest["shards"][1]["files"].values()))["file"]
    tokens = task_of("tokens").dir(work) / "tokens"
    model = task_of("model").dir(work) / "weights.safetensors"
    cases = [  # (file, damage, job that reads it)
        (shard, flip, "train"),
        (shard, cut, "train"),
        (tokens / "train.npy", flip, "acts"),
        (tokens / "eval.npy", cut, "evaluate"),
        ("checkpoint", flip, "train"),
        ("checkpoint", cut, "train"),
        (model, flip, "acts"),
    ]
    rows = []
    for target, damage, stage in cases:
        results = fresh_copy(base, work, "corrupt")
        if target == "checkpoint":
            path = partial_checkpoint(results)  # the train task removed, its checkpoint left
        else:
            path = results / Path(target).relative_to(work)
            harness.remove_task(results, stage, task_of(stage).id)
        damage(path)
        run = run_job(stage, results)
        last = harness.last_line(run.stdout + run.stderr)
        named = str(path) in last
        failed = run.returncode != 0
        same = (not failed) and fingerprint(results, stage) == fingerprint(base, stage)
        if failed:
            outcome = ("failed, names the file: " if named else "failed, file NOT named: ") + last
        else:
            outcome = "SILENTLY USED; output " + ("equal" if same else "DIFFERS")
        rows.append(
            Row(
                "corrupt",
                f"{path.name} -> {stage}",
                damage.__name__,
                short(outcome, 90),
                failed and named and not task_of(stage).done(results).exists(),
            )
        )
    return rows


def disk_full(base: Path, work: Path) -> list[Row]:
    limits = {
        "model": 64 * 1024,
        "tokens": 16 * 1024,
        "acts": 256 * 1024,
        "train": 32 * 1024,
        "evaluate": 512,
        "tables": 512,
    }
    rows = []
    for stage, limit in limits.items():
        results = fresh_copy(base, work, "disk-full")
        t = task_of(stage)
        harness.remove_task(results, stage, t.id)
        run = run_job(stage, results, limit)
        last = harness.last_line(run.stdout + run.stderr)
        left = sorted(p.name for p in t.dir(results).rglob("*")) if t.dir(results).exists() else []
        complete_looking = {
            "task.json",
            "manifest.json",
            "weights.safetensors",
            "cfg.json",
            "metrics.json",
        } & set(left)
        clear = "File too large" in last or "No space" in last
        ok = run.returncode != 0 and clear and not complete_looking
        outcome = f"rc {run.returncode}: {last}" if run.returncode else "finished (fit)"
        if complete_looking:
            outcome += f"; LEFT {sorted(complete_looking)}"
        rows.append(
            Row(
                "disk-full",
                stage,
                f"files <= {limit // 1024 or limit} {'kB' if limit >= 1024 else 'B'}",
                short(outcome, 90),
                ok,
            )
        )
    return rows


def lock(base: Path, work: Path) -> list[Row]:
    results = fresh_copy(base, work, "lock")
    for stage in ("train", "evaluate", "tables"):
        harness.remove_task(results, stage, task_of(stage).id)
    first = harness.start_snakemake(results, cores=1, log=results / "first.log")
    started = harness.job_log(results, "train", task_of("train").id)
    while not started.exists() and first.poll() is None:
        time.sleep(0.01)
    other = harness.start_snakemake(
        results, spec=harness.MICRO_L1B, cores=1, log=results / "other.log"
    )
    again = snakemake(results, "--rerun-incomplete")
    running = first.poll() is None
    rc_first, rc_other = first.wait(), other.wait()
    msg = next(
        (s.strip() for s in (again.stdout + again.stderr).splitlines() if "cannot be locked" in s),
        "",
    )
    same = harness.outputs(results) == harness.outputs(base)
    return [
        Row(
            "lock",
            "same spec twice",
            "while the first runs" if running else "too late",
            short(f"second refused: {msg}" if again.returncode else "second RAN", 90),
            again.returncode != 0 and bool(msg),
        ),
        Row(
            "lock",
            "two specs, one cache",
            "micro + micro-l1b side by side",
            f"rc {rc_first}/{rc_other}; micro outputs " + ("bitwise equal" if same else "DIFFER"),
            rc_first == 0 and rc_other == 0 and same,
        ),
    ]


# ------------------------------------------------------------------------------- main
def table(rows: list[Row]) -> str:
    head = ("fault", "target", "how", "survived", "outcome")
    cells = [(r.fault, r.target, r.how, "yes" if r.survived else "NO", r.outcome) for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 7)]
    return "\n".join([*lines, *(fmt.format(*c) for c in cells)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=1, help="random kill points per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only", nargs="*", default=["kill", "kill-smk", "corrupt", "disk-full", "lock"]
    )
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tcspec-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base = harness.baseline(work)
    print(f"baseline: {base} ({time.monotonic() - t0:.0f} s)", flush=True)
    rng = random.Random(args.seed)
    rows: list[Row] = []
    steps = {
        "kill": lambda: kills(base, work, args.kills, rng),
        "kill-smk": lambda: kill_snakemake(base, work),
        "corrupt": lambda: corruptions(base, work),
        "disk-full": lambda: disk_full(base, work),
        "lock": lambda: lock(base, work),
    }
    for name in args.only:
        t = time.monotonic()
        try:
            new = steps[name]()
        except Exception as exc:  # one broken group of trials must not hide the others
            new = [Row(name, "(bench)", "", short(f"trial error: {exc!r}", 90), False)]
        rows += new
        print(f"{name}: {len(new)} trials, {time.monotonic() - t:.0f} s", flush=True)
    print()
    print(table(rows))
    survived = sum(r.survived for r in rows)
    print(f"\n{survived}/{len(rows)} survived; {time.monotonic() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
