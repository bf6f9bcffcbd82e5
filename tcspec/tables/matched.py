"""Dictionary families compared at common L0: each family's CE, CE recovered, KL, FVU and
dead fraction interpolated piecewise-linearly in log L0 between its own sweep points (never
extrapolated), its seeds pooled first (`tcspec.tables.seeds`), with their spread.

Blocks: each layer (per-layer dictionaries spliced alone, and each layer of a CLT, which has
no CE of its own there), and each set of layers spliced at once (a CLT against per-layer
dictionaries spliced together, at their total L0). In a block, each row of an L0 names the
best family there (lowest CE; lowest FVU) and how far every other family is from it, marked
where the two differ by more than their spread (`tcspec.tables.seeds.apart`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tcspec.tables.format import MISSING, Column, fixed, integer, spread, text
from tcspec.tables.records import KIND_COLUMN, kind_rank, layer_span, per_layer
from tcspec.tables.section import Inputs, Section, table_section
from tcspec.tables.seeds import N_SEEDS, STD, apart, pool_seeds, with_spread

MATCHED_METRICS = ("ce_loss_replaced", "ce_recovered", "kl", "fvu", "dead_fraction")
"""Metrics interpolated at matched L0."""

SHOWN = (
    ("ce_loss_replaced", "CE", fixed(4)),
    ("ce_recovered", "CE rec. %", fixed(2, 100.0)),
    ("kl", "KL", fixed(4)),
    ("fvu", "FVU", fixed(4)),
    ("dead_fraction", "dead %", fixed(1, 100.0)),
)
"""The metric columns of the table: metric, label, format."""

RANKED = (("ce_loss_replaced", "delta_ce", "ΔCE vs best"), ("fvu", "delta_fvu", "ΔFVU vs best"))
"""Metrics (lower is better) each row is compared on with the best family at its L0."""

MATCHED_NOTE = (
    "Each family's value is interpolated piecewise-linearly in log L0 between its own sweep "
    "points; nothing is extrapolated: a family appears at an L0 only inside its measured L0 "
    "range, and an L0 only where at least two families are measured, or where a family "
    "measured at one L0 only (a single point) sits."
)
RANK_NOTE = (
    "ΔCE / ΔFVU vs best: the family's value minus the lowest one at that L0 (`best`: it is "
    "the lowest). `*`: the two differ by more than their spread, |Δ| > s_a + s_b (s: the "
    "sample standard deviation over seeds, n − 1; both n ≥ 2); `~`: they do not; no mark: a "
    "family has one seed, so no difference can be called. With seeds, a spread is "
    "interpolated in log L0 like its mean, and `seeds` is the fewest seeds of the points used."
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


def _blocks(df: pd.DataFrame) -> list[tuple[str, int | None, pd.DataFrame]]:
    """(layers, layer, rows) of every block: each layer; each set of layers spliced at once."""
    out = [(str(layer), layer, rows) for layer, rows in per_layer(df).items()]
    joint = df[df["layer"].isna() & (df["splice"] == "all")]
    out += [(layers, None, rows) for layers, rows in joint.groupby("layers", sort=True)]
    return out


def _measured(g: pd.DataFrame) -> pd.DataFrame:
    """A family's points with an L0 > 0 and some metric."""
    return g[g["l0"].gt(0) & g[list(MATCHED_METRICS)].notna().any(axis=1)]


