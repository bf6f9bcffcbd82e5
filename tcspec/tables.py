"""Tables and plots over evaluation records (the `metrics.json` of each evaluate task).

`build_tables(records, out_dir, include=..., reference=..., title=...)` writes:

- `sparsity_fidelity.{md,tex,csv}`: one row per dictionary x layer x sweep point.
- `matched_l0.{md,tex,csv}`: dictionary families compared at common L0 values, each
  family's CE / CE recovered / KL interpolated piecewise-linearly in log L0 between its own
  sweep points (never extrapolated).
- `pareto_L{layer}.png`: CE against mean L0 (log scale) per dictionary family, with the
  original model's and the ablated MLP's CE as horizontal lines (the paper's Figure 3).
- `reference_{key}.{md,tex,csv}` when `reference` names one of `tcspec.paper.REFERENCES`;
  published sweep points are also drawn, hollow, on the Pareto plot of their layer.
- `index.md` (every table inline, every plot linked) and `results.csv` (all records
  flattened, one row per record, every metric a column).

A *family* is one dictionary name at one value of every sweep axis other than the sparsity
knob (`l1` or `k`): its points form one curve. CSVs hold raw numbers (fractions, full
precision); Markdown and LaTeX hold formatted ones (percentages where a label says `%`).
Only records with `splice: each` on a single layer enter the per-layer comparisons.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcspec.paper import REFERENCES, Reference

INCLUDES = ("sparsity_fidelity", "matched_l0", "pareto", "interpretability", "greater_than")
"""Table names `include` accepts (the names of `TablesSpec.include`)."""

BUILT_ELSEWHERE = {
    "interpretability": "needs the interp stage's study and, for Table 1, ingested ratings",
    "greater_than": "needs a greater_than circuit study in the spec",
}
"""Accepted names whose tables come from other stages' outputs, not from metrics records."""

KIND_ORDER = {"transcoder": 0, "skip_transcoder": 1, "sae": 2}
KIND_LABEL = {"transcoder": "transcoder", "skip_transcoder": "skip-transcoder", "sae": "SAE"}
KIND_MARKER = {"transcoder": "o", "skip_transcoder": "D", "sae": "s"}
SPARSITY_AXES = ("l1", "k")
"""Sweep axes that move a dictionary along its sparsity-fidelity curve."""

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

MISSING = "–"
"""How a missing or non-finite number is shown in Markdown (`--` in LaTeX)."""

MAX_LABELS_PER_CURVE = 8
"""A Pareto curve with more points gets a sweep label on evenly spaced ones (and both ends)."""

MATCHED_METRICS = ("ce_loss_replaced", "ce_recovered", "kl")
"""Metrics interpolated at matched L0."""

MATCHED_NOTE = (
    "Each family's value is interpolated piecewise-linearly in log L0 between its own sweep "
    "points; nothing is extrapolated: a cell is blank outside that family's measured L0 "
    "range, and rows are kept only where at least two families are measured."
)


# ---------------------------------------------------------------------- formatting
def _fixed(decimals: int, scale: float = 1.0) -> Callable[[object], str]:
    def fmt(v: object) -> str:
        x = _num(v)
        return MISSING if math.isnan(x) else f"{x * scale:.{decimals}f}"

    return fmt


def _general(v: object) -> str:
    x = _num(v)
    return MISSING if math.isnan(x) else f"{x:.3g}"


def _integer(v: object) -> str:
    x = _num(v)
    return MISSING if math.isnan(x) else f"{int(round(x))}"


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return str(v)


def _num(v: object) -> float:
    """A float, NaN for anything missing or not a finite number."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


@dataclass(frozen=True)
class Column:
    """A column of a written table: raw key (CSV), display label, display format."""

    key: str
    label: str
    fmt: Callable[[object], str]
    numeric: bool = True


SPARSITY_FIDELITY_COLUMNS = (
    Column("dictionary", "dictionary", _text, numeric=False),
    Column("kind", "kind", lambda v: KIND_LABEL.get(str(v), _text(v)), numeric=False),
    Column("layer", "layer", _text, numeric=False),
    Column("d_sae", "d_sae", _integer),
    Column("l1_coef", "L1 coef", _general),
    Column("k", "k", _integer),
    Column("l0", "L0", _fixed(1)),
    Column("ce_loss_replaced", "CE", _fixed(4)),
    Column("ce_recovered", "CE rec. %", _fixed(2, 100.0)),
    Column("kl", "KL", _fixed(4)),
    Column("fvu", "FVU", _fixed(4)),
    Column("dead_fraction", "dead %", _fixed(1, 100.0)),
)


def _display(df: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """`df`'s columns formatted as strings under their display labels."""
    return pd.DataFrame({c.label: [c.fmt(v) for v in df[c.key]] for c in columns})


