"""Inline SVG charts of the feature pages: a histogram, and the colours of the activation
bands examples are sampled from.
"""

from __future__ import annotations

import numpy as np

from tcspec.features.html_page import esc


def svg_histogram(
    counts: np.ndarray,
    edges: np.ndarray,
    *,
    xlabel: str,
    width: int = 520,
    height: int = 170,
    colors: list[str] | None = None,
    marker: float | None = None,
) -> str:
    """An inline SVG bar chart of `counts` over bin `edges` (len(counts) + 1), with x ticks
    at 5 evenly spaced edges, an optional vertical marker and optional bar colours."""
    counts = np.asarray(counts, dtype=float)
    edges = np.asarray(edges, dtype=float)
    left, right, top, bottom = 44, 24, 8, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0
    ymax = counts.max() if counts.size and counts.max() > 0 else 1.0

    def x(v: float) -> float:
        return left + (v - lo) / span * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']  # fmt: skip
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        bh = c / ymax * h
        fill = colors[i] if colors else "#f76707"
        parts.append(
            f'<rect x="{x(edges[i]):.1f}" y="{top + h - bh:.1f}" '
            f'width="{max(x(edges[i + 1]) - x(edges[i]) - 1, 0.8):.1f}" height="{bh:.1f}" '
            f'fill="{fill}"><title>{esc(f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(c)}")}'
            f"</title></rect>"
        )
    axis = "#98a2b3"
    parts.append(
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="{axis}"/>'
    )
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="{axis}"/>')
    for v in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{x(v):.1f}" y="{top + h + 14}" text-anchor="middle">{v:.3g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 9}" text-anchor="end">{int(ymax)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + h}" text-anchor="end">0</text>')
    parts.append(
        f'<text x="{left + w / 2}" y="{height - 3}" text-anchor="middle">{esc(xlabel)}</text>'
    )
    if marker is not None and lo <= marker <= hi:
        parts.append(
            f'<line x1="{x(marker):.1f}" y1="{top}" x2="{x(marker):.1f}" y2="{top + h}" '
            f'stroke="#1c64f2" stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


BAND_COLORS = ["#ffd8a8", "#ffc078", "#ffa94d", "#ff922b", "#f76707", "#e8590c", "#d9480f"]


def band_colors(n_bins: int, bands: int) -> list[str]:
    palette = BAND_COLORS[-bands:] if bands <= len(BAND_COLORS) else BAND_COLORS
    return [palette[min(b * bands // n_bins, len(palette) - 1)] for b in range(n_bins)]
