"""The Matryoshka prefix table: FVU of each nested prefix of every Matryoshka dictionary
(one row per dictionary x layer x sweep point x prefix width; the last width is d_sae)."""

from __future__ import annotations

import pandas as pd

from tcspec.prefixes import PREFIX_FVU
from tcspec.tables.format import Column, fixed, integer, text
from tcspec.tables.records import KIND_LABEL, layer_label
from tcspec.tables.section import Inputs, Section, write_table

COLUMNS = (
    Column("dictionary", "dictionary", text, numeric=False),
    Column("kind", "kind", lambda v: KIND_LABEL.get(str(v), text(v)), numeric=False),
    Column("layer", "layer", text, numeric=False),
    Column("sweep", "point", text, numeric=False),
    Column("l0", "L0", fixed(1)),
    Column("width", "prefix width", integer),
    Column("fvu", "FVU", fixed(4)),
)

LEGEND = (
    "FVU of the first w features alone (z from the whole dictionary, the other features "
    "zeroed), on the dictionary's own hooks; the last width is the whole dictionary."
)


def prefix_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long form of the `fvu_prefix_{w}` metrics: one row per record and width, widths
    ascending within a record (records without them are left out)."""
    cols = [c for c in df.columns if c.startswith(PREFIX_FVU)]
    rows = []
    for _, r in df.iterrows():
        widths = sorted(int(c[len(PREFIX_FVU) :]) for c in cols if not pd.isna(r[c]))
        for w in widths:
            rows.append(
                {
                    "dictionary": r["dictionary"],
                    "kind": r["kind"],
                    "layer": layer_label(r),
                    "sweep": r["sweep"],
                    "l0": r["l0"],
                    "width": w,
                    "fvu": r[f"{PREFIX_FVU}{w}"],
                }
            )
    return pd.DataFrame(rows, columns=[c.key for c in COLUMNS])


def section(inputs: Inputs) -> Section:
    """`matryoshka_prefixes.{md,tex,csv}`."""
    table = prefix_table(inputs.records)
    caption = f"Matryoshka prefixes: {inputs.title}"
    notes = [LEGEND] if len(table) else ["No Matryoshka dictionaries were evaluated.", LEGEND]
    paths, md = write_table(
        inputs.out_dir, "matryoshka_prefixes", table, list(COLUMNS), table, caption, notes
    )
    line = (
        "- [matryoshka_prefixes.md](matryoshka_prefixes.md) (.tex, .csv): FVU of every "
        "Matryoshka dictionary's nested prefixes."
    )
    return Section(tuple(paths), (line,), f"## {caption}\n\n{md}")
