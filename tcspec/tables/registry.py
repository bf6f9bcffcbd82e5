"""Every table a spec can ask for (`tables.include`), by name: the one list of them.

Importing this module imports no table code (the spec language reads the names from it);
`builder(name)` imports the table's builder when a build needs it. Adding a table is one
entry here and its builder: a function `Inputs -> Section` (see `tcspec.tables.section`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    """The name in a spec's `tables.include`."""
    description: str
    """One line on what it shows."""
    builder: str
    """`module:function` of its builder."""


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "sparsity_fidelity",
            "every dictionary x layer x sweep point: L0, CE, CE recovered, KL, FVU, dead %",
            "tcspec.tables.sparsity:section",
        ),
        Table(
            "matched_l0",
            "dictionary families compared at common L0, interpolated in log L0",
            "tcspec.tables.matched:section",
        ),
        Table(
            "pareto",
            "CE vs mean L0 plots per layer (the paper's Figure 3)",
            "tcspec.tables.pareto:section",
        ),
        Table(
            "matryoshka_prefixes",
            "FVU of each nested prefix width of the Matryoshka dictionaries",
            "tcspec.tables.matryoshka:section",
        ),
        Table(
            "ground_truth",
            "dictionaries on a synthetic source scored against its planted features: MCC, F1",
            "tcspec.tables.truth:section",
        ),
        Table(
            "training_curves",
            "loss terms, L0 and dead fraction against training tokens, per dictionary",
            "tcspec.tables.curves:section",
        ),
        Table(
            "sparse_probing",
            "k-sparse probes on dictionary latents against a probe on the raw activations",
            "tcspec.tables.probing:section",
        ),
        Table(
            "interpretability",
            "Table 1 from ingested ratings, and the study's automatic proxies",
            "tcspec.tables.extra:interpretability",
        ),
        Table(
            "greater_than",
            "the greater-than circuit studies' metric and keep-top-k curves",
            "tcspec.tables.extra:greater_than",
        ),
        Table(
            "attribution",
            "attribution graphs per prompt and dictionary: replacement, completeness, nodes kept",
            "tcspec.tables.extra:attribution",
        ),
    )
}
"""Tables in the order the index shows them."""

TABLE_NAMES = tuple(TABLES)
DEFAULT_INCLUDE = ("sparsity_fidelity", "matched_l0", "pareto", "training_curves")


def builder(name: str) -> Callable:
    """The builder function of table `name` (`KeyError` for an unknown name)."""
    module, function = TABLES[name].builder.split(":")
    return getattr(importlib.import_module(module), function)
