"""Tables and plots over evaluation records (the `metrics.json` of each evaluate task).

`build_tables(records, out_dir, include=..., reference=..., title=...)` writes:

- `sparsity_fidelity.{md,tex,csv}`: one row per dictionary x layer x sweep point (a CLT:
  per layer and in total), its seeds pooled into mean ± sample std (`seeds`).
- `matched_l0.{md,tex,csv}`: dictionary families compared at common L0 values, per layer
  and per set of layers spliced at once, each family's CE / CE recovered / KL / FVU / dead
  fraction interpolated piecewise-linearly in log L0 between its own sweep points (never
  extrapolated), with the seeds' spread and the distance from the best family.
- `pareto_L{layer}.png`: CE against mean L0 (log scale) per dictionary family, with the
  original model's and the ablated MLP's CE as horizontal lines (the paper's Figure 3),
  error bars over seeds.
- `curves_{dictionary}_L{layers}.png`: training curves (loss terms, L0, dead fraction
  against tokens) of each dictionary, from the `curves` given.
- `reference_{key}.{md,tex,csv}` when `reference` names one of `tcspec.tables.paper.REFERENCES`;
  published sweep points are also drawn, hollow, on the Pareto plot of their layer.
- tables other stages computed (`interpretability`, `greater_than`), as Markdown and CSV.
- `index.md` (every table inline, every plot shown) and `results.csv` (all records
  flattened, one row per record, every metric a column).

CSVs hold raw numbers (fractions, full precision); Markdown and LaTeX hold formatted ones
(percentages where a label says `%`).

Modules: `registry` (the table names, the one list of them), `records` (records as a frame),
`seeds` (seeds pooled, the spread and the rule for a difference), `format` (cells, Markdown,
LaTeX), `section` (what a builder gets and gives), one module per table (`sparsity`,
`matched`, `pareto`, `curves`, `reference`, `extra`), and `build`. This package
imports its table code only when one of the names below is used, so the spec language can
read `registry` without loading pandas.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_tables": "tcspec.tables.build",
    "ExtraTable": "tcspec.tables.extra",
    "records_frame": "tcspec.tables.records",
    "sparsity_fidelity": "tcspec.tables.sparsity",
    "interpolate_log_l0": "tcspec.tables.matched",
    "matched_l0": "tcspec.tables.matched",
    "pareto_figure": "tcspec.tables.pareto",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tcspec.tables' has no attribute {name!r}")
