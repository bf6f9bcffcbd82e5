"""Task entry points: one module per stage, each with ``run(ctx)``.

``run_task`` is what every Snakemake job calls (through ``tcspec task STAGE ID``): it checks
the task's inputs are complete, runs the stage, and writes ``task.json`` last (atomically),
holding the frozen task config and its provenance. Only this package and ``rules/`` know
about Snakemake; the library modules below them take plain arguments.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tcspec import paths
from tcspec.plan import Plan, Task


@dataclass
class Context:
    plan: Plan
    task: Task
    results: Path
    device: str

    @property
    def spec(self):
        return self.plan.spec

    @property
    def out(self) -> Path:
        """The task's folder (created)."""
        d = self.task.dir(self.results)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def dep(self, name: str) -> Task:
        stage, task_id = self.task.deps[name]
        return self.plan.get(stage, task_id)

    def dep_dir(self, name: str) -> Path:
        return self.dep(name).dir(self.results)

    def deps_of(self, stage: str) -> list[Task]:
        return [self.plan.get(s, i) for s, i in self.task.deps.values() if s == stage]

    @property
    def checkpoints(self) -> Path:
        return paths.checkpoint_dir(self.results, self.task.id)


def run_task(plan: Plan, task: Task, results: Path, require_inputs: bool = True) -> dict:
    missing = [str(p) for p in plan.inputs(task, results).values() if not Path(p).exists()]
    if missing and require_inputs:
        raise RuntimeError(f"{task.stage} {task.id}: inputs not complete: {', '.join(missing)}")
    threads = int(os.environ.get("TCSPEC_THREADS", "0"))
    device = _device(plan.spec.device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    module = importlib.import_module(f"tcspec.tasks.{task.stage}")
    ctx = Context(plan, task, results, device)
    start = time.time()
    summary = module.run(ctx) or {}
    record = {
        "stage": task.stage,
        "id": task.id,
        "config": task.config,
        "deps": {k: list(v) for k, v in task.deps.items()},
        "summary": summary,
        "provenance": provenance(plan, device, time.time() - start),
    }
    write_json(task.done(results), record)
    return record


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def provenance(plan: Plan, device: str, wall_s: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("tcspec", "torch", "transformer_lens", "numpy", "safetensors", "pydantic"):
        try:
            versions[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "spec_hash": spec_hash(plan.spec),
        "experiment": plan.spec.experiment,
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "device": device,
        "host": platform.node(),
        "wall_s": round(wall_s, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def spec_hash(spec) -> str:
    import hashlib

    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())
