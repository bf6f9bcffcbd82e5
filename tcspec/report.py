"""Text views of a plan: the job table (`tcspec plan`) and progress (`tcspec status`)."""

from __future__ import annotations

import json
from pathlib import Path

from tcspec import paths
from tcspec.plan import Plan


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}Z{unit}"


def plan_table(plan: Plan, results: Path) -> str:
    """Jobs by stage with the compiler's estimates, and the totals."""
    spec = plan.spec
    lines = [f"experiment {spec.experiment}: {len(plan.tasks)} jobs", ""]
    header = f"{'stage':<9} {'id':<44} {'mem':>8} {'disk':>8} {'params':>8} {'flops':>8}"
    lines += [header, "-" * len(header)]
    totals = {"disk_mb": 0, "flops": 0, "params": 0}
    for stage in paths.STAGES:
        for t in plan.stage(stage):
            r = t.resources
            for k in totals:
                totals[k] += r.get(k, 0)
            lines.append(
                f"{stage:<9} {t.id:<44} {_human(r.get('mem_mb', 0) * 2**20, 'B'):>8} "
                f"{_human(r.get('disk_mb', 0) * 2**20, 'B') if r.get('disk_mb') else '':>8} "
                f"{_human(r['params']) if r.get('params') else '':>8} "
                f"{_human(r['flops']) if r.get('flops') else '':>8}"
            )
    counts = {s: len(plan.stage(s)) for s in paths.STAGES if plan.stage(s)}
    lines += [
        "",
        "jobs: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + f" (total {len(plan.tasks)})",
        f"activation cache: {_human(totals['disk_mb'] * 2**20, 'B')}; "
        f"dictionary parameters: {_human(totals['params'])}; "
        f"training FLOPs: {_human(totals['flops'])}",
    ]
    return "\n".join(lines)


def status_table(plan: Plan, results: Path) -> str:
    """Each task: done (with wall time), failed (log present, no done marker), or to do."""
    lines = []
    summary: dict[str, int] = {}
    for stage in paths.STAGES:
        for t in plan.stage(stage):
            done = t.done(results)
            log = paths.log_file(results, stage, t.id)
            if done.exists():
                wall = json.loads(done.read_text()).get("provenance", {}).get("wall_s")
                state = f"done ({wall:.0f} s)" if wall is not None else "done"
                key = "done"
            elif log.exists():
                state = key = "started or failed (see log)"
            else:
                state = key = "to do"
            summary[key] = summary.get(key, 0) + 1
            lines.append(f"{stage:<9} {t.id:<44} {state}")
    stale = _stale(plan, results)
    lines.append("")
    lines.append(", ".join(f"{k}: {v}" for k, v in summary.items()) + f"; stale outputs: {stale}")
    return "\n".join(lines)


def _stale(plan: Plan, results: Path) -> int:
    """Task folders of a stage that the current plan no longer names (older sweep values)."""
    n = 0
    for stage in paths.STAGES:
        root = Path(results) / "tasks" / stage
        if root.exists():
            current = {t.id for t in plan.stage(stage)}
            n += sum(1 for d in root.iterdir() if d.is_dir() and d.name not in current)
    return n
