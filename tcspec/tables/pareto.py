"""Pareto plots: CE against mean L0 (log scale) per dictionary family, with the original
model's and the ablated MLP's CE as horizontal lines (the paper's Figure 3); published sweep
points drawn hollow on the plot of their layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tcspec import atomic
from tcspec.tables.format import short_g
from tcspec.tables.paper import Reference
from tcspec.tables.records import baselines, kind_label, kind_marker, layer_span, per_layer
from tcspec.tables.section import Inputs, Section
from tcspec.tables.seeds import STD, pool_seeds

MAX_LABELS_PER_CURVE = 8
"""A Pareto curve with more points gets a sweep label on evenly spaced ones (and both ends)."""

BASELINE_STYLES = {
    "original": dict(color="black", ls="--"),
    "zero-ablated": dict(color="tab:red", ls=":"),
    "mean-ablated": dict(color="tab:gray", ls="-."),
}


@dataclass
class _Colors:
    """Colours handed out in order, one per family; a published family takes the colour of
    our first family of its kind."""

    by_kind: dict[str, str] = field(default_factory=dict)
    used: int = 0

    def next(self) -> str:
        color = f"C{self.used % 10}"
        self.used += 1
        return color

    def of_kind(self, kind: str) -> str:
        if kind not in self.by_kind:
            self.by_kind[kind] = self.next()
        return self.by_kind[kind]


def _family_label(fam: str, kind: str) -> str:
    shown = kind_label(kind)
    return fam if fam.split(" ")[0] == shown else f"{fam} ({shown})"


def reference_points(ref: Reference) -> pd.DataFrame | None:
    """A published frame that can be drawn (dictionary, kind, lambda, L0, CE), else None."""
    ref_df = ref.frame()
    return ref_df if {"L0", "CE", "kind", "dictionary"} <= set(ref_df.columns) else None


def _draw_families(ax, rows: pd.DataFrame, colors: _Colors) -> list[float]:
    """One curve per family of `rows`, sweep values annotated; returns the CEs drawn."""
    ys: list[float] = []
    for fam, g in rows.groupby("family", sort=False):
        g = g[g["l0"].gt(0) & g["ce_loss_replaced"].notna()].sort_values("l0")
        if g.empty:
            continue
        kind = str(g["kind"].iloc[0])
        color = colors.next()
        colors.by_kind.setdefault(kind, color)
        ax.plot(
            g["l0"],
            g["ce_loss_replaced"],
            marker=kind_marker(kind),
            ms=6,
            lw=1.8,
            color=color,
            label=_family_label(fam, kind),
            zorder=3,
        )
        xerr, yerr = _bars(g, "l0"), _bars(g, "ce_loss_replaced")
        if xerr is not None or yerr is not None:
            ax.errorbar(g["l0"], g["ce_loss_replaced"], xerr=xerr, yerr=yerr, fmt="none",
                        ecolor=color, elinewidth=1.2, capsize=3, zorder=3)  # fmt: skip
        step = math.ceil(len(g) / MAX_LABELS_PER_CURVE)
        shown = g.iloc[sorted({*range(0, len(g), step), len(g) - 1})]  # both ends always
        for x, y, label in zip(shown["l0"], shown["ce_loss_replaced"], shown["sweep"]):
            ax.annotate(
                label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7, color=color
            )
        ys += list(g["ce_loss_replaced"])
    return ys


def _bars(g: pd.DataFrame, metric: str):
    """The seeds' spread of `metric` as error bars (one standard deviation), or None."""
    std = g.get(metric + STD)
    if std is None or not std.notna().any():
        return None
    return std.fillna(0.0).to_numpy()


def _draw_reference(ax, ref_points: pd.DataFrame, colors: _Colors) -> list[float]:
    """Published sweeps as hollow markers on dashed lines; returns the CEs drawn."""
    ys: list[float] = []
    for name, g in ref_points.groupby("dictionary", sort=False):
        g = g.sort_values("L0")
        kind = str(g["kind"].iloc[0])
        color = colors.of_kind(kind)
        ax.plot(
            g["L0"],
            g["CE"],
            marker=kind_marker(kind),
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
                f"λ={short_g(lam)}",
                (x, y),
                xytext=(5, -10),
                fontsize=7,
                textcoords="offset points",
                color=color,
                alpha=0.75,
            )
        ys += list(g["CE"])
    return ys


