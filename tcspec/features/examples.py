"""An example as the feature pages show it: its window's token strings with the feature's
activation at each, and its HTML line (tokens shaded by activation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tcspec.features.html_page import fmt, token_text


@dataclass(frozen=True)
class Example:
    """One example: its window's token strings, the feature's activation at each (NaN where
    unknown), the index of the example token, its value, and where it was drawn from."""

    tokens: list[str]
    acts: list[float]
    center: int
    value: float
    section: str
    band: int


def token_of(vocab: list[str], i: int) -> str:
    return vocab[int(i)] if 0 <= int(i) < len(vocab) else f"<{int(i)}>"


def example_rows(frame: pd.DataFrame, vocab: list[str]) -> list[Example]:
    """Examples (rows of an examples.parquet frame) with their token strings."""
    out = []
    for r in frame.itertuples(index=False):
        out.append(
            Example(
                [token_of(vocab, t) for t in r.tokens],
                [float(a) for a in r.acts],
                int(r.center),
                float(r.value),
                str(r.section),
                int(r.band),
            )
        )
    return out


def render_example(ex: Example, scale: float, values: bool = True) -> str:
    """One example line: tokens shaded by activation / scale, the example token outlined;
    with `values`, the activation in a tooltip per token and the value on the left."""
    spans = []
    for i, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
        alpha = 0.0 if math.isnan(a) or scale <= 0 else min(max(a / scale, 0.0), 1.0)
        style = f' style="background:rgba(247,103,7,{alpha:.2f})"' if alpha > 0.01 else ""
        tip = f' title="{fmt(a)}"' if values and not math.isnan(a) else ""
        cls = "t c" if i == ex.center else "t"
        spans.append(f'<span class="{cls}"{style}{tip}>{token_text(tok)}</span>')
    val = f'<span class="val">{fmt(ex.value)}</span>' if values else ""
    return f'<div class="ex">{val}<span class="txt">{"".join(spans)}</span></div>'
