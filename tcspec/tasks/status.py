"""Progress of a plan's tasks under a results folder (`tcspec status`): done, damaged,
stale, failed or running, to do."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tcspec import layout
from tcspec.evaluation.metrics import sanity_flags
from tcspec.plan.stages import STAGES
from tcspec.plan.task import Plan
from tcspec.tasks import integrity


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
    for stage in STAGES:
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
    for stage in STAGES:
        root = Path(results) / "tasks" / stage
        if root.exists():
            current = {t.id for t in plan.stage(stage)}
            n += sum(1 for d in root.iterdir() if d.is_dir() and d.name not in current)
    return n