def _style_axes(ax, title: str) -> None:
    """Log x axis with 1-2-5 ticks, labels, title, grid and legend."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

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


def pareto_figure(rows: pd.DataFrame, title: str, ref_points: pd.DataFrame | None = None):
    """A matplotlib Figure (no pyplot state): CE vs mean L0 (log x), one curve per family of
    `rows` (a `records_frame` slice for one layer) annotated with its sweep values, and the
    layer's original / ablated CE as horizontal lines.

    The seeds of a sweep point are pooled (`tcspec.tables.seeds.pool_seeds`): a point is
    their mean, with error bars of one sample standard deviation in L0 and CE.

    `ref_points` (a published frame with dictionary, kind, lambda, L0, CE) are drawn as hollow
    markers on dashed lines, coloured like our family of the same kind, labelled "(paper)".
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.2), dpi=100)  # 800 x 520 px
    fig.subplots_adjust(left=0.09, right=0.965, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    colors = _Colors()
    ys = _draw_families(ax, pool_seeds(rows), colors)
    if ref_points is not None:
        ys += _draw_reference(ax, ref_points, colors)
    _baseline_lines(ax, baselines(rows) if not rows.empty else {}, ys)
    _style_axes(ax, title)
    return fig


def _baseline_lines(ax, base: dict[str, float], ys: list[float]) -> None:
    """Horizontal lines for the original / ablated CE; one far above the curves (it would
    squash them) gets a legend entry marked off scale instead of a line."""
    from matplotlib.lines import Line2D

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
        style = BASELINE_STYLES[label]
        if y <= hi + 2.0 * span:  # close enough to show without squashing the curves
            ax.axhline(y, lw=1.2, label=f"{name}: CE {y:.4f}", **style)
            top = max(top, y + 0.45 * span)
        else:
            off = f"{name}: CE {y:.3f} (off scale, above)"
            ax.add_line(Line2D([], [], lw=1.2, label=off, **style))
    ax.set_ylim(lo - 0.12 * span, top)


def _joint(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Records spliced into several layers at once, by layer set, where one has an L0 and
    a CE to draw."""
    joint = df[df["layer"].isna() & (df["splice"] == "all")]
    drawable = joint["l0"].gt(0) & joint["ce_loss_replaced"].notna()
    return {ls: g for ls, g in joint[drawable].groupby("layers", sort=True)}


def _save_png(fig, path: Path) -> Path:
    return atomic.save_figure(fig, path, pil_kwargs={"compress_level": 3})


def section(inputs: Inputs) -> Section:
    """`pareto_L{layer}.png` per layer, `pareto_L{a-b}.png` per set of layers spliced at once
    (at their total L0); the published sweep alone when no layer matches it."""
    ref = inputs.reference
    ref_points = reference_points(ref) if ref else None
    paths, lines, contents = [], [], []
    drawn_ref = False
    for layer, rows in per_layer(inputs.records).items():
        overlay = ref_points if ref_points is not None and layer in ref.layers else None
        drawn_ref |= overlay is not None
        fig = pareto_figure(rows, f"{inputs.title}: layer {layer}, CE loss vs L0", overlay)
        path = _save_png(fig, inputs.out_dir / f"pareto_L{layer}.png")
        paths.append(path)
        lines.append(f"![layer {layer}]({path.name})")
        contents.append(
            f"- [{path.name}]({path.name}): CE vs mean L0 at layer {layer}, one "
            "curve per dictionary family (error bars: one standard deviation over seeds), "
            "original and ablated CE as lines."
        )
    for layers, rows in _joint(inputs.records).items():
        name = f"pareto_L{layers.replace(',', '-')}.png"
        where = f"layers {layer_span(list(map(int, layers.split(','))))} spliced at once"
        fig = pareto_figure(rows, f"{inputs.title}: {where}, CE loss vs total L0")
        paths.append(_save_png(fig, inputs.out_dir / name))
        lines.append(f"![{where}]({name})")
        contents.append(
            f"- [{name}]({name}): CE vs total L0 with {where} (a CLT beside per-layer "
            "dictionaries), error bars over seeds."
        )
    if ref_points is not None and not drawn_ref:
        name = f"pareto_{ref.key}.png"
        ref_title = f"{ref.citation}: {ref.model} layer {', '.join(map(str, ref.layers))}"
        fig = pareto_figure(inputs.records.iloc[0:0], ref_title, ref_points)
        paths.append(_save_png(fig, inputs.out_dir / name))
        lines.append(f"![published]({name})")
        contents.append(
            f"- [{name}]({name}): the published sweep alone (no layer of this "
            "experiment matches its layer)."
        )
    if not lines:
        lines.append("_(no single-layer records to plot)_")
    body = "## Sparsity-fidelity plots\n\n" + "\n\n".join(lines)
    return Section(tuple(paths), tuple(contents), body)
