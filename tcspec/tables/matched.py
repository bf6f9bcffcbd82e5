"""Dictionary families compared at common L0: each family's CE / CE recovered / KL
interpolated piecewise-linearly in log L0 between its own sweep points (never
extrapolated)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tcspec.tables.format import Column, fixed, integer
from tcspec.tables.records import kind_rank, per_layer
from tcspec.tables.section import Inputs, Section, write_table

MATCHED_METRICS = ("ce_loss_replaced", "ce_recovered", "kl")
"""Metrics interpolated at matched L0."""

SHOWN = (
    ("ce_loss_replaced", "CE", fixed(4)),
    ("ce_recovered", "CE rec. %", fixed(2, 100.0)),
    ("kl", "KL", fixed(4)),
)
"""Each family's columns in the wide table: metric, label, format."""

MATCHED_NOTE = (
    "Each family's value is interpolated piecewise-linearly in log L0 between its own sweep "
    "points; nothing is extrapolated: a cell is blank outside that family's measured L0 "
    "range, and rows are kept only where at least two families are measured."
)


def interpolate_log_l0(l0: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of `values` in log(L0), NaN outside [min L0, max L0].

    Points with a non-positive or missing L0, or a missing value, are dropped; points that
    share an L0 are averaged.
    """
    l0 = np.asarray(l0, dtype=float)
    values = np.asarray(values, dtype=float)
    at = np.asarray(at, dtype=float)
    ok = np.isfinite(l0) & (l0 > 0) & np.isfinite(values)
    if not ok.any():
        return np.full(at.shape, np.nan)
    pts = pd.Series(values[ok]).groupby(np.log(l0[ok])).mean()  # sorted by log L0
    xp, fp = pts.index.to_numpy(), pts.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(at)
    out = np.interp(x, xp, fp)
    out[~((x >= xp[0]) & (x <= xp[-1]))] = np.nan  # no extrapolation (and NaN for at <= 0)
    return out


def _nice_grid(lo: float, hi: float) -> list[float]:
    """1-2-5 values strictly inside (lo, hi)."""
    grid = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo < v < hi:
                grid.append(v)
    return grid


def _layer_block(layer: int, rows: pd.DataFrame) -> pd.DataFrame | None:
    """One layer's long rows, or None when fewer than two families are measured there."""
    fams = {f: g for f, g in rows.groupby("family", sort=False)}
    if len(fams) < 2:
        return None
    ranges = []
    for g in fams.values():
        ok = g["l0"].gt(0) & g["ce_loss_replaced"].notna()
        if ok.any():
            ranges.append((g.loc[ok, "l0"].min(), g.loc[ok, "l0"].max()))
    if len(ranges) < 2:
        return None
    ends = sorted({x for r in ranges for x in r})
    grid = np.array(sorted(set(ends) | set(_nice_grid(ends[0], ends[-1]))))
    block = []
    for fam, g in fams.items():
        vals = {m: interpolate_log_l0(g["l0"], g[m], grid) for m in MATCHED_METRICS}
        block.append(
            pd.DataFrame(
                {"layer": layer, "l0": grid, "family": fam, "kind": g["kind"].iloc[0]}
            ).assign(**vals)
        )
    block = pd.concat(block, ignore_index=True)
    measured = block.groupby("l0")["ce_loss_replaced"].count()
    return block[block["l0"].isin(measured[measured >= 2].index)]


def matched_l0(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: layer, L0, family, kind, and each of `MATCHED_METRICS` interpolated.

    Per layer, the L0 grid is every family's smallest and largest measured L0 plus 1-2-5
    values between them, kept where at least two families have an interpolated CE.
    """
    blocks = [_layer_block(layer, rows) for layer, rows in per_layer(df).items()]
    out = [b for b in blocks if b is not None]
    cols = ["layer", "l0", "family", "kind", *MATCHED_METRICS]
    if not out:
        return pd.DataFrame(columns=cols)
    long = pd.concat(out, ignore_index=True)[cols]
    rank = long["kind"].map(kind_rank)
    return long.assign(_r=rank).sort_values(["layer", "l0", "_r", "family"]).drop(columns="_r")


def matched_wide(long: pd.DataFrame) -> tuple[pd.DataFrame, list[Column]]:
    """One row per (layer, L0) measured at that layer; per family CE, CE rec. %, KL; ΔCE
    when exactly two families."""
    fams = list(dict.fromkeys(long["family"]))
    wide = long.pivot_table(
        index=["layer", "l0"],
        columns="family",
        values=list(MATCHED_METRICS),
        dropna=False,
        sort=True,
    )
    wide = wide[wide.notna().any(axis=1)]  # the index product pairs layers with others' L0s
    table = pd.DataFrame({"layer": [i[0] for i in wide.index], "l0": [i[1] for i in wide.index]})
    columns = [Column("layer", "layer", integer, numeric=False), Column("l0", "L0", fixed(1))]
    for f in fams:
        for m, label, fmt in SHOWN:
            key = f"{f}:{m}"
            table[key] = wide[(m, f)].to_numpy() if (m, f) in wide.columns else np.nan
            columns.append(Column(key, f"{f} {label}", fmt))
    if len(fams) == 2:
        a, b = fams
        table["delta_ce"] = table[f"{a}:ce_loss_replaced"] - table[f"{b}:ce_loss_replaced"]
        columns.append(Column("delta_ce", f"ΔCE ({a} − {b})", fixed(4)))
    return table, columns


def section(inputs: Inputs) -> Section:
    """`matched_l0.{md,tex}` (wide) and `matched_l0.csv` (long)."""
    long = matched_l0(inputs.records)
    wide, columns = matched_wide(long)
    caption = f"Matched L0: {inputs.title}"
    notes = [MATCHED_NOTE]
    if long.empty:
        notes.insert(0, "No layer has two dictionary families with overlapping L0 ranges.")
    paths, md = write_table(inputs.out_dir, "matched_l0", wide, columns, long, caption, notes)
    line = (
        "- [matched_l0.md](matched_l0.md) (.tex, .csv in long form): families "
        "compared at common L0, interpolated in log L0 inside each sweep's range."
    )
    return Section(tuple(paths), (line,), f"## {caption}\n\n{md}")
