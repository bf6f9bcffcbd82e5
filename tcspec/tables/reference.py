"""A published table of `tcspec.tables.paper.REFERENCES`, written like ours."""

from __future__ import annotations

import pandas as pd

from tcspec.tables.format import Column, fixed, general, text
from tcspec.tables.paper import Reference
from tcspec.tables.section import Inputs, Section, table_section


def _columns(df: pd.DataFrame) -> list[Column]:
    """Text as is, `lambda` in 3 significant digits, floats with their own decimals (<= 4)."""
    columns = []
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c])
        fmt = text
        if c == "lambda":
            fmt = general
        elif numeric and pd.api.types.is_float_dtype(df[c]):
            decimals = max(len(f"{v}".split(".")[-1]) if "." in f"{v}" else 0 for v in df[c])
            fmt = fixed(min(decimals, 4))
        columns.append(Column(c, c, fmt, numeric=numeric))
    return columns


def section(inputs: Inputs) -> Section:
    """`reference_{key}.{md,tex,csv}` of the build's reference."""
    ref: Reference = inputs.reference
    df = ref.frame()
    caption = f"Published ({ref.citation})"
    notes = [
        f"{ref.description}. Model: {ref.model}; layer(s): {', '.join(map(str, ref.layers))}.",
        *ref.notes,
    ]
    name = f"reference_{ref.key}"
    about = f"{caption}: {ref.description}."
    return table_section(inputs, name, df, _columns(df), df, caption, notes, about)
