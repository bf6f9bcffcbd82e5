"""What every attribution task's folder must hold for its graphs' feature nodes."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from tcspec import layout

CT_FEATURE_KEYS = {
    "transcoder_id", "index", "examples_quantiles", "top_logits", "bottom_logits", "act_min",
    "act_max", "quantile_values", "histogram", "activation_frequency",
}  # fmt: skip
"""circuit-tracer's feature file (`frontend/feature_models.py`, FIELD.md section 9)."""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium)"
)


@contextmanager
def browser():
    """Headless Chromium (the system's), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def click_every_feature(page, html: Path) -> int:
    """Click each feature node drawn in the viewer ``html``: its card shows examples and its
    dashboard link resolves to a file. Returns the number of features clicked."""
    page.goto(html.as_uri())
    page.wait_for_selector("#nodes .node")
    ids = page.eval_on_selector_all("#nodes .node.feature", "es => es.map(e => e.dataset.id)")
    for node_id in ids:
        page.click(f'#nodes .node[data-id="{node_id}"] circle')
        assert page.locator("#examples .example").count() > 0, node_id
        href = page.get_attribute("#dashboard", "href")
        assert (html.parent / href).resolve().is_file(), href
    return len(ids)


def read_cards(out: Path) -> dict:
    """The viewer's feature cards of an attribution task (``layout.GRAPH_CARDS``)."""
    text = (out / layout.GRAPH_PAGES / layout.GRAPH_CARDS).read_text()
    return json.loads(text.removeprefix("window.TCSPEC_CARDS = ").rstrip().removesuffix(";"))


def assert_pages_complete(out: Path) -> None:
    """Every feature node of every graph of an attribution task links a dashboard page that
    exists, has a card with examples in cards.js, and a circuit-tracer feature file."""
    cards = read_cards(out)
    for g in json.loads((out / layout.GRAPH_METADATA).read_text())["graphs"]:
        data = json.loads((out / f"{g['slug']}.json").read_text())
        scan = data["metadata"]["scan"].removeprefix("./data/")
        features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
        assert features
        for n in features:
            layer, f, _ = n["node_id"].split("_")
            page = layout.graph_pages(out, int(layer)) / layout.DASHBOARD / "features"
            assert (page / f"{f}.html").is_file()
            card = cards[f"{layer}_{f}"]
            assert card["examples_quantiles"][0]["examples"] and card["label"]
            page = json.loads((out / scan / f"{n['feature']}.json").read_text())
            assert set(page) >= CT_FEATURE_KEYS and page["index"] == int(f)
