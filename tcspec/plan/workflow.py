"""The bridge from a compiled Plan to Snakemake rules.

Building the DAG stores every task's frozen config under its id (``tcspec.plan.store``,
written only when absent), so a job is named by its stage and id alone: rules carry nothing
of the spec (no params), and two specs sharing a task share its job and its outputs.

Rules: one per stage over an ``{id}`` wildcard (``rules/tasks.smk``), and one per pass
(``rules/passes.smk``, declared in a loop): a training pass trains the members of a group
over one cache or stream, an evaluation pass evaluates the sweep points of a dictionary
over one clean and one ablated forward per hook. A pass's outputs are the done markers of
the members of its group that are not done yet, so a done member is never an output again
(never deleted, retrained or re-evaluated) while the new ones still share one pass.
Nothing here imports Snakemake, so it is tested like any other module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tcspec import atomic, layout
from tcspec.compute.throughput import DEFAULT_GPU_CLASS, Rates
from tcspec.plan import DEFAULT_STREAM_BUDGET_MB, Plan, Task, compile_plan, pass_task
from tcspec.plan.stages import PASSES, STAGES
from tcspec.plan.store import save_task
from tcspec.spec.loader import SpecError, load_spec

ID_PATTERN = r"[A-Za-z0-9_.\-]+"
DEVICE_ENV = "TCSPEC_DEVICE"
"""The device jobs run on (auto, cpu, cuda): the Snakefile sets it from the spec
(``Workflow.device``) and jobs inherit it; not part of any id or rule."""


class Workflow:
    def __init__(
        self,
        spec_file: str,
        results: str,
        stream_budget_mb: int | None = None,
        gpu_class: str | None = None,
        sustained_tflops: float | None = None,
    ):
        """``stream_budget_mb``: the per-job memory of a stream pass (Snakemake's
        ``--config stream_budget_mb=N``); ``gpu_class`` and ``sustained_tflops``: the GPU
        the time estimates assume (`tcspec.compute.throughput.Rates`). The machine's, never the
        spec's: they change no id."""
        self.spec_file = str(spec_file)
        self.results = Path(results)
        try:
            rates = machine_rates(gpu_class, sustained_tflops)
        except ValueError as exc:
            print(f"tcspec: --config: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        try:
            spec = load_spec(spec_file)
            budget = int(stream_budget_mb or DEFAULT_STREAM_BUDGET_MB)
            self.plan: Plan = compile_plan(spec, budget, rates)
        except SpecError as exc:  # located, one line per problem; no traceback
            print(exc, file=sys.stderr)
            raise SystemExit(2) from None
        record_stream_budget(self.results, spec.experiment, budget)
        self.passes = pending_passes(self.plan, self.results)
        for task in [*self.plan.tasks.values(), *self.passes]:
            save_task(self.results, task)

    @property
    def device(self) -> str:
        """The spec's device, which jobs run on (`DEVICE_ENV`)."""
        return self.plan.spec.device

    # ---- per-rule paths with an {id} wildcard
    def done(self, stage: str) -> str:
        return str(layout.done_file(self.results, stage, "{id}"))

    def log(self, stage: str) -> str:
        return str(layout.log_file(self.results, stage, "{id}"))

    def benchmark(self, stage: str) -> str:
        return str(layout.benchmark_file(self.results, stage, "{id}"))

    # ---- lookups by wildcard
    def inputs(self, stage: str):
        """Input function: the named done markers of the task's upstream tasks."""

        def inputs(wildcards) -> dict[str, str]:
            return self.plan.inputs(self.plan.get(stage, wildcards.id), self.results)

        return inputs

    def resource(self, stage: str, name: str, default=0):
        """Resource function: an estimate computed by the compiler for this task."""

        def resource(wildcards):
            return self.plan.get(stage, wildcards.id).resources.get(name, default)

        return resource

    @staticmethod
    def partition_of(gpu: int, gpu_partition: str) -> str:
        """The SLURM partition of a job given `gpu` GPUs: `gpu_partition`, or "cpu"."""
        return gpu_partition if gpu else "cpu"

    def partition(self, stage: str, gpu_partition: str):
        """Resource function: the SLURM partition of the task (`partition_of`)."""

        def partition(wildcards):
            gpu = self.plan.get(stage, wildcards.id).resources.get("gpu", 0)
            return self.partition_of(gpu, gpu_partition)

        return partition

    # ---- training and evaluation passes (concrete rules, no wildcards)
    def pass_outputs(self, task: Task) -> list[str]:
        stage = PASSES[task.stage]
        return [str(layout.done_file(self.results, stage, i)) for i in task.config.members]

    def pass_file(self, task: Task, kind: str) -> str:
        files = {"log": layout.log_file, "benchmark": layout.benchmark_file}
        return str(files[kind](self.results, task.stage, task.id))

    # ---- targets
    def targets(self, *stages: str) -> list[str]:
        stages = stages or STAGES
        return [str(t.done(self.results)) for s in stages for t in self.plan.stage(s)]


def machine_rates(gpu_class: str | None, sustained_tflops: float | None) -> Rates:
    """The rates of the machine side's ``gpu_class`` (default: the table's) and override
    (ValueError for an unknown class or a rate <= 0)."""
    tflops = None if sustained_tflops in (None, "") else float(sustained_tflops)
    return Rates(gpu_class=gpu_class or DEFAULT_GPU_CLASS, sustained_tflops=tflops)


def pending_passes(plan: Plan, results: Path) -> list[Task]:
    """One training pass per group with members not done (only those members), then one
    evaluation pass per eval group with members not done or older than an upstream task (a
    done train task is final: its id names what it trained on; an evaluation reruns when
    its inputs finished after it, as a task of a generic rule does)."""
    out = []
    for stage, groups in plan.member_groups().items():
        for ids in groups:
            todo = [plan.get(stage, i) for i in ids]
            todo = [t for t in todo if not t.done(results).exists() or _older(t, results)]
            if todo:
                out.append(pass_task(todo, plan))
    return out


def _older(task: Task, results: Path) -> bool:
    """Whether a done evaluate task finished before one of its inputs (or one is missing)."""
    if task.stage == "train":
        return False
    mtime = task.done(results).stat().st_mtime_ns
    for stage, dep_id in task.deps.values():
        dep = layout.done_file(results, stage, dep_id)
        if not dep.exists() or dep.stat().st_mtime_ns > mtime:
            return True
    return False


def record_stream_budget(results: Path, experiment: str, budget_mb: int) -> None:
    """Record the stream budget a DAG is built with (written when it changes)."""
    if recorded_stream_budget(results, experiment) != budget_mb:
        atomic.write_json(
            layout.stream_budget_file(results, experiment), {"stream_budget_mb": budget_mb}
        )


def recorded_stream_budget(results: Path, experiment: str) -> int | None:
    """The stream budget (MB) the spec's last DAG under ``results`` was built with."""
    try:
        record = json.loads(layout.stream_budget_file(results, experiment).read_text())
    except FileNotFoundError:
        return None
    return int(record["stream_budget_mb"])


def stop_jobs_on_interrupt() -> None:
    """On SIGINT, terminate the jobs this process started (its child processes) before
    Snakemake's own handling, which otherwise waits for them to finish. Linux only."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        for pid in _children(os.getpid()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out
