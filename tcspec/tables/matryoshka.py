"""The Matryoshka prefix table: FVU of each nested prefix of every Matryoshka dictionary
(one row per dictionary x layer x sweep point x prefix width; the last width is d_sae)."""

from __future__ import annotations

import pandas as pd

from tcspec.evaluation.prefixes import PREFIX_FVU
from tcspec.tables.format import Column, fixed, integer, spread, text
from tcspec.tables.records import KIND_COLUMN, layer_label
from tcspec.tables.section import Inputs, Section, table_section
from tcspec.tables.seeds import N_SEEDS, SPREAD_NOTE, STD, has_spread, pool_seeds, with_spread

COLUMNS = (
    Column("dictionary", "dictionary", text, numeric=False),
    KIND_COLUMN,
    Column("layer", "layer", text, numeric=False),
    Column("sweep", "point", text, numeric=False),
    Column(N_SEEDS, "seeds", integer),
    Column("l0", "L0", spread(fixed(1))),
    Column("width", "prefix width", integer),
    Column("fvu", "FVU", spread(fixed(4))),
)

LEGEND = (
    "FVU of the first w features alone (z from the whole dictionary, the other features "
    "zeroed), on the dictionary's own hooks; the last width is the whole dictionary."
)


def prefix_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long form of the `fvu_prefix_{w}` metrics: one row per sweep point (its seeds pooled:
    mean, `_std`, `n_seeds`) and width, widths ascending within a point (records without
    them are left out)."""
    df = pool_seeds(df)
    cols = [c for c in df.columns if c.startswith(PREFIX_FVU) and not c.endswith(STD)]
    rows = []
    for _, r in df.iterrows():
        widths = sorted(int(c[len(PREFIX_FVU) :]) for c in cols if not pd.isna(r[c]))
        for w in widths:
            fvu = f"{PREFIX_FVU}{w}"
            rows.append(
                {
                    "dictionary": r["dictionary"],
                    "kind": r["kind"],
                    "layer": layer_label(r),
                    "sweep": r["sweep"],
                    N_SEEDS: r[N_SEEDS],
                    "l0": r["l0"],
                    "width": w,
                    "fvu": r[fvu],
                    "l0" + STD: r["l0" + STD],
                    "fvu" + STD: r[fvu + STD],
                }
            )
    keys = [c.key for c in COLUMNS] + ["l0" + STD, "fvu" + STD]
    return pd.DataFrame(rows, columns=keys)


def section(inputs: Inputs) -> Section:
    """`matryoshka_prefixes.{md,tex,csv}`."""
    table = prefix_table(inputs.records)
    caption = f"Matryoshka prefixes: {inputs.title}"
    notes = [LEGEND] if len(table) else ["No Matryoshka dictionaries were evaluated.", LEGEND]
    seeded = has_spread(table)
    columns = [c for c in COLUMNS if c.key != N_SEEDS or seeded]
    notes += [SPREAD_NOTE] if seeded else []
    shown = with_spread(table, ["l0", "fvu"])
    about = "FVU of every Matryoshka dictionary's nested prefixes."
    name = "matryoshka_prefixes"
    return table_section(inputs, name, shown, columns, table, caption, notes, about)
