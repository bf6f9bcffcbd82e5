"""The ground-truth table and plot: dictionaries trained on a synthetic source, scored
against its planted features (`tcspec.evaluation.ground_truth`: MCC, uniqueness, per-latent
precision / recall / F1), beside L0, FVU and dead %."""

from __future__ import annotations

import pandas as pd

from tcspec import atomic
from tcspec.tables.format import Column, fixed, integer, text
from tcspec.tables.records import KIND_COLUMN, kind_marker
from tcspec.tables.section import Inputs, Section, table_section

COLUMNS = (
    Column("dictionary", "dictionary", text, numeric=False),
    KIND_COLUMN,
    Column("sweep", "point", text, numeric=False),
    Column("d_sae", "d_sae", integer),
    Column("l0", "L0", fixed(2)),
    Column("true_l0", "true L0", fixed(2)),
    Column("fvu", "FVU", fixed(3)),
    Column("dead_fraction", "dead %", fixed(1, 100.0)),
    Column("mcc", "MCC", fixed(3)),
    Column("mcc_random", "MCC random", fixed(3)),
    Column("uniqueness", "unique", fixed(3)),
    Column("precision", "precision", fixed(3)),
    Column("recall", "recall", fixed(3)),
    Column("f1", "F1", fixed(3)),
)

LEGEND = (
    "Scored against the source's planted features (SAELens SynthSAEBench's definitions): "
    "MCC, the mean |cos| of decoder rows and true feature directions under the one-to-one "
    "matching that maximises it (Hungarian); MCC random, the same for as many random "
    "directions (the chance level); unique, distinct best-matching true features "
    "per latent; precision / recall / F1, each latent as a detector (z > 0) of its "
    "best-|cos| true feature over the eval samples, averaged over all latents (dead ones "
    "count 0). A transcoder (and an SAE on the output hook) is matched against the map's "
    "output directions. True L0: firing true features per sample."
)
PLOT = "ground_truth.png"


def truth_table(df: pd.DataFrame) -> pd.DataFrame:
    """The records that carry ground-truth scores (synthetic sources), table columns only."""
    if "mcc" not in df:
        return pd.DataFrame(columns=[c.key for c in COLUMNS] + ["family"])
    rows = df[df["mcc"].notna()]
    return rows[[c.key for c in COLUMNS] + ["family"]].reset_index(drop=True)


def truth_figure(table: pd.DataFrame, title: str):
    """F1 and MCC against L0 (log x), one curve per family (a matplotlib Figure)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(10.0, 4.4), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for i, (fam, g) in enumerate(table.groupby("family", sort=False)):
        g = g[g["l0"] > 0].sort_values("l0")
        marker = kind_marker(g["kind"].iloc[0]) if len(g) else "o"
        for ax, metric in zip(axes, ("f1", "mcc")):
            ax.plot(g["l0"], g[metric], marker=marker, color=f"C{i % 10}", label=fam, lw=1.6)
    for ax, name in zip(axes, ("F1 (latents as feature detectors)", "MCC (decoder vs truth)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("mean L0 (log scale)")
        ax.set_ylabel(name)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.35)
    if not table.empty:
        axes[0].axvline(table["true_l0"].mean(), color="black", ls="--", lw=1, label="true L0")
    axes[0].legend(fontsize=7, loc="lower left", framealpha=0.9)
    fig.suptitle(title, fontsize=11)
    return fig


def section(inputs: Inputs) -> Section:
    """`ground_truth.{md,tex,csv}` and `ground_truth.png`."""
    table = truth_table(inputs.records)
    caption = f"Ground truth: {inputs.title}"
    notes = [LEGEND] if len(table) else ["No dictionary was trained on a synthetic source."]
    shown = table.drop(columns="family")
    about = (
        "dictionaries scored against a synthetic source's planted features: MCC, "
        "precision / recall / F1."
    )
    written = table_section(
        inputs, "ground_truth", shown, list(COLUMNS), shown, caption, notes, about
    )
    if not len(table):
        return written
    fig = truth_figure(table, f"{inputs.title}: recovery of the planted features vs L0")
    return Section(
        (*written.paths, atomic.save_figure(fig, inputs.out_dir / PLOT)),
        (*written.contents, f"- [{PLOT}]({PLOT}): F1 and MCC against L0, one curve per family."),
        f"{written.body}\n\n![ground truth]({PLOT})",
    )
