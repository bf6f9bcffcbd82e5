"""Evaluation records (each evaluate task's `metrics.json`) as one sorted frame, and the
per-layer views the comparisons are built from.

A *family* is one dictionary name at one value of every sweep axis other than the sparsity
knob (`l1`, `k`, `l0_coef`) and the seed: its points form one curve (its seeds are pooled by
`tcspec.tables.seeds`). Records with `splice: each` on a single layer, and each layer of a
CLT (`splice: layer`, derived rows), enter the per-layer comparisons; records spliced into
several layers at once (`splice: all`) are compared with each other over the same layers.

Derived values, so that every kind has every metric where it can be had:
- a CLT's record gives one more row per layer (`splice: layer`): that layer's L0, FVU, dead
  fraction, ... on the clean run's inputs (as a per-layer dictionary's, spliced alone, reads
  a clean input); CE, CE recovered and KL exist only for the joint splice;
- a record over several layers lacking L0, FVU or dead fraction (a CLT's has only its L0;
  per-layer dictionaries spliced at once have none) takes them from its layers' own: L0
  summed, FVU pooled (`tcspec.evaluation.metrics.pooled_fvu`), dead fraction averaged over every
  feature. A CLT's layers are its clean-input rows; per-layer dictionaries' are their
  `splice: each` records of the same sweep point and seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd

from tcspec.dictionaries.families import FAMILIES
from tcspec.evaluation.metrics import pooled_fvu
from tcspec.spec.base import REPLICATE_AXES
from tcspec.tables.format import MISSING, Column, num, short_g, text

KIND_ORDER = {"transcoder": 0, "skip_transcoder": 1, "sae": 2}
KIND_LABEL = {
    "transcoder": "transcoder",
    "skip_transcoder": "skip-transcoder",
    "sae": "SAE",
    "clt": "CLT",
}
KIND_MARKER = {"transcoder": "o", "skip_transcoder": "D", "sae": "s", "clt": "P"}
SPARSITY_AXES = ("l1", "k", "l0_coef")
"""Sweep axes that move a dictionary along its sparsity-fidelity curve."""
LAYER_OF_JOINT = "layer"
"""`splice` of a derived row: one layer of a CLT, which is evaluated over all at once."""
PER_LAYER_SPLICES = ("each", LAYER_OF_JOINT)
"""Rows compared within one layer."""

METRIC_ORDER = (
    "l0",
    "l1",
    "mse",
    "fvu",
    "explained_variance",
    "cosine_sim",
    "dead_fraction",
    "dense_fraction",
    "ce_loss_original",
    "ce_loss_replaced",
    "ce_loss_zero_ablated",
    "ce_loss_mean_ablated",
    "ce_recovered",
    "ce_recovered_mean_ablation",
    "kl",
    "ce_delta",
)
"""Metric columns first in this order; any others follow alphabetically."""

HEAD = (
    "dictionary",
    "kind",
    "splice",
    "layers",
    "layer",
    "member",
    "seed",
    "d_sae",
    "l1_coef",
    "k",
    "family",
    "sweep",
)
"""The leading columns of `records_frame`."""


def kind_label(kind: object) -> str:
    """A dictionary kind as shown (`KIND_LABEL`), any other as itself."""
    return KIND_LABEL.get(str(kind), text(kind))


def kind_marker(kind: object) -> str:
    """A dictionary kind's plot marker (`KIND_MARKER`), `^` for any other."""
    return KIND_MARKER.get(str(kind), "^")


KIND_COLUMN = Column("kind", "kind", kind_label, numeric=False)
"""A table's kind column."""