def _markdown(df: pd.DataFrame, columns: Sequence[Column]) -> str:
    if df.empty:
        return "_(no rows)_"
    align = tuple("right" if c.numeric else "left" for c in columns)
    return _display(df, columns).to_markdown(index=False, disable_numparse=True, colalign=align)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "λ": r"$\lambda$",
    "−": r"$-$",
}


def _tex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace(MISSING, "--")


def _latex(df: pd.DataFrame, columns: Sequence[Column], caption: str, label: str) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`), cells as in Markdown."""
    shown = _display(df, columns)
    align = "".join("r" if c.numeric else "l" for c in columns)
    lines = [
        r"\begin{table}",
        r"\centering",
        rf"\caption{{{_tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_tex_escape(c.label) for c in columns) + r" \\",
        r"\midrule",
        *(" & ".join(_tex_escape(v) for v in row) + r" \\" for row in shown.itertuples(False)),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- files
def _write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temp file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_table(
    out_dir: Path,
    name: str,
    df: pd.DataFrame,
    columns: Sequence[Column],
    csv: pd.DataFrame,
    caption: str,
    notes: Sequence[str],
) -> tuple[list[Path], str]:
    """`name.md`, `name.tex`, `name.csv`; returns the paths and the Markdown body."""
    md = "\n\n".join([_markdown(df, columns), *notes])
    tex_notes = "% needs \\usepackage{booktabs}\n" + "".join(f"% {n}\n" for n in notes)
    paths = [
        _write_text(out_dir / f"{name}.md", f"## {caption}\n\n{md}\n"),
        _write_text(
            out_dir / f"{name}.tex", tex_notes + _latex(df, columns, caption, f"tab:{name}")
        ),
        _write_text(out_dir / f"{name}.csv", csv.to_csv(index=False)),
    ]
    return paths, md


# ---------------------------------------------------------------------- records
def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Records flattened, one row per record.

    Columns: `dictionary, kind, splice, layers` ("0,1"), `layer` (the layer when there is
    one, else empty), `member, d_sae, l1_coef, k` (the sweep point's value, else the
    resolved option's), `family` (see module doc), `point.*`, `opts.*`, then every metric
    by its own name (NaN where a record lacks it).
    """
    rows = []
    for rec in records:
        point = dict(rec.get("point") or {})
        opts = dict(rec.get("opts") or {})
        layers = [int(x) for x in rec.get("layers") or []]
        metrics = rec.get("metrics") or {}
        extra = [f"{a}={point[a]}" for a in sorted(point) if a not in SPARSITY_AXES]
        name = str(rec.get("dictionary", ""))
        topk = opts.get("activation") == "topk"  # its `l1` option (0) is no sweep coordinate
        row = {
            "dictionary": name,
            "kind": rec.get("kind"),
            "splice": rec.get("splice", "each"),
            "layers": ",".join(map(str, layers)),
            "layer": layers[0] if len(layers) == 1 else None,
            "member": rec.get("member"),
            "d_sae": _num(rec.get("d_sae", opts.get("d_sae"))),
            "l1_coef": _num(point.get("l1", opts.get("l1") if not topk else None)),
            "k": _num(point.get("k", opts.get("k"))),
            "family": name + (f" ({', '.join(extra)})" if extra else ""),
            "sweep": _sweep_label(point, opts, rec.get("member")),
        }
        row |= {f"point.{a}": _scalar(v) for a, v in point.items()}
        row |= {f"opts.{a}": _scalar(v) for a, v in opts.items()}
        row |= {m: _num(v) for m, v in metrics.items()}
        rows.append(row)
    df = pd.DataFrame(rows)
    others = sorted({m for r in records for m in (r.get("metrics") or {})} - set(METRIC_ORDER))
    metric_cols = [*METRIC_ORDER, *others]  # every known metric a column, NaN where missing
    head = [
        "dictionary",
        "kind",
        "splice",
        "layers",
        "layer",
        "member",
        "d_sae",
        "l1_coef",
        "k",
        "family",
        "sweep",
    ]
    point_cols = sorted(c for c in df.columns if c.startswith("point."))
    opts_cols = sorted(c for c in df.columns if c.startswith("opts."))
    df = df.reindex(columns=head + point_cols + opts_cols + metric_cols)
    df["layer"] = df["layer"].astype("Int64")
    return _sorted(df)


def _short_g(x: float) -> str:
    """Two significant digits, short exponent: `2.5e-05` -> `2.5e-5`."""
    return f"{x:.2g}".replace("e-0", "e-").replace("e+0", "e")


def _sweep_label(point: dict, opts: dict, member: object) -> str:
    """The sparsity knob of a sweep point as a short label: `λ=0.001`, `k=32`."""
    for axis, source in (("l1", point), ("k", point), ("k", opts), ("l1", opts)):
        x = _num(source.get(axis))
        if not math.isnan(x):
            return f"λ={_short_g(x)}" if axis == "l1" else f"k={int(x)}"
    return str(member or "")


def _scalar(v: object) -> object:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """By kind (transcoder, skip-transcoder, SAE, others), layer (single before joint),
    dictionary, L1 coefficient, then k."""
    if df.empty:
        return df
    key = pd.DataFrame(
        {
            "kind": [KIND_ORDER.get(str(k), len(KIND_ORDER)) for k in df["kind"]],
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
        }
    )
    order = key.sort_values(list(key.columns), na_position="last", kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _layer_label(row: pd.Series) -> str:
    if not pd.isna(row["layer"]):
        return str(int(row["layer"]))
    return f"{row['layers']} ({row['splice']})" if row["layers"] else MISSING


def _per_layer(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Single-layer `splice: each` records by layer."""
    single = df[df["layer"].notna() & (df["splice"] == "each")]
    return {int(layer): g for layer, g in single.groupby("layer", sort=True)}


def _baselines(rows: pd.DataFrame) -> dict[str, float]:
    """The layer's original / zero-ablated / mean-ablated CE (mean over its records)."""
    names = {
        "original": "ce_loss_original",
        "zero-ablated": "ce_loss_zero_ablated",
        "mean-ablated": "ce_loss_mean_ablated",
    }
    return {label: _num(rows[col].mean()) for label, col in names.items()}


# ---------------------------------------------------------------------- sparsity-fidelity
def sparsity_fidelity(df: pd.DataFrame) -> tuple[pd.DataFrame, list[Column], list[str]]:
    """The table (raw values), its shown columns, and note lines (per-layer baselines)."""
    table = df.copy()
    table["layer"] = [_layer_label(r) for _, r in df.iterrows()]
    columns = [c for c in SPARSITY_FIDELITY_COLUMNS if c.key != "k" or df["k"].notna().any()]
    notes = []
    for layer, rows in _per_layer(df).items():
        b = _baselines(rows)
        parts = [f"{k} {v:.4f}" for k, v in b.items() if not math.isnan(v)]
        if parts:
            notes.append(f"Layer {layer} CE baselines: " + ", ".join(parts) + ".")
    for layers, rows in df[df["layer"].isna()].groupby("layers", sort=True):
        b = _baselines(rows)
        parts = [f"{k} {v:.4f}" for k, v in b.items() if not math.isnan(v)]
        if parts:
            notes.append(f"Layers {layers} together: CE " + ", ".join(parts) + ".")
    notes.append(
        "CE: next-token loss (nats) with the dictionary spliced in; CE rec.: fraction of the "
        "zero-ablation loss gap recovered; KL: KL(original || replaced); dead: features never "
        "active on the eval set."
    )
    keep = ["dictionary", "kind", "splice", "layer", "member", "family", "sweep"] + [
        c.key for c in SPARSITY_FIDELITY_COLUMNS if c.key not in ("dictionary", "kind", "layer")
    ]
    return table[keep], columns, notes


# ---------------------------------------------------------------------- matched L0
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


def matched_l0(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: layer, L0, family, kind, and each of `MATCHED_METRICS` interpolated.

    Per layer, the L0 grid is every family's smallest and largest measured L0 plus 1-2-5
    values between them, kept where at least two families have an interpolated CE.
    """
    out = []
    for layer, rows in _per_layer(df).items():
        fams = {f: g for f, g in rows.groupby("family", sort=False)}
        if len(fams) < 2:
            continue
        ranges = []
        for g in fams.values():
            ok = g["l0"].gt(0) & g["ce_loss_replaced"].notna()
            if ok.any():
                ranges.append((g.loc[ok, "l0"].min(), g.loc[ok, "l0"].max()))
        if len(ranges) < 2:
            continue
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
        out.append(block[block["l0"].isin(measured[measured >= 2].index)])
    cols = ["layer", "l0", "family", "kind", *MATCHED_METRICS]
    if not out:
        return pd.DataFrame(columns=cols)
    long = pd.concat(out, ignore_index=True)[cols]
    rank = long["kind"].map(lambda k: KIND_ORDER.get(str(k), len(KIND_ORDER)))
    return long.assign(_r=rank).sort_values(["layer", "l0", "_r", "family"]).drop(columns="_r")


def _matched_wide(long: pd.DataFrame) -> tuple[pd.DataFrame, list[Column]]:
    """One row per (layer, L0); per family CE, CE rec. %, KL; ΔCE when exactly two families."""
    fams = list(dict.fromkeys(long["family"]))
    wide = long.pivot_table(
        index=["layer", "l0"],
        columns="family",
        values=list(MATCHED_METRICS),
        dropna=False,
        sort=True,
    )
    table = pd.DataFrame({"layer": [i[0] for i in wide.index], "l0": [i[1] for i in wide.index]})
    columns = [Column("layer", "layer", _integer, numeric=False), Column("l0", "L0", _fixed(1))]
    for f in fams:
        for m, label, fmt in (
            ("ce_loss_replaced", "CE", _fixed(4)),
            ("ce_recovered", "CE rec. %", _fixed(2, 100.0)),
            ("kl", "KL", _fixed(4)),
        ):
            key = f"{f}:{m}"
            table[key] = wide[(m, f)].to_numpy() if (m, f) in wide.columns else np.nan
            columns.append(Column(key, f"{f} {label}", fmt))
    if len(fams) == 2:
        a, b = fams
        table["delta_ce"] = table[f"{a}:ce_loss_replaced"] - table[f"{b}:ce_loss_replaced"]
        columns.append(Column("delta_ce", f"ΔCE ({a} − {b})", _fixed(4)))
    return table, columns


# ---------------------------------------------------------------------- Pareto plots
def _family_label(fam: str, kind: str) -> str:
    kind_label = KIND_LABEL.get(kind, kind)
    return fam if fam.split(" ")[0] == kind_label else f"{fam} ({kind_label})"


def _pareto_reference_points(ref: Reference) -> pd.DataFrame | None:
    ref_df = ref.frame()
    return ref_df if {"L0", "CE", "kind", "dictionary"} <= set(ref_df.columns) else None


def pareto_figure(rows: pd.DataFrame, title: str, ref_points: pd.DataFrame | None = None):
    """A matplotlib Figure (no pyplot state): CE vs mean L0 (log x), one curve per family of
    `rows` (a `records_frame` slice for one layer) annotated with its sweep values, and the
    layer's original / ablated CE as horizontal lines.

    `ref_points` (a published frame with dictionary, kind, lambda, L0, CE) are drawn as hollow
    markers on dashed lines, coloured like our family of the same kind, labelled "(paper)".
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    fig = Figure(figsize=(8.0, 5.2), dpi=100)  # 800 x 520 px
    fig.subplots_adjust(left=0.09, right=0.965, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    ys: list[float] = []
    kind_color: dict[str, str] = {}
    n_color = 0
    for fam, g in rows.groupby("family", sort=False):
        g = g[g["l0"].gt(0) & g["ce_loss_replaced"].notna()].sort_values("l0")
        if g.empty:
            continue
        kind = str(g["kind"].iloc[0])
        color = f"C{n_color % 10}"
        n_color += 1
        kind_color.setdefault(kind, color)
        ax.plot(
            g["l0"],
            g["ce_loss_replaced"],
            marker=KIND_MARKER.get(kind, "^"),
            ms=6,
            lw=1.8,
            color=color,
            label=_family_label(fam, kind),
            zorder=3,
        )
        step = math.ceil(len(g) / MAX_LABELS_PER_CURVE)
        shown = g.iloc[sorted({*range(0, len(g), step), len(g) - 1})]  # both ends always
        for x, y, text in zip(shown["l0"], shown["ce_loss_replaced"], shown["sweep"]):
            ax.annotate(
                text,
                (x, y),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )
        ys += list(g["ce_loss_replaced"])
    if ref_points is not None:
        for name, g in ref_points.groupby("dictionary", sort=False):
            g = g.sort_values("L0")
            kind = str(g["kind"].iloc[0])
            if kind not in kind_color:
                kind_color[kind] = f"C{n_color % 10}"
                n_color += 1
            color = kind_color[kind]
            ax.plot(
                g["L0"],
                g["CE"],
                marker=KIND_MARKER.get(kind, "^"),
                ms=7,
                mfc="white",
                mew=1.5,
                lw=1.0,
                ls="--",
                color=color,
                alpha=0.9,
                label=f"{name} (paper)",
                zorder=2,
            )
            for x, y, lam in zip(g["L0"], g["CE"], g["lambda"]):
                ax.annotate(
                    f"λ={_short_g(lam)}",
                    (x, y),
                    xytext=(5, -10),
                    fontsize=7,
                    textcoords="offset points",
                    color=color,
                    alpha=0.75,
                )
            ys += list(g["CE"])
    _baseline_lines(ax, _baselines(rows) if not rows.empty else {}, ys)
    ax.set_xscale("log")
    ax.margins(x=0.1)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(NullLocator())  # 1-2-5 major ticks suffice; minor ones cost
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("mean L0 (active features per token, log scale)")
    ax.set_ylabel("next-token CE loss (nats)")
    ax.set_title(title, fontsize=11, y=1.0, pad=8)  # a fixed y skips a costly auto-placement
    ax.grid(True, alpha=0.35)
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        handles, labels = [Line2D([], [], ls="none")], ["no points with L0 > 0 and a CE"]
    ax.legend(handles, labels, fontsize=8, loc="upper right", framealpha=0.92)
    return fig


def _baseline_lines(ax, base: dict[str, float], ys: list[float]) -> None:
    """Horizontal lines for the original / ablated CE; one far above the curves (it would
    squash them) gets a legend entry marked off scale instead of a line."""
    from matplotlib.lines import Line2D

    styles = {
        "original": dict(color="black", ls="--"),
        "zero-ablated": dict(color="tab:red", ls=":"),
        "mean-ablated": dict(color="tab:gray", ls="-."),
    }
    orig = base.get("original", math.nan)
    near = [y for y in ys if math.isfinite(y)] + ([orig] if math.isfinite(orig) else [])
    if not near:
        return
    lo, hi = min(near), max(near)
    span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    top = hi + 0.45 * span  # room for the legend
    for label, y in base.items():
        if math.isnan(y):
            continue
        name = "original model" if label == "original" else f"MLP {label}"
        if y <= hi + 2.0 * span:  # close enough to show without squashing the curves
            ax.axhline(y, lw=1.2, label=f"{name}: CE {y:.4f}", **styles[label])
            top = max(top, y + 0.45 * span)
        else:
            ax.add_line(
                Line2D(
                    [], [], lw=1.2, label=f"{name}: CE {y:.3f} (off scale, above)", **styles[label]
                )
            )
    ax.set_ylim(lo - 0.12 * span, top)


def _save_png(fig, path: Path) -> Path:
    """Write `fig` to `path` as a PNG atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 3})
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- references
def _reference_table(out_dir: Path, ref: Reference) -> tuple[list[Path], str, str]:
    df = ref.frame()
    columns = []
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c])
        fmt = _text
        if c == "lambda":
            fmt = _general
        elif numeric and pd.api.types.is_float_dtype(df[c]):
            decimals = max(len(f"{v}".split(".")[-1]) if "." in f"{v}" else 0 for v in df[c])
            fmt = _fixed(min(decimals, 4))
        columns.append(Column(c, c, fmt, numeric=numeric))
    caption = f"Published ({ref.citation})"
    notes = [
        f"{ref.description}. Model: {ref.model}; layer(s): {', '.join(map(str, ref.layers))}.",
        *ref.notes,
    ]
    paths, md = _write_table(out_dir, f"reference_{ref.key}", df, columns, df, caption, notes)
    return paths, caption, md


# ---------------------------------------------------------------------- entry point
def build_tables(
    records: list[dict],
    out_dir: Path,
    *,
    include: list[str],
    reference: str | None,
    title: str,
    extra: dict[str, list[tuple[str, pd.DataFrame, str]]] | None = None,
) -> list[Path]:
    """Write the tables and plots named in `include` for `records` into `out_dir`.

    `extra` holds tables other stages computed (interpretability ratings, circuit studies):
    include name -> [(file stem, frame, caption)], written as Markdown, LaTeX-free CSV and
    shown in the index like the rest.

    `records` are metrics records (see module doc); `reference` optionally names a
    published table of `tcspec.paper.REFERENCES` to show beside ours; `title` heads the
    index and the plots. Always writes `index.md` and `results.csv`. Returns every path
    written. Raises ValueError for an unknown table or reference name.
    """
    unknown = [n for n in include if n not in INCLUDES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; choose from {list(INCLUDES)}")
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"unknown reference `{reference}`; choose from {list(REFERENCES)}")
    ref = REFERENCES[reference] if reference else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = records_frame(records)
    written: list[Path] = []
    contents: list[str] = []  # index lines
    sections: list[str] = []  # index body

    if "sparsity_fidelity" in include:
        table, columns, notes = sparsity_fidelity(df)
        caption = f"Sparsity and fidelity: {title}"
        paths, md = _write_table(
            out_dir,
            "sparsity_fidelity",
            table,
            columns,
            table[[c for c in table.columns if c not in ("family", "sweep")]],
            caption,
            notes,
        )
        written += paths
        contents.append(
            "- [sparsity_fidelity.md](sparsity_fidelity.md) (.tex, .csv): every "
            "dictionary x layer x sweep point: L0, CE, CE recovered, KL, FVU, dead %."
        )
        sections.append(f"## {caption}\n\n{md}")

    if "matched_l0" in include:
        long = matched_l0(df)
        wide, columns = _matched_wide(long)
        caption = f"Matched L0: {title}"
        notes = [MATCHED_NOTE]
        if long.empty:
            notes.insert(0, "No layer has two dictionary families with overlapping L0 ranges.")
        paths, md = _write_table(out_dir, "matched_l0", wide, columns, long, caption, notes)
        written += paths
        contents.append(
            "- [matched_l0.md](matched_l0.md) (.tex, .csv in long form): families "
            "compared at common L0, interpolated in log L0 inside each sweep's range."
        )
        sections.append(f"## {caption}\n\n{md}")

    ref_points = _pareto_reference_points(ref) if ref else None
    if "pareto" in include:
        layers = _per_layer(df)
        lines = []
        drawn_ref = False
        for layer, rows in layers.items():
            overlay = ref_points if ref_points is not None and layer in ref.layers else None
            drawn_ref |= overlay is not None
            fig = pareto_figure(rows, f"{title}: layer {layer}, CE loss vs L0", overlay)
            path = _save_png(fig, out_dir / f"pareto_L{layer}.png")
            written.append(path)
            lines.append(f"![layer {layer}]({path.name})")
            contents.append(
                f"- [{path.name}]({path.name}): CE vs mean L0 at layer {layer}, one "
                "curve per dictionary family, original and ablated CE as lines."
            )
        if ref_points is not None and not drawn_ref:
            name = f"pareto_{ref.key}.png"
            ref_title = f"{ref.citation}: {ref.model} layer {', '.join(map(str, ref.layers))}"
            path = _save_png(pareto_figure(df.iloc[0:0], ref_title, ref_points), out_dir / name)
            written.append(path)
            lines.append(f"![published]({name})")
            contents.append(
                f"- [{name}]({name}): the published sweep alone (no layer of this "
                "experiment matches its layer)."
            )
        if not lines:
            lines.append("_(no single-layer records to plot)_")
        sections.append("## Sparsity-fidelity plots\n\n" + "\n\n".join(lines))

    for name in include:
        if name in BUILT_ELSEWHERE and (extra or {}).get(name):
            for stem, frame, caption in extra[name]:
                md = frame.to_markdown(index=False, floatfmt=".4g")
                written.append(_write_text(out_dir / f"{stem}.md", f"## {caption}\n\n{md}\n"))
                written.append(_write_text(out_dir / f"{stem}.csv", frame.to_csv(index=False)))
                contents.append(f"- [{stem}.md]({stem}.md) (.csv): {caption}.")
                sections.append(f"## {caption}\n\n{md}")
        elif name in BUILT_ELSEWHERE:
            contents.append(f"- {name}: not built yet ({BUILT_ELSEWHERE[name]}).")

    if ref is not None:
        paths, caption, md = _reference_table(out_dir, ref)
        written += paths
        contents.append(
            f"- [{paths[0].name}]({paths[0].name}) (.tex, .csv): {caption}: {ref.description}."
        )
        sections.append(f"## {caption}\n\n{md}")

    written.append(_write_text(out_dir / "results.csv", df.to_csv(index=False)))
    contents.append(
        f"- [results.csv](results.csv): all {len(df)} records flattened, one row "
        "per record, every metric a column."
    )
    index = "\n\n".join([f"# {title}", "\n".join(contents), *sections]) + "\n"
    written.append(_write_text(out_dir / "index.md", index))
    return written
