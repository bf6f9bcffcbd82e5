"""Text views of a plan: the job table (`tcspec plan`) and progress (`tcspec status`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tcspec import layout
from tcspec.evaluation.metrics import sanity_flags
from tcspec.plan import Plan, cost
from tcspec.tasks import integrity


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}Z{unit}"


def plan_table(plan: Plan, results: Path) -> str:
    """The jobs Snakemake runs, with what each asks the scheduler for (``mem_mb``,
    ``runtime``: the estimates with their margins, `tcspec.plan.cost`) and the estimate of
    its time; training and evaluation run in passes, whose members are listed under them
    with their own parameters and training FLOPs."""
    spec, sizer = plan.spec, plan.sizer
    jobs = plan_jobs(plan)
    lines = [f"experiment {spec.experiment}: {len(plan.tasks)} tasks in {len(jobs)} jobs", ""]
    header = (
        f"{'stage':<9} {'id':<44} {'gpu':>3} {'mem':>8} {'time':>8} {'runtime':>8} "
        f"{'disk':>8} {'params':>7} {'flops':>7}"
    )
    lines += [header, "-" * len(header)]
    totals = {"disk_mb": 0, "flops": 0, "params": 0}
    gpu_s = cpu_s = 0.0
    for job in jobs:
        r = job.resources
        gpu_s, cpu_s = gpu_s + r["seconds"] * bool(r["gpu"]), cpu_s + r["seconds"] * (not r["gpu"])
        lines.append(
            f"{job.stage:<9} {job.id:<44} {r['gpu']:>3} {_human(r['mem_mb'] * 2**20, 'B'):>8} "
            f"{_duration(r['seconds']):>8} {str(r['runtime']) + ' min':>8} "
            f"{_human(r['disk_mb'] * 2**20, 'B') if r.get('disk_mb') else '':>8} "
            f"{_counts(r)}"
        )
        for t in _members(plan, job):
            for k in totals:
                totals[k] += t.resources.get(k, 0)
            if t is not job:
                lines.append(_member_line(t))
    counts = {s: len(plan.stage(s)) for s in layout.STAGES if plan.stage(s)}
    lines += [
        "",
        "tasks: "
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + f" (total {len(plan.tasks)}); jobs {len(jobs)}",
        f"activation cache: {_human(totals['disk_mb'] * 2**20, 'B')}; "
        f"dictionary parameters: {_human(totals['params'])}; "
        f"training FLOPs: {_human(totals['flops'])}",
        f"estimated time: GPU jobs {gpu_s / 3600:.2f} h, CPU jobs {cpu_s / 3600:.2f} h",
        f"rates: GPU jobs at {sizer.rates.describe(_precision(plan))}; CPU jobs "
        f"{rate_line(_precision(plan))}; runtime = {cost.TIME_MARGIN:g} x time, mem = "
        f"{cost.MEM_MARGIN:g} x (estimate + {cost.RUNTIME_BYTES // cost.MB} MB)",
    ]
    if plan.stream_shape is not None:
        lines += ["", *stream_passes(plan)]
    return "\n".join(line.rstrip() for line in lines)


def plan_jobs(plan: Plan) -> list:
    """The jobs of a fresh run, in stage order: a task of a per-task rule, or a pass."""
    from tcspec.plan import eval_group_task, group_task

    jobs = []
    for stage in layout.STAGES:
        if stage == "train":
            jobs += [group_task([plan.get(stage, i) for i in g], plan) for g in plan.groups]
        elif stage == "evaluate":
            jobs += [eval_group_task([plan.get(stage, i) for i in g], plan)
                     for g in plan.eval_groups]  # fmt: skip
        else:
            jobs += plan.stage(stage)
    return jobs


def _members(plan: Plan, job) -> list:
    members = getattr(job.config, "members", None)
    if members is None:
        return [job]
    stage = layout.PASS_MEMBERS[job.stage]
    return [plan.get(stage, i) for i in members]


def _member_line(t) -> str:
    return f"  {t.id:<51} {'':>8} {'':>8} {'':>8} {'':>8} {_counts(t.resources)}"


def _counts(r: dict) -> str:
    """The params and training FLOPs columns of a task's resources (blank for others)."""
    return (
        f"{_human(r['params']) if r.get('params') else '':>7} "
        f"{_human(r['flops']) if r.get('flops') else '':>7}"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _precision(plan: Plan) -> str:
    """The precision of the plan's first trained dictionary (fp32 where none trains)."""
    trained = plan.stage("train") + plan.stage("clt")
    return trained[0].config.opts.precision if trained else "fp32"


def rate_line(precision: str) -> str:
    """The sustained rate of one CPU thread (`tcspec.compute.throughput.Rates`)."""
    from tcspec.compute.throughput import Rates

    rate = Rates().flops_per_s(0, precision) / 1e9
    return f"at {rate:.3g} GFLOP/s a thread ({precision})"


def stream_passes(plan: Plan) -> list[str]:
    """One line per stream training pass: its dictionaries, memory, disk and GPU time."""
    from tcspec.plan import group_task
    from tcspec.plan.stream import stream_memory

    lines = ["stream passes:"]
    for ids in plan.groups:
        members = [plan.get("train", i) for i in ids]
        memory = stream_memory([m.config for m in members], plan.stream_shape)
        task = group_task(members, plan)
        r = task.resources
        layers = sorted({m.config.layer for m in members})
        hours = f"~{r['seconds'] / 3600:.2f} {'GPU' if r['gpu'] else 'CPU'} h"
        lines.append(
            f"  {task.id}: {len(members)} dictionaries at layers {layers}; "
            f"memory {memory.describe()}; disk {_human(r['disk_mb'] * 2**20, 'B')}; {hours} "
            f"(runtime {r['runtime']} min)"
        )
    return lines


def status_table(plan: Plan, results: Path) -> str:
    """Each task's state, then the counts:

    - ``done (N s)``: its task.json exists (N: the task's wall time);
    - ``damaged``: a file it wrote differs from the checksum its task.json records (or is
      gone); the line names it, and the task is marked not done (``tcspec.tasks.integrity``)
      so that the next run rebuilds it; the same once a job found it damaged;
    - ``stale``: done, but an upstream task is missing or was finished after it (Snakemake
      reruns it, and everything after it); never a done train task, which content
      addressing makes final (its id names what it trained on);
    - ``failed or running``: a log but no task.json; the log's last line is shown (the error
      of a failed job), and a training checkpoint when one is there to resume from;
    - ``to do``: never started.

    Task folders of earlier configs or of other specs sharing the results folder are counted
    as ``other task folders``.
    """
    from tcspec.plan.workflow import pending_passes

    results = Path(results)
    passes = {m: p for p in pending_passes(plan, results) for m in p.config.members}
    lines = []
    summary: dict[str, int] = {}
    keys: dict[tuple[str, str], str] = {}  # (stage, id) -> summary key, upstream first
    for stage in layout.STAGES:
        for t in plan.stage(stage):
            key, state = _task_state(t, results, keys, passes.get(t.id, t))
            keys[(stage, t.id)] = key
            summary[key] = summary.get(key, 0) + 1
            lines.append(f"{stage:<9} {t.id:<44} {state}")
    lines.append("")
    counts = ", ".join(f"{k}: {summary[k]}" for k in STATES if k in summary)
    lines.append(f"{counts}; other task folders: {_stale(plan, results)}")
    return "\n".join(lines)


STATES = ("done", "damaged", "stale", "failed or running", "to do")


def _task_state(task, results: Path, upstream: dict, job) -> tuple[str, str]:
    """(summary key, the line's state text) of one task; ``upstream`` holds the keys of the
    tasks before it; ``job`` is what runs it (itself, or the training pass of a member)."""
    done = task.done(results)
    if done.exists():
        found = integrity.problems(task.dir(results))
        if found:  # marked not done, so that Snakemake rebuilds it
            integrity.invalidate(task.dir(results), found, by="tcspec status")
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            return "damaged", f"damaged: {found[0]}{more}; marked not done: a rerun rebuilds it"
        mtime = done.stat().st_mtime_ns
        # a done train task is no job's output (passes train only members not done): final
        deps = {} if task.stage == "train" else task.deps
        for stage, dep_id in deps.values():
            dep = layout.done_file(results, stage, dep_id)
            if upstream.get((stage, dep_id)) == "damaged":
                return "stale", f"stale: upstream {stage} {dep_id} is damaged"
            if not dep.exists():
                return "stale", f"stale: upstream {stage} {dep_id} is missing"
            if dep.stat().st_mtime_ns > mtime:
                return "stale", f"stale: upstream {stage} {dep_id} finished after it"
            if upstream.get((stage, dep_id)) == "stale":
                return "stale", f"stale: upstream {stage} {dep_id} is stale"
        try:
            record = json.loads(done.read_text())
        except (OSError, ValueError):
            return "done", "done (task.json unreadable)"
        wall = record.get("provenance", {}).get("wall_s")
        text = f"done ({wall:.0f} s)" if wall is not None else "done"
        flags = sanity_flags(record.get("summary", {}).get("metrics") or {})
        return "done", text + "".join(f"; warning: {f}" for f in flags)
    log = layout.log_file(results, job.stage, job.id)
    damage = integrity.recorded_damage(task.dir(results))
    marked = layout.damaged_file(results, task.stage, task.id)
    if damage and not (log.exists() and log.stat().st_mtime_ns > marked.stat().st_mtime_ns):
        return "damaged", f"damaged: {damage}; marked not done: a rerun rebuilds it"
    if log.exists():
        state = "failed or running"
        last = _last_line(log)
        if last:
            state += f": {last}"
        ckpt = layout.checkpoint_dir(results, job.id)
        if ckpt.is_dir() and any(p.is_file() for p in ckpt.iterdir()):
            state += f" [checkpoint in {ckpt}: a rerun resumes from it]"
        return "failed or running", state
    return "to do", "to do"


# "SomeError: ..." (a traceback's last line) or "tcspec: ..." (a user error), anywhere in
# a line: a progress bar without a newline may precede it
ERROR_LINE = re.compile(r"(\b[A-Za-z_][\w.]*(Error|Exception|Exit)|\btcspec): .*$")


def _last_line(path: Path, width: int = 400) -> str:
    """What a log says last: its last ``SomeError: message`` line (a traceback ends with it,
    though progress bars closing at exit may print after it), else its last non-blank line.
    Progress bars' carriage returns end lines too."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 16384))
        tail = f.read().decode("utf-8", errors="replace")
    lines = [s.strip() for s in tail.replace("\r", "\n").splitlines() if s.strip()]
    errors = [m.group(0) for s in lines if (m := ERROR_LINE.search(s))]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return last if len(last) <= width else last[: width - 3] + "..."


def _stale(plan: Plan, results: Path) -> int:
    """Task folders of a stage that the current plan does not name (older sweep values, or
    another spec sharing the results folder)."""
    n = 0
    for stage in layout.STAGES:
        root = Path(results) / "tasks" / stage
        if root.exists():
            current = {t.id for t in plan.stage(stage)}
            n += sum(1 for d in root.iterdir() if d.is_dir() and d.name not in current)
    return n