def kind_rank(kind: object) -> int:
    """Sort rank of a dictionary kind: transcoder, skip-transcoder, SAE, then others."""
    return KIND_ORDER.get(str(kind), len(KIND_ORDER))


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Records flattened, one row per record.

    Columns: `dictionary, kind, splice, layers` ("0,1"), `layer` (the layer when there is
    one, else empty), `member, seed, d_sae, l1_coef, k` (the sweep point's value, else the
    resolved option's), `family` (see module doc), `sweep` (the sparsity knob as a label:
    `λ=0.001`, `k=32`), `point.*`, `opts.*`, then every metric by its own name (NaN where a
    record lacks it).
    """
    df = pd.DataFrame([row for rec in records for row in _rows(rec)])
    point_cols = sorted(c for c in df.columns if c.startswith("point."))
    opts_cols = sorted(c for c in df.columns if c.startswith("opts."))
    others = sorted(set(df.columns) - {*HEAD, *point_cols, *opts_cols, *METRIC_ORDER})
    metric_cols = [*METRIC_ORDER, *others]  # every known metric a column, NaN where missing
    df = df.reindex(columns=[*HEAD, *point_cols, *opts_cols, *metric_cols])
    df["layer"] = df["layer"].astype("Int64")
    return _sorted(_joint_totals(df))


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a `records_frame` (everything after `HEAD`, `point.*`, `opts.*`)."""
    return [c for c in df.columns if c not in HEAD and not c.startswith(("point.", "opts."))]


def _rows(rec: dict) -> list[dict]:
    """A record's row, then, for a CLT's, a row per layer (`LAYER_OF_JOINT`); a CLT's FVU
    and dead fraction over all its layers, from those, where the record lacks them."""
    row = _row(rec)
    layers = rec.get("clean_layers") or rec.get("per_layer") or []
    if not layers:
        return [row]
    base = {k: v for k, v in row.items() if k not in (rec.get("metrics") or {})}  # no CE
    derived = []
    for m in layers:
        metrics = {k: num(v) for k, v in m.items() if k not in ("block", "n_tokens")}
        derived.append(base | {"layer": int(m["block"]), "splice": LAYER_OF_JOINT} | metrics)
    totals = _totals(
        [m.get("mse") for m in layers], [m.get("fvu") for m in layers],
        [m.get("dead_fraction") for m in layers], [m.get("n_tokens", 1) for m in layers],
    )  # fmt: skip
    row |= {k: v for k, v in totals.items() if math.isnan(num(row.get(k)))}
    return [row, *derived]


def _totals(mse: list, fvu: list, dead: list, n_tokens: list) -> dict:
    """FVU pooled over layers, dead fraction over all their (equally many) features."""
    dead_values = [num(d) for d in dead]
    return {
        "fvu": pooled_fvu([num(m) for m in mse], [num(f) for f in fvu], list(n_tokens)),
        "dead_fraction": sum(dead_values) / len(dead_values) if dead_values else math.nan,
    }


def _joint_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per-layer dictionaries spliced at once (`splice: all`): L0 summed, FVU pooled and dead
    fraction averaged over their `splice: each` rows of the same point. (A CLT has no
    `splice: each` rows: `_rows` gave its record the totals of its own layers.)"""
    each = df[df["splice"] == "each"]
    for i in df.index[df["splice"] == "all"]:
        r = df.loc[i]
        layers = [int(x) for x in r["layers"].split(",")]
        seed = -1 if pd.isna(r["seed"]) else r["seed"]
        same = each[
            (each["dictionary"] == r["dictionary"]) & (each["member"] == r["member"])
            & (each["seed"].fillna(-1) == seed) & each["layer"].isin(layers)
        ]  # fmt: skip
        if sorted(same["layer"]) != sorted(layers):
            continue  # a layer's own record is missing: no total
        totals = {"l0": same["l0"].sum(min_count=len(layers))} | _totals(
            list(same["mse"]), list(same["fvu"]), list(same["dead_fraction"]), [1] * len(same)
        )
        for k, v in totals.items():
            if pd.isna(df.at[i, k]):
                df.at[i, k] = v
    return df


def _row(rec: dict) -> dict:
    """One record's row of `records_frame` (before reindexing)."""
    point = dict(rec.get("point") or {})
    opts = dict(rec.get("opts") or {})
    layers = [int(x) for x in rec.get("layers") or []]
    metrics = rec.get("metrics") or {}
    shown = [a for a in sorted(point) if a not in SPARSITY_AXES + REPLICATE_AXES]
    extra = [f"{a}={point[a]}" for a in shown]
    name = str(rec.get("dictionary", ""))
    fam = FAMILIES.get(opts.get("activation"))
    topk = fam is not None and fam.sparsity != "l1"  # its `l1` option is no sweep coordinate
    row = {
        "dictionary": name,
        "kind": rec.get("kind"),
        "splice": rec.get("splice", "each"),
        "layers": ",".join(map(str, layers)),
        "layer": layers[0] if len(layers) == 1 else None,
        "member": rec.get("member"),
        "seed": num(point.get("seed", opts.get("seed"))),
        "d_sae": num(rec.get("d_sae", opts.get("d_sae"))),
        "l1_coef": num(point.get("l1", opts.get("l1") if not topk else None)),
        "k": num(point.get("k", opts.get("k"))),
        "family": name + (f" ({', '.join(extra)})" if extra else ""),
        "sweep": _sweep_label(point, opts, rec.get("member")),
    }
    row |= {f"point.{a}": _scalar(v) for a, v in point.items()}
    row |= {f"opts.{a}": _scalar(v) for a, v in opts.items()}
    row |= {m: num(v) for m, v in metrics.items()}
    return row