def _family_rows(fam: str, g: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
    """One family's interpolated means and spreads on `grid`, where it is measured."""
    out = pd.DataFrame({"l0": grid, "family": fam, "kind": g["kind"].iloc[0]})
    for m in MATCHED_METRICS:
        out[m] = interpolate_log_l0(g["l0"], g[m], grid)
        out[m + STD] = interpolate_log_l0(g["l0"], g[m + STD], grid)
    out[N_SEEDS] = int(g[N_SEEDS].min())
    out["single"] = len(set(g["l0"])) == 1
    return out[out[list(MATCHED_METRICS)].notna().any(axis=1)]


def _block(layers: str, layer: int | None, rows: pd.DataFrame) -> pd.DataFrame | None:
    """One block's long rows, or None when fewer than two families are measured there."""
    fams = {f: _measured(g) for f, g in rows.groupby("family", sort=False)}
    fams = {f: g for f, g in fams.items() if not g.empty}
    if len(fams) < 2:
        return None
    ends = sorted({x for g in fams.values() for x in (g["l0"].min(), g["l0"].max())})
    grid = np.array(sorted(set(ends) | set(_nice_grid(ends[0], ends[-1]))))
    block = pd.concat([_family_rows(f, g, grid) for f, g in fams.items()], ignore_index=True)
    count = block.groupby("l0")["family"].transform("size")
    single = block.groupby("l0")["single"].transform("any")
    block = block[(count >= 2) | single].drop(columns="single")
    return _ranked(block.assign(layer=layer, layers=layers))


def _ranked(block: pd.DataFrame) -> pd.DataFrame:
    """Each row's distance from the best family at its L0 on each of `RANKED`, and whether
    the two are apart by more than their spread."""
    for metric, delta, _ in RANKED:
        measured = block[block[metric].notna()]
        best = block.loc[measured.groupby("l0")[metric].idxmin()].set_index("l0")
        b, bs = block["l0"].map(best[metric]), block["l0"].map(best[metric + STD])
        block[delta] = block[metric] - b
        block[delta + "_apart"] = [
            apart(v, s, w, t) for v, s, w, t in zip(block[metric], block[metric + STD], b, bs)
        ]
    return block


def matched_l0(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: layer (empty for a joint block), layers, L0, family, kind, n_seeds, each
    of `MATCHED_METRICS` interpolated with its spread (`_std`), and the distance from the
    best family (`delta_ce`, `delta_fvu`, with `_apart`: more than the spread; None: no
    spread).

    Per block, the L0 grid is every family's smallest and largest measured L0 plus 1-2-5
    values between them, kept where at least two families are measured or a single-point
    family sits; a family's row only where it is measured.
    """
    blocks = [_block(*b) for b in _blocks(pool_seeds(df))]
    out = [b for b in blocks if b is not None]
    cols = ["layer", "layers", "l0", "family", "kind", N_SEEDS]
    cols += [c for m in MATCHED_METRICS for c in (m, m + STD)]
    cols += [c for _, d, _ in RANKED for c in (d, d + "_apart")]
    if not out:
        return pd.DataFrame(columns=cols)
    long = pd.concat(out, ignore_index=True)[cols]
    key = long.assign(
        _j=long["layer"].isna(), _r=long["kind"].map(kind_rank), _l=long["layer"].fillna(-1)
    )
    order = key.sort_values(["_j", "_l", "layers", "l0", "_r", "family"], kind="stable").index
    out = long.loc[order].reset_index(drop=True)
    out["layer"] = out["layer"].astype("Int64")
    return out


def _delta(marks: pd.Series, deltas: pd.Series, fmt) -> list[str]:
    """`best`, `+0.0123 *` (apart), `+0.0123 ~` (within the spread), `+0.0123` (no spread)."""
    out = []
    for d, a in zip(deltas, marks):
        if pd.isna(d):
            out.append(MISSING)
        elif d == 0:
            out.append("best")
        else:
            out.append(f"+{fmt(d)}" + {True: " *", False: " ~"}.get(a, ""))
    return out


def matched_display(long: pd.DataFrame) -> tuple[pd.DataFrame, list[Column]]:
    """The shown table: one row per block, L0 and family; metrics as mean ± spread."""
    table = with_spread(long, list(MATCHED_METRICS))
    table["block"] = [
        str(int(lay)) if not pd.isna(lay) else f"{layer_span(list(map(int, ls.split(','))))} (all)"
        for lay, ls in zip(long["layer"], long["layers"])
    ]
    columns = [
        Column("block", "layer", text, numeric=False),
        Column("l0", "L0", fixed(1)),
        Column("family", "family", text, numeric=False),
        KIND_COLUMN,
    ]
    if (long[N_SEEDS] > 1).any():
        columns.append(Column(N_SEEDS, "seeds", integer))
    columns += [Column(m, label, spread(fmt)) for m, label, fmt in SHOWN]
    for metric, delta, label in RANKED:
        fmt = dict((m, f) for m, _, f in SHOWN)[metric]
        table[delta + "_shown"] = _delta(long[delta + "_apart"], long[delta], fmt)
        columns.append(Column(delta + "_shown", label, text))
    return table, columns


def section(inputs: Inputs) -> Section:
    """`matched_l0.{md,tex}` (shown) and `matched_l0.csv` (raw)."""
    long = matched_l0(inputs.records)
    shown, columns = matched_display(long)
    caption = f"Matched L0: {inputs.title}"
    notes = [MATCHED_NOTE, RANK_NOTE]
    if long.empty:
        notes.insert(0, "No layer has two dictionary families with overlapping L0 ranges.")
    about = (
        "families compared at common L0 (CE, CE recovered, KL, FVU, dead %), interpolated in "
        "log L0 inside each sweep's range, per layer and per set of layers spliced at once, "
        "with the seeds' spread."
    )
    return table_section(inputs, "matched_l0", shown, columns, long, caption, notes, about)
