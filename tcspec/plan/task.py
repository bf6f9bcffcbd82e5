"""A plan's tasks: a stage, a content-addressed id, a typed config, named inputs and the
scheduler's estimates; the Plan that holds them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tcspec import layout
from tcspec.plan import cost
from tcspec.plan.configs import StageConfig
from tcspec.plan.stages import stage as stage_row
from tcspec.spec import Spec

if TYPE_CHECKING:
    from tcspec.plan.resources import Sizer


@dataclass(frozen=True)
class Task:
    stage: str
    id: str
    config: StageConfig
    deps: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Named inputs: name -> (stage, task id)."""
    resources: dict = field(default_factory=dict)
    """Estimates for the scheduler (``tcspec.plan.resources``): mem_mb, runtime (minutes),
    seconds, disk_mb, gpu, threads, flops, params, shape."""
    label: dict = field(default_factory=dict, compare=False)
    """How the spec names a train or import task (dictionary, member, point): for the
    configs downstream of it; not part of its id."""

    def dir(self, results: Path) -> Path:
        return layout.task_dir(results, self.stage, self.id)

    def done(self, results: Path) -> Path:
        return layout.done_file(results, self.stage, self.id)

    def record(self) -> dict:
        """What the config store holds under the task's id."""
        return {
            "stage": self.stage,
            "id": self.id,
            "config": self.config.model_dump(mode="json"),
            "deps": {k: list(v) for k, v in self.deps.items()},
            "resources": self.resources,
        }


@dataclass
class Plan:
    spec: Spec
    tasks: dict[tuple[str, str], Task] = field(default_factory=dict)
    groups: list[tuple[str, ...]] = field(default_factory=list)
    """Train task ids that share one pass over their cache or one stream."""
    eval_groups: list[tuple[str, ...]] = field(default_factory=list)
    """Evaluate task ids that share one pass over the eval tokens (every evaluate task is
    in exactly one)."""
    stream_shape: cost.StreamShape | None = None
    """What sizes a stream pass besides its dictionaries (None for a cache spec)."""
    sizer: Sizer | None = None
    """What sizes every job: the model, the device's rates (``tcspec.plan.resources``)."""

    def member_groups(self) -> dict[str, list[tuple[str, ...]]]:
        """Member stage -> its groups of task ids, each run by one pass."""
        return {"train": self.groups, "evaluate": self.eval_groups}

    def add(self, task: Task) -> Task:
        self.tasks.setdefault((task.stage, task.id), task)
        return task

    def get(self, stage: str, task_id: str) -> Task:
        try:
            return self.tasks[(stage, task_id)]
        except KeyError:
            raise KeyError(
                f"no {stage} task `{task_id}` in the plan of `{self.spec.experiment}`"
            ) from None

    def stage(self, stage: str) -> list[Task]:
        return [t for (s, _), t in self.tasks.items() if s == stage]

    def inputs(self, task: Task, results: Path) -> dict[str, str]:
        """Named input files (upstream done markers) of a task."""
        return {name: str(layout.done_file(results, s, i)) for name, (s, i) in task.deps.items()}


def task_id(prefix: str, config: StageConfig, deps: dict) -> str:
    blob = json.dumps({"config": json.loads(config.canonical()), "deps": deps}, sort_keys=True)
    return f"{safe_name(prefix)}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def make_task(
    stage: str, prefix: str, config: StageConfig, deps: dict, resources: dict, label=None
) -> Task:
    resources = {"gpu": 0, "threads": stage_row(stage).threads} | resources
    return Task(stage, task_id(prefix, config, deps), config, deps, resources, label or {})


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
