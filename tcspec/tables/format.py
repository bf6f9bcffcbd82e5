"""Cell formatting and table rendering: Markdown and booktabs LaTeX from a frame of raw
values and its `Column`s (CSV cells stay raw; these are the shown ones)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

MISSING = "–"
"""How a missing or non-finite number is shown in Markdown (`--` in LaTeX)."""


def num(v: object) -> float:
    """A float, NaN for anything missing or not a finite number."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def fixed(decimals: int, scale: float = 1.0) -> Callable[[object], str]:
    """A formatter with ``decimals`` decimals of ``v * scale``."""

    def fmt(v: object) -> str:
        x = num(v)
        return MISSING if math.isnan(x) else f"{x * scale:.{decimals}f}"

    return fmt


def spread(fmt: Callable[[object], str]) -> Callable[[object], str]:
    """`fmt` for a value, or `mean ± std` for a `(mean, std)` pair (see
    `tcspec.tables.seeds.with_spread`)."""

    def show(v: object) -> str:
        if isinstance(v, tuple):
            return f"{fmt(v[0])} ± {fmt(v[1])}"
        return fmt(v)

    return show


def general(v: object) -> str:
    x = num(v)
    return MISSING if math.isnan(x) else f"{x:.3g}"


def integer(v: object) -> str:
    x = num(v)
    return MISSING if math.isnan(x) else f"{int(round(x))}"


def text(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return str(v)


def short_g(x: float) -> str:
    """Two significant digits, short exponent: `2.5e-05` -> `2.5e-5`."""
    return f"{x:.2g}".replace("e-0", "e-").replace("e+0", "e")


@dataclass(frozen=True)
class Column:
    """A column of a written table: raw key (CSV), display label, display format."""

    key: str
    label: str
    fmt: Callable[[object], str]
    numeric: bool = True


def display(df: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """`df`'s columns formatted as strings under their display labels."""
    return pd.DataFrame({c.label: [c.fmt(v) for v in df[c.key]] for c in columns})


def markdown(df: pd.DataFrame, columns: Sequence[Column]) -> str:
    if df.empty:
        return "_(no rows)_"
    align = tuple("right" if c.numeric else "left" for c in columns)
    return display(df, columns).to_markdown(index=False, disable_numparse=True, colalign=align)


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
    "±": r"$\pm$",
}


def tex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s).replace(MISSING, "--")


def latex(df: pd.DataFrame, columns: Sequence[Column], caption: str, label: str) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`), cells as in Markdown."""
    shown = display(df, columns)
    align = "".join("r" if c.numeric else "l" for c in columns)
    lines = [
        r"\begin{table}",
        r"\centering",
        rf"\caption{{{tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(tex_escape(c.label) for c in columns) + r" \\",
        r"\midrule",
        *(" & ".join(tex_escape(v) for v in row) + r" \\" for row in shown.itertuples(False)),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
