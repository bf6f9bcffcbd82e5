"""A text view of a plan: the job table (`tcspec plan`)."""

from __future__ import annotations

from pathlib import Path

from tcspec.plan import Plan, estimate
from tcspec.plan.stages import PASSES, STAGES


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}Z{unit}"


def plan_table(plan: Plan, results: Path) -> str:
    """The jobs Snakemake runs, with what each asks the scheduler for (``mem_mb``,
    ``runtime``: the estimates with their margins, `tcspec.plan.estimate`) and the estimate of
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
    counts = {s: len(plan.stage(s)) for s in STAGES if plan.stage(s)}
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
        f"{rate_line(_precision(plan))}; runtime = {estimate.TIME_MARGIN:g} x time, mem = "
        f"{estimate.MEM_MARGIN:g} x (estimate + {estimate.RUNTIME_BYTES // estimate.MB} MB)",
    ]
    if plan.stream_shape is not None:
        lines += ["", *stream_passes(plan)]
    return "\n".join(line.rstrip() for line in lines)


def plan_jobs(plan: Plan) -> list:
    """The jobs of a fresh run, in stage order: a task of a per-task rule, or a pass."""
    from tcspec.plan import pass_task

    jobs = []
    for stage in STAGES:
        groups = plan.member_groups().get(stage)
        if groups is None:
            jobs += plan.stage(stage)
        else:
            jobs += [pass_task([plan.get(stage, i) for i in g], plan) for g in groups]
    return jobs


def _members(plan: Plan, job) -> list:
    members = getattr(job.config, "members", None)
    if members is None:
        return [job]
    stage = PASSES[job.stage]
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
