"""The sparsity-fidelity table: one row per dictionary x layer x sweep point."""

from __future__ import annotations

import math

import pandas as pd

from tcspec.dictionaries.families import names
from tcspec.evaluation.metrics import sanity_flags
from tcspec.tables.format import Column, fixed, general, integer, spread, text
from tcspec.tables.records import KIND_COLUMN, baselines, layer_label, per_layer
from tcspec.tables.section import Inputs, Section, table_section
from tcspec.tables.seeds import (
    N_SEEDS,
    SEEDS,
    SPREAD_NOTE,
    STD,
    has_spread,
    pool_seeds,
    with_spread,
)

COLUMNS = (
    Column("dictionary", "dictionary", text, numeric=False),
    KIND_COLUMN,
    Column("layer", "layer", text, numeric=False),
    Column("d_sae", "d_sae", integer),
    Column("l1_coef", "L1 coef", general),
    Column("k", "k", integer),
    Column("l0_coef", "L0 coef", general),
    Column(N_SEEDS, "seeds", integer),
    Column("l0", "L0", spread(fixed(1))),
    Column("ce_loss_replaced", "CE", spread(fixed(4))),
    Column("ce_recovered", "CE rec. %", spread(fixed(2, 100.0))),
    Column("kl", "KL", spread(fixed(4))),
    Column("fvu", "FVU", spread(fixed(4))),
    Column("dead_fraction", "dead %", spread(fixed(1, 100.0))),
)
METRICS = ("l0", "ce_loss_replaced", "ce_recovered", "kl", "fvu", "dead_fraction")
"""The metric columns, shown as mean ± spread where a sweep point has several seeds."""

LEGEND = (
    "CE: next-token loss (nats) with the dictionary spliced in; CE rec.: fraction of the "
    "zero-ablation loss gap recovered; KL: KL(original || replaced); dead: features never "
    "active on the eval set. A CLT's layer rows (`0 (of 0,1)`): that layer's features on the "
    "clean run's inputs; its CE, CE rec. and KL are of the joint splice (`0,1 (all)`), whose "
    "L0 is summed, FVU pooled and dead % taken over every layer's features."
)


def _baseline_note(prefix: str, rows: pd.DataFrame) -> list[str]:
    parts = [f"{k} {v:.4f}" for k, v in baselines(rows).items() if not math.isnan(v)]
    return [prefix + ", ".join(parts) + "."] if parts else []


def _sanity_notes(table: pd.DataFrame) -> list[str]:
    """A warning line per row whose metrics look wrong (see `metrics.sanity_flags`)."""
    names = [n for n in ("ce_recovered", "fvu", "dead_fraction") if n in table]
    notes = []
    for _, r in table.iterrows():
        flags = sanity_flags({n: r[n] for n in names})
        if flags:
            where = f"{r['dictionary']} {r['layer']} {r.get('member', '')}".strip()
            notes.append(f"Warning: {where}: " + "; ".join(flags) + ".")
    return notes


def _l0_coef(df: pd.DataFrame) -> pd.Series:
    """JumpReLU rows' L0 coefficient (the sweep point's, else the option's); NaN otherwise."""
    nan = pd.Series(math.nan, index=df.index)
    jump = df.get("opts.activation", nan).isin(names(lambda f: f.sparsity == "l0_coef"))
    value = df.get("point.l0_coef", nan).fillna(df.get("opts.l0_coef", nan))
    return pd.to_numeric(value.where(jump), errors="coerce")


def sparsity_fidelity(df: pd.DataFrame) -> tuple[pd.DataFrame, list[Column], list[str]]:
    """The table (raw values, seeds pooled), its shown columns, and note lines (per-layer
    baselines)."""
    df = pool_seeds(df)
    table = df.copy()
    table["layer"] = [layer_label(r) for _, r in df.iterrows()]
    table["l0_coef"] = _l0_coef(df)
    shown = {"k": df["k"].notna().any(), "l0_coef": table["l0_coef"].notna().any()}
    shown[N_SEEDS] = has_spread(df)
    columns = [c for c in COLUMNS if shown.get(c.key, True)]
    notes = []
    for layer, rows in per_layer(df).items():
        notes += _baseline_note(f"Layer {layer} CE baselines: ", rows)
    for layers, rows in df[df["layer"].isna()].groupby("layers", sort=True):
        notes += _baseline_note(f"Layers {layers} together: CE ", rows)
    notes += _sanity_notes(table)
    notes += [LEGEND] + ([SPREAD_NOTE] if shown[N_SEEDS] else [])
    keep = ["dictionary", "kind", "splice", "layer", "member", "family", "sweep", SEEDS]
    keep += [c.key for c in COLUMNS if c.key not in ("dictionary", "kind", "layer")]
    keep += [m + STD for m in METRICS]
    return table[keep], columns, notes


def section(inputs: Inputs) -> Section:
    """`sparsity_fidelity.{md,tex,csv}`."""
    table, columns, notes = sparsity_fidelity(inputs.records)
    caption = f"Sparsity and fidelity: {inputs.title}"
    csv = table[[c for c in table.columns if c not in ("family", "sweep")]]
    shown = with_spread(table, list(METRICS))
    about = "every dictionary x layer x sweep point: L0, CE, CE recovered, KL, FVU, dead %."
    name = "sparsity_fidelity"
    return table_section(inputs, name, shown, columns, csv, caption, notes, about)
