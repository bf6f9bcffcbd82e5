"""Seeds pooled: the rows of a `records_frame` that differ only in their seed (a dictionary's
`seed: [0, 1, 2]`) become one row holding every metric's mean over the seeds, its spread and
the number of seeds.

The spread is the sample standard deviation (n - 1 in the denominator) over the n seeds,
in `{metric}_std`; NaN for a single seed. Two values are said to differ when their means are
further apart than the sum of their spreads, |a - b| > s_a + s_b, both with n >= 2 (`apart`);
with one seed nothing can be called different.
"""

from __future__ import annotations

import math

import pandas as pd

from tcspec.spec.base import REPLICATE_AXES
from tcspec.tables.format import num
from tcspec.tables.records import metric_columns

STD = "_std"
"""Suffix of a metric's spread column."""
N_SEEDS = "n_seeds"
SEEDS = "seeds"
"""Columns of a pooled row: how many seeds, and which ("0,1,2")."""

SPREAD_NOTE = (
    "Where a sweep point was trained with several seeds, a cell is the mean over the seeds ± "
    "their sample standard deviation (n − 1 in the denominator); `seeds` is n."
)

_SEED_COLUMNS = ("seed", "member", *(f"{p}.{a}" for p in ("point", "opts") for a in REPLICATE_AXES))
"""Columns that differ between the seeds of one sweep point."""


def pool_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep point of `df` (a `records_frame`): the metrics' means over the rows
    that differ only in their seed, `{metric}_std` (sample std; NaN for one seed),
    `n_seeds`, `seeds`; `member` without the seed. The order of `df` is kept."""
    metrics = metric_columns(df)
    keys = [c for c in df.columns if c not in metrics and c not in _SEED_COLUMNS]
    rows = []
    for _, g in df.groupby([df[k].astype(str) for k in keys], sort=False, dropna=False):
        row = g.iloc[0].copy()
        row[metrics] = g[metrics].mean(numeric_only=False)
        for m in metrics:
            row[m + STD] = g[m].std(ddof=1) if g[m].notna().sum() >= 2 else math.nan
        row[N_SEEDS] = len(g)
        row[SEEDS] = ",".join(str(int(s)) for s in sorted(g["seed"].dropna().unique()))
        row["member"] = _member(g)
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True) if rows else _empty(df, metrics)


def _member(g: pd.DataFrame) -> str:
    """The seeds' member name, its seed dropped when there are several."""
    first = str(g["member"].iloc[0])
    return first if len(g) == 1 else without_seed(first)


def without_seed(member: str) -> str:
    """A member name (`tcspec.plan.member_name`) without its seed: `k_16-seed_1` -> `k_16`,
    `seed_2` -> `single`."""
    seeds = tuple(f"{a}_" for a in REPLICATE_AXES)
    return "-".join(p for p in member.split("-") if not p.startswith(seeds)) or "single"


def _empty(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    return df.reindex(columns=[*df.columns, *(m + STD for m in metrics), N_SEEDS, SEEDS])


def has_spread(df: pd.DataFrame) -> bool:
    """Whether any pooled row has more than one seed."""
    return N_SEEDS in df and bool((df[N_SEEDS].fillna(1) > 1).any())


def with_spread(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`df` with each of `keys` a `(mean, std)` pair where its std is finite (for
    `tcspec.tables.format.spread` formatters), else its mean."""
    out = df.copy()
    for k in keys:
        if k + STD in df:
            out[k] = [(m, s) if not math.isnan(num(s)) else m for m, s in zip(df[k], df[k + STD])]
    return out


def apart(a: float, sa: float, b: float, sb: float) -> bool | None:
    """Whether means `a` and `b` differ by more than their spreads' sum (None when a spread
    or a mean is missing: nothing can be said)."""
    values = [num(x) for x in (a, sa, b, sb)]
    if any(math.isnan(x) for x in values):
        return None
    return abs(values[0] - values[2]) > values[1] + values[3]
