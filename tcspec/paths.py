"""Where every artifact lives: the one home of output paths.

results/
  tasks/<stage>/<id>/task.json     a task's frozen config + provenance, written last
  tasks/<stage>/<id>/...           its artifacts (weights, shards, metrics, html)
  checkpoints/<id>/                resumable training state (never a Snakemake output)
  logs/<stage>/<id>.log            the job's log
  benchmarks/<stage>/<id>.tsv      Snakemake's per-job wall time and memory
  <experiment>/tables/             tables and plots of one spec
"""

from __future__ import annotations

from pathlib import Path

STAGES = (
    "model",
    "tokens",
    "acts",
    "train",
    "evaluate",
    "interp",
    "circuits",
    "export",
    "tables",
)
DONE = "task.json"


def task_dir(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "tasks" / stage / task_id


def done_file(results: Path, stage: str, task_id: str) -> Path:
    return task_dir(results, stage, task_id) / DONE


def log_file(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "logs" / stage / f"{task_id}.log"


def benchmark_file(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "benchmarks" / stage / f"{task_id}.tsv"


def checkpoint_dir(results: Path, task_id: str) -> Path:
    return Path(results) / "checkpoints" / task_id


def member_dir(results: Path, train_id: str, member: str) -> Path:
    """Folder of one trained dictionary (one sweep point at one layer) inside its train task."""
    return task_dir(results, "train", train_id) / member


def tables_dir(results: Path, experiment: str) -> Path:
    return Path(results) / experiment / "tables"


def export_dir(results: Path, experiment: str, to: str) -> Path:
    return Path(results) / experiment / "export" / to
