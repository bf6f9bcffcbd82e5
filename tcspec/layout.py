"""The results layout: the one home of every output path and of the artifact file names a
task writes (the files a library module writes into a task's folder, a dictionary's
`cfg.json` or a case study's `greater_than.csv`, are named in `tcspec.vocab`).

results/
  configs/<stage>/<id>.json        a task's frozen config and upstream ids, written once
  tasks/<stage>/<id>/task.json     its record (config, provenance, outputs' checksums), last
  tasks/<stage>/<id>/task.damaged.json  its record once its outputs were found damaged
  tasks/<stage>/<id>/...           its artifacts (weights, shards, metrics, html, tables)
  checkpoints/<id>/                resumable state of a training pass (never an output)
  logs/<stage>/<id>.log            the job's log
  benchmarks/<stage>/<id>.tsv      Snakemake's per-job wall time and memory
  <experiment>/tables/             a copy of the spec's tables task output (exactly it)
  <experiment>/export/<to>/        a copy of each export task's output
  <experiment>/ratings.csv         ingested ratings (+ ratings_key.json)
  <experiment>/stream_budget.json  the stream budget the spec's last DAG was built with

A <stage> is a stage's name (``tcspec.plan.stages``, the stage table). Only
``tcspec.tasks``, ``tcspec.plan.workflow`` and the CLI use this module; library modules take
explicit paths.
"""

from __future__ import annotations

from pathlib import Path

DONE = "task.json"
DAMAGED = "task.damaged.json"
"""A task's record renamed when its outputs were found damaged: the task is not done."""
METRICS = "metrics.json"
SUMMARY = "summary.json"
ATTRIBUTION = "attribution.csv"  # an attribution task's summary rows, one per prompt
GRAPH_METADATA = "graph-metadata.json"  # an attribution task's graph index (circuit-tracer's)
GRAPH_PAGES = "pages"  # an attribution task's pages of every graph feature, per layer
GRAPH_CARDS = "cards.js"  # in GRAPH_PAGES: the viewer's feature cards
CT_FEATURES = "features"  # an attribution task's feature files in circuit-tracer's schema
ADJACENCY = "adjacency.safetensors"  # per prompt: the full graph at full precision
VIEWER = "graph.html"  # per prompt: the static viewer
INTERVENTIONS = "interventions.csv"  # per prompt: ablations and steering vs the graph
INTERVENTIONS_PLOT = "interventions.png"
TOKENS = "tokens"  # folder of the token splits, in a tokens task
CACHE = "cache"  # folder of the activation shards, in an acts task
STATS = "stats"  # feature statistics, in an interp task
PROBING = "probing.csv"  # a probe task's accuracies, one row per class x probe
DASHBOARD = "dashboard"
TABLES = "tables"  # folder of tables and plots, in a tables task
EXPORT = "export"  # folder of exported dictionaries, in an export task
RATINGS = "ratings.csv"
RATINGS_KEY = "ratings_key.json"
STREAM_BUDGET = "stream_budget.json"


def task_dir(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "tasks" / stage / task_id


def done_file(results: Path, stage: str, task_id: str) -> Path:
    return task_dir(results, stage, task_id) / DONE


def damaged_file(results: Path, stage: str, task_id: str) -> Path:
    return task_dir(results, stage, task_id) / DAMAGED


def task_of_dir(folder: Path) -> tuple[str, str]:
    """(stage, id) of a task folder (``task_dir``'s inverse)."""
    folder = Path(folder).resolve()
    return folder.parent.name, folder.name


def config_file(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "configs" / stage / f"{task_id}.json"


def log_file(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "logs" / stage / f"{task_id}.log"


def benchmark_file(results: Path, stage: str, task_id: str) -> Path:
    return Path(results) / "benchmarks" / stage / f"{task_id}.tsv"


def checkpoint_dir(results: Path, task_id: str) -> Path:
    return Path(results) / "checkpoints" / task_id


def prompt_dir(task_out: Path, index: int) -> Path:
    """Folder of one prompt's graph files inside an attribution task's folder."""
    return Path(task_out) / f"prompt-{index:03d}"


def graph_slug(label: str, index: int) -> str:
    """The slug of one prompt's graph: its JSON is ``<task folder>/<slug>.json``, so that the
    task folder is a circuit-tracer data folder (with `GRAPH_METADATA`)."""
    return f"{label}-prompt-{index:03d}"


def graph_json(task_out: Path, label: str, index: int) -> Path:
    """One prompt's pruned graph (circuit-tracer / Neuronpedia JSON)."""
    return Path(task_out) / f"{graph_slug(label, index)}.json"


def graph_pages(task_out: Path, layer: int) -> Path:
    """Statistics (`STATS`) and dashboard (`DASHBOARD`) of one layer's graph features."""
    return Path(task_out) / GRAPH_PAGES / f"layer-{layer}"


def ct_scan(label: str) -> str:
    """circuit-tracer's `scan` of an attribution task's graphs: its local server serves the
    task folder under ./data/, so the feature files lie in `CT_FEATURES`/<label>/."""
    return f"./data/{CT_FEATURES}/{label}"


def experiment_dir(results: Path, experiment: str) -> Path:
    return Path(results) / experiment


def tables_dir(results: Path, experiment: str) -> Path:
    """Where a spec's current tables are shown (a copy of its tables task's output)."""
    return experiment_dir(results, experiment) / TABLES


def export_dir(results: Path, experiment: str, to: str) -> Path:
    """Where a spec's exports in one format are shown (a copy of the export task's output)."""
    return experiment_dir(results, experiment) / EXPORT / to


def ratings_files(results: Path, experiment: str) -> tuple[Path, Path]:
    """Ingested ratings of an experiment and the packet key beside them."""
    folder = experiment_dir(results, experiment)
    return folder / RATINGS, folder / RATINGS_KEY


def stream_budget_file(results: Path, experiment: str) -> Path:
    """The per-job memory (MB) of a stream pass that the spec's last DAG was built with
    (machine side: the plan's pass ids depend on it), for ``tcspec status`` and ``clean``."""
    return experiment_dir(results, experiment) / STREAM_BUDGET
