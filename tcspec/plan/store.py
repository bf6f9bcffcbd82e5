"""The config store: every task's frozen config and upstream ids under its id
(``results/configs/<stage>/<id>.json``), written when Snakemake builds the DAG and read back
by the job that runs the task (``tcspec task STAGE ID``), typed by its stage's config
(``tcspec.plan.stages``). A job never reads a spec."""

from __future__ import annotations

import json
from pathlib import Path

from tcspec import atomic, layout
from tcspec.plan.stages import stage as stage_row
from tcspec.plan.task import Task


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
        config = stage_row(task.stage).config.model_validate(record["config"])
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
            stage_row(stage).config.model_validate(record["config"]),
            {k: tuple(v) for k, v in record["deps"].items()},
            record.get("resources", {}),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        why = f"no key {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise ValueError(
            f"{path}: not a stored task config ({why}); `snakemake -n` stores it again"
        ) from None
