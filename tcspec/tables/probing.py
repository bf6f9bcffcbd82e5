"""The sparse-probing table: each dictionary's k-sparse probes against the probe on the raw
activations of its input hook (the reference row), mean test accuracy over the one-vs-rest
class tasks (`tcspec.evaluation.probing`); the per-class rows come from the probe tasks."""

from __future__ import annotations

import pandas as pd

from tcspec.tables.format import Column, fixed, integer, text
from tcspec.tables.section import Inputs, Section, table_section

COLUMNS = (
    Column("probe", "probe", text, numeric=False),
    Column("layer", "layer", integer),
    Column("hook", "hook", text, numeric=False),
    Column("k", "k", text, numeric=False),
    Column("accuracy", "accuracy %", fixed(1, 100.0)),
    Column("worst", "worst class %", fixed(1, 100.0)),
    Column("classes", "classes", integer),
)
LEGEND = (
    "Balanced one-vs-rest tasks, one per class (chance 50%): a logistic probe on the k "
    "latents whose mean activation differs most between the sides (training texts), or, "
    "in the reference rows, on all raw activations of the dictionary's input hook; texts "
    "mean-pooled over their tokens (SAEBench's sparse probing). Accuracy: mean test accuracy "
    "over the classes; worst: the lowest class's."
)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-class rows (`probing.csv` of every probe task) -> one row per probe: the raw
    reference once per (layer, hook), then each dictionary's k-sparse probes."""
    rows = []
    for (layer, hook), g in frame[frame["probe"] == "raw"].groupby(["layer", "hook"]):
        per_class = g.groupby("class")["accuracy"].mean()  # every task probed the same texts
        rows.append({"probe": "raw activations (reference)", "layer": layer, "hook": hook,
                     "k": "all", "accuracy": per_class.mean(), "worst": per_class.min(),
                     "classes": len(per_class)})  # fmt: skip
    sparse = frame[frame["probe"] == "sparse"]
    for (name, member, layer, hook, k), g in sparse.groupby(
        ["dictionary", "member", "layer", "hook", "k"], sort=False
    ):
        rows.append({"probe": f"{name} {member}", "layer": layer, "hook": hook, "k": str(int(k)),
                     "accuracy": g["accuracy"].mean(), "worst": g["accuracy"].min(),
                     "classes": len(g)})  # fmt: skip
    return pd.DataFrame(rows, columns=[c.key for c in COLUMNS])


def section(inputs: Inputs) -> Section:
    """`sparse_probing.{md,tex,csv}`."""
    frames = list(inputs.extra.get("sparse_probing") or ())
    caption = f"Sparse probing: {inputs.title}"
    if not frames:
        return Section(contents=("- sparse_probing: not built yet (needs a `probe` section).",))
    table = summary(pd.concat(frames, ignore_index=True))
    about = "k-sparse probes on dictionary latents against the raw-activation probe."
    columns, notes = list(COLUMNS), [LEGEND]
    return table_section(inputs, "sparse_probing", table, columns, table, caption, notes, about)
