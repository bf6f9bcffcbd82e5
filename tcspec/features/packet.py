"""The blind rating packet: each feature's examples without activation values or names
(`tcspec.features.study` draws and scores it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tcspec.features.examples import Example, render_example
from tcspec.features.html_page import esc, page


@dataclass(frozen=True)
class PacketItem:
    """One feature of the blind packet: its anonymous id and the examples shown."""

    id: str
    examples: list[Example]


PACKET_HELP = (
    "For each feature below, read its examples (highlighting shows where and how strongly "
    "the feature fires; the outlined token is the example's token; shading is relative "
    "within a feature) and fill one row of ratings.csv: <b>rating</b> yes if a single "
    "human-understandable property explains the examples, maybe if one partly does, no "
    "otherwise; <b>context_free</b> 1 if the feature fires on a token regardless of its "
    "context (only for rating yes), else 0; <b>note</b> your description (optional)."
)


def render_packet(items: list[PacketItem]) -> str:
    """The blind rating packet: examples without activation values or names."""
    cards = []
    for it in items:
        scale = max((a for e in it.examples for a in e.acts if not math.isnan(a)), default=0.0)
        lines = "".join(render_example(e, scale, values=False) for e in it.examples)
        cards.append(f'<div class="card" id="{esc(it.id)}"><h2>{esc(it.id)}</h2>{lines}</div>')
    body = (
        f"<h1>Blind feature rating</h1>"
        f'<div class="card">{PACKET_HELP}<div class="sub">{len(items)} features.</div></div>'
        + "".join(cards)
    )
    return page("Blind feature rating", body)