def _sweep_label(point: dict, opts: dict, member: object) -> str:
    """The sparsity knob of a sweep point as a short label: `λ=0.001`, `k=32`."""
    axes = (("l1", point), ("k", point), ("l0_coef", point), ("k", opts), ("l1", opts))
    for axis, source in axes:
        x = num(source.get(axis))
        if not math.isnan(x):
            return {"l1": f"λ={short_g(x)}", "l0_coef": f"λ0={short_g(x)}"}.get(axis, f"k={int(x)}")
    return str(member or "")


def _scalar(v: object) -> object:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """By kind (transcoder, skip-transcoder, SAE, others), single-layer rows before joint
    ones, layer, dictionary, family, L1 coefficient, k, then seed."""
    if df.empty:
        return df
    key = pd.DataFrame(
        {
            "kind": [kind_rank(k) for k in df["kind"]],
            "kind_name": df["kind"].astype(str),
            "joint": df["layer"].isna().astype(int),
            "layer": [
                int(lay) if not pd.isna(lay) else min(map(int, ls.split(",")), default=-1)
                for lay, ls in zip(df["layer"], df["layers"])
            ],
            "dictionary": df["dictionary"],
            "family": df["family"],
            "l1": df["l1_coef"],
            "k": df["k"],
            "seed": df["seed"],
        }
    )
    order = key.sort_values(list(key.columns), na_position="last", kind="stable").index
    return df.loc[order].reset_index(drop=True)


def layer_label(row: pd.Series) -> str:
    """A row's layer as shown: `3`, or the layers spliced at once for a record over
    several, runs of three or more as a range: `0,1 (all)`, `0-10 (all)`, `0-2,5 (all)`;
    one layer of a CLT: `0 (of 0,1)`."""
    span = layer_span([int(x) for x in row["layers"].split(",")]) if row["layers"] else ""
    if not pd.isna(row["layer"]):
        of = f" (of {span})" if row["splice"] == LAYER_OF_JOINT else ""
        return f"{int(row['layer'])}{of}"
    return f"{span} ({row['splice']})" if span else MISSING


def layer_span(layers: Sequence[int]) -> str:
    """`0,1`, `0-10`, `0-2,5`: the layers in order, runs of three or more as `a-b`."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = [f"{r[0]}-{r[-1]}" if len(r) >= 3 else ",".join(map(str, r)) for r in runs]
    return ",".join(parts)


def per_layer(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Single-layer rows by layer: `splice: each` records and each layer of a CLT."""
    single = df[df["layer"].notna() & df["splice"].isin(PER_LAYER_SPLICES)]
    return {int(layer): g for layer, g in single.groupby("layer", sort=True)}


def baselines(rows: pd.DataFrame) -> dict[str, float]:
    """The layer's original / zero-ablated / mean-ablated CE (mean over its records)."""
    names = {
        "original": "ce_loss_original",
        "zero-ablated": "ce_loss_zero_ablated",
        "mean-ablated": "ce_loss_mean_ablated",
    }
    return {label: num(rows[col].mean()) for label, col in names.items()}
