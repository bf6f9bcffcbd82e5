"""Task entry points: one module per stage, each with ``run(ctx)``.

Every Snakemake job runs ``tcspec task STAGE ID --results R``: ``load_task`` reads the
task's frozen config (and its upstream tasks' configs) from the config store under its id,
never from a spec; ``run_task`` checks the inputs are complete, runs the stage with the
stage's thread count, and writes ``task.json`` last (atomically): the config, its
provenance and the checksums of the files it wrote, which every reader verifies
(``tcspec.tasks.integrity``). Only this package, ``tcspec.plan.workflow`` and the CLI know the
results layout; the library modules below them take plain arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tcspec import atomic, layout
from tcspec.compute import cpu_features, cpu_model, resolve_device
from tcspec.plan import Task
from tcspec.plan.configs import CONFIGS, CoderRef
from tcspec.tasks import integrity

DEVICE_ENV = "TCSPEC_DEVICE"
"""The device jobs run on (auto, cpu, cuda): set by the workflow from the spec, not part of
any id or rule."""
MODULES = {"group": "train", "evalgroup": "evaluate", "import": "imports"}
"""Stage -> its module in this package, where the names differ."""


# ---------------------------------------------------------------------------- the store
def save_task(results: Path, task: Task) -> Path:
    """Store a task's config under its id; written only when absent (so it never changes),
    or when what is there is not this task's config and deps (a damaged file: the id fixes
    them, so they are written again)."""
    path = layout.config_file(results, task.stage, task.id)
    if not _stored(path, task):
        atomic.write_json(path, task.record())
    return path


def _stored(path: Path, task: Task) -> bool:
    """Whether ``path`` holds a record of ``task``: its config (as its id sees it) and deps;
    the resources are those first stored."""
    try:
        record = json.loads(path.read_text())
        config = CONFIGS[task.stage].model_validate(record["config"])
        deps = {k: tuple(v) for k, v in record["deps"].items()}
        same = (record["stage"], record["id"], deps) == (task.stage, task.id, task.deps)
        return same and config.canonical() == task.config.canonical()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, or damaged
        return False


def load_task(results: Path, stage: str, task_id: str) -> Task:
    """A stored task, its config typed; ``LookupError`` when the store does not have it."""
    path = layout.config_file(results, stage, task_id)
    if not path.is_file():
        raise LookupError(
            f"no {stage} task `{task_id}` in {path.parent}: a task's config is stored when "
            "Snakemake builds the DAG of a spec that has it (`snakemake -n` does)"
        )
    try:
        record = json.loads(path.read_text())
        return Task(
            stage,
            task_id,
            CONFIGS[stage].model_validate(record["config"]),
            {k: tuple(v) for k, v in record["deps"].items()},
            record.get("resources", {}),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        why = f"no key {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise ValueError(
            f"{path}: not a stored task config ({why}); `snakemake -n` stores it again"
        ) from None


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
    """Run one task (or one pass, stage ``group`` or ``evalgroup``) and write its record(s)."""
    results = Path(results)
    if task.stage == "train":
        raise ValueError("a member trains in a pass; run its `group` task")
    upstream = verify_inputs(task, results)  # even optional inputs
    missing = [str(d / layout.DONE) for d in upstream if not (d / layout.DONE).exists()]
    if missing and require_inputs:
        raise ValueError(f"inputs not complete: {', '.join(missing)}")
    device = resolve_device(device)
    import torch

    from tcspec.compute.determinism import make_deterministic

    make_deterministic(device)  # before CUDA's first GEMM in this process
    torch.set_num_threads(int(task.resources.get("threads", 1)))
    module = importlib.import_module(f"tcspec.tasks.{MODULES.get(task.stage, task.stage)}")
    start = time.time()
    summary = module.run(Context(task, results, device)) or {}
    if task.stage in layout.PASS_MEMBERS:
        return summary  # the pass wrote each member's record
    return finish(task, results, summary, device, time.time() - start)


def inputs(task: Task, results: Path) -> dict[Path, integrity.Reads | None]:
    """The folders of a task's upstream tasks, each with the files the job reads of it when
    only some (the stage module's ``reads``: a training pass, its hooks' cache shards)."""
    module = importlib.import_module(f"tcspec.tasks.{MODULES.get(task.stage, task.stage)}")
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


def device_from_env() -> str:
    return os.environ.get(DEVICE_ENV, "auto")
