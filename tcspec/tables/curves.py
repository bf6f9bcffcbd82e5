"""Training curves: each loss term, L0 and the dead fraction (FVU too where the trainer logs
it, as a CLT's does) against training tokens, one figure per dictionary and layer (a CLT: its
layers), one colour per sweep point, one line style per seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tcspec import atomic
from tcspec.tables.section import Inputs, Section
from tcspec.tables.seeds import without_seed

NOT_TERMS = ("step", "lr", "live", "dead", "l0", "fvu")
"""Curve columns that are not loss terms."""
SEED_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Curve:
    """One trained dictionary's curve, as its trainer logged it (`training.json`)."""

    dictionary: str
    layers: tuple[int, ...]
    """The layer it was trained at; a CLT's layers."""
    member: str
    """Its sweep point's name (`k_16-seed_1`)."""
    seed: int
    tokens_per_step: int
    features: int
    """Features in all (a CLT: over all its layers), for the dead fraction."""
    rows: tuple[dict, ...]
    """The logged rows: `step`, the loss terms, `l0`, and `dead` (features that have not
    fired within the dead window) where logged."""


def _panels(curves: Sequence[Curve]) -> list[str]:
    """Loss terms (`loss` first), then `l0`, `fvu` and `dead` where any curve has them."""
    keys = {k for c in curves for r in c.rows for k in r}
    terms = sorted(keys - set(NOT_TERMS), key=lambda k: (k != "loss", k))
    return terms + [k for k in ("l0", "fvu", "dead") if k in keys]


def _series(c: Curve, key: str) -> tuple[list[float], list[float]]:
    """Tokens and values of `key` (the dead count as a fraction of the features)."""
    rows = [r for r in c.rows if r.get(key) is not None]
    xs = [r["step"] * c.tokens_per_step for r in rows]
    scale = 1 / c.features if key == "dead" else 1.0
    return xs, [float(r[key]) * scale for r in rows]


LABELS = {"l0": "L0", "fvu": "FVU (batch)", "dead": "dead fraction"}


def curves_figure(curves: Sequence[Curve], title: str):
    """A matplotlib Figure (no pyplot state): a panel per curve column, each curve a line."""
    from matplotlib.figure import Figure

    panels = _panels(curves)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.8 * nrows + 0.6), dpi=90)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    points = list(dict.fromkeys(without_seed(c.member) for c in curves))
    seeds = sorted({c.seed for c in curves})
    for ax, key in zip(axes, panels):
        for c in curves:
            xs, ys = _series(c, key)
            color = f"C{points.index(without_seed(c.member)) % 10}"
            style = SEED_STYLES[seeds.index(c.seed) % len(SEED_STYLES)]
            label = without_seed(c.member) + (f", seed {c.seed}" if len(seeds) > 1 else "")
            ax.plot(xs, ys, color=color, ls=style, lw=1.2, label=label)
        if key not in ("dead", "fvu") and all(
            y > 0 for ln in ax.get_lines() for y in ln.get_ydata()
        ):
            ax.set_yscale("log")
        ax.set_title(LABELS.get(key, key), fontsize=9)
        ax.set_xlabel("training tokens", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _groups(curves: Sequence[Curve]) -> dict[tuple[str, tuple[int, ...]], list[Curve]]:
    out: dict[tuple[str, tuple[int, ...]], list[Curve]] = {}
    for c in curves:
        out.setdefault((c.dictionary, c.layers), []).append(c)
    return out


def section(inputs: Inputs) -> Section:
    """`curves_{dictionary}_L{layers}.png` per dictionary and layer, shown in the index."""
    paths, contents, shown = [], [], []
    for (name, layers), group in _groups(inputs.curves).items():
        span = "-".join(map(str, layers))
        where = f"layer{'s' if len(layers) > 1 else ''} {','.join(map(str, layers))}"
        fig = curves_figure(group, f"{name}, {where}: training curves")
        path = atomic.save_figure(fig, inputs.out_dir / f"curves_{name}_L{span}.png")
        paths.append(path)
        contents.append(
            f"- [{path.name}]({path.name}): {name} at {where}: loss terms, L0 and dead "
            "fraction against training tokens, a line per sweep point and seed."
        )
        shown.append(f"![{name} {where}]({path.name})")
    if not paths:
        return Section(contents=("- training curves: no trained dictionary logged one.",))
    body = "## Training curves\n\n" + "\n\n".join(shown)
    return Section(tuple(paths), tuple(contents), body)
