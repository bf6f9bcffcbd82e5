"""Task entry points: one module per stage (its row in ``tcspec.plan.stages``), each with
``run(ctx)``.

Every Snakemake job runs ``tcspec task STAGE ID --results R``: ``load_task`` reads the
task's frozen config (and its upstream tasks' configs) from the config store under its id
(``tcspec.plan.store``), never from a spec; ``run_task`` checks the inputs are complete,
runs the stage with the stage's thread count, and writes ``task.json`` last (atomically):
the config, its provenance and the checksums of the files it wrote, which every reader
verifies (``tcspec.tasks.integrity``). Only this package, ``tcspec.plan`` and the CLI know
the results layout; the library modules below them take plain arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tcspec import atomic, layout
from tcspec.compute import cpu_features, cpu_model, resolve_device
from tcspec.plan.configs import CoderRef
from tcspec.plan.stages import PASS_OF, stage
from tcspec.plan.store import load_task
from tcspec.plan.task import Task
from tcspec.tasks import integrity


@dataclass
class Context:
    task: Task
    results: Path
    device: str

    @property
    def config(self):
        return self.task.config

    @property
    def out(self) -> Path:
        """The task's folder (created)."""
        d = self.task.dir(self.results)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def dep(self, name: str) -> Task:
        return load_task(self.results, *self.task.deps[name])

    def dep_dir(self, name: str) -> Path:
        return layout.task_dir(self.results, *self.task.deps[name])

    def deps_of(self, stage: str) -> list[Task]:
        return [load_task(self.results, s, i) for s, i in self.task.deps.values() if s == stage]

    def coder_dir(self, ref: CoderRef) -> Path:
        return layout.task_dir(self.results, ref.stage, ref.id)

    @property
    def checkpoints(self) -> Path:
        return layout.checkpoint_dir(self.results, self.task.id)


def run_task(task: Task, results: Path, device: str = "auto", require_inputs=True) -> dict:
    """Run one task (or one pass, which writes its members' records) and write its record."""
    results = Path(results)
    row = stage(task.stage)
    if row.run is None:
        raise ValueError(f"a {row.name} task runs in a pass; run its `{PASS_OF[row.name]}` task")
    upstream = verify_inputs(task, results)  # even optional inputs
    missing = [str(d / layout.DONE) for d in upstream if not (d / layout.DONE).exists()]
    if missing and require_inputs:
        raise ValueError(f"inputs not complete: {', '.join(missing)}")
    device = resolve_device(device)
    import torch

    from tcspec.compute.determinism import make_deterministic

    make_deterministic(device)  # before CUDA's first GEMM in this process
    torch.set_num_threads(int(task.resources.get("threads", 1)))
    start = time.time()
    summary = importlib.import_module(row.module).run(Context(task, results, device)) or {}
    if row.is_pass:
        return summary  # the pass wrote each member's record
    return finish(task, results, summary, device, time.time() - start)


def inputs(task: Task, results: Path) -> dict[Path, integrity.Reads | None]:
    """The folders of a task's upstream tasks, each with the files the job reads of it when
    only some (the stage module's ``reads``: a training pass, its hooks' cache shards)."""
    row = stage(task.stage)
    module = None if row.run is None else importlib.import_module(row.module)
    reads = module.reads(task, results) if hasattr(module, "reads") else {}
    return {layout.task_dir(results, s, i): reads.get(k) for k, (s, i) in task.deps.items()}


def verify_inputs(task: Task, results: Path) -> list[Path]:
    """The folders of a task's upstream tasks, after checking that none is damaged
    (``integrity.DamagedInput`` otherwise, the damaged ones marked not done): every file's
    size, and the checksums of the files the job reads."""
    upstream = inputs(task, results)
    integrity.verify_all(upstream, by=f"{task.stage} {task.id}")
    return list(upstream)


def finish(task: Task, results: Path, summary: dict, device: str, wall_s: float) -> dict:
    """Write ``task.json``: the task's config, deps, summary, provenance, and the checksums
    of every file in its folder (``integrity.outputs``, what readers verify)."""
    record = task.record() | {"summary": summary, "provenance": provenance(device, wall_s)}
    record["config_sha256"] = hashlib.sha256(task.config.canonical().encode()).hexdigest()
    record[integrity.OUTPUTS] = integrity.outputs(task.dir(results))
    atomic.write_json(task.done(results), record)
    layout.damaged_file(results, task.stage, task.id).unlink(missing_ok=True)  # rebuilt
    return record


def provenance(device: str, wall_s: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("tcspec", "torch", "transformer_lens", "numpy", "safetensors", "pydantic"):
        try:
            versions[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            versions[pkg] = None
    import torch

    from tcspec.compute.determinism import settings as determinism_settings

    return {
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "device": device,
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "determinism": determinism_settings(),
        "host": platform.node(),
        "wall_s": round(wall_s, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
