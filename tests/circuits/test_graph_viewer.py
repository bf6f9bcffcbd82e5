"""The attribution graph viewer, rendered by headless Chromium from disk (no server).

Needs Debian's chromium (`apt-get update && apt-get install -y chromium`); the Chromium
tests are skipped without it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.circuits.graph import GraphConfig, attribution_graph, write_viewer
from tcspec.circuits.graph.viewer import viewer_data
from tcspec.dictionaries.coders import Coder, CoderConfig
from tests.pages_check import browser

torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCRIPT = "</script><script>document.title='pwned'</script>"
D, SEQ = 16, 6

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium)"
)


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}", *extra, url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def graph():
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, d_head=8, n_heads=2, d_mlp=32,
                                  d_vocab=30, n_ctx=16, act_fn="gelu", normalization_type="LN",
                                  seed=0)  # fmt: skip
    model = HookedTransformer(cfg).eval()
    coders = {}
    for layer in (0, 1):
        c = CoderConfig(kind="transcoder", d_in=D, d_out=D, d_sae=24, layer=layer,
                        in_hook=f"blocks.{layer}.ln2.hook_normalized",
                        out_hook=f"blocks.{layer}.hook_mlp_out")  # fmt: skip
        coders[layer] = Coder(c, seed=layer)
    tokens = torch.randint(0, 30, (SEQ,), generator=torch.Generator().manual_seed(0))
    g = attribution_graph(model, coders, tokens, GraphConfig(), prompt="p")
    strs = list(g.token_strs)
    strs[2] = SCRIPT
    return dataclasses.replace(g, token_strs=tuple(strs))


PAGES = {"0": "../dash/L0/features/{feature}.html", "1": "../dash/L1/features/{feature}.html"}


def cards_of(graph) -> dict:
    """A feature card (circuit-tracer's feature page, a label) per feature of ``graph``."""
    cards = {}
    for li, _, f in graph.features.tolist():
        example = {"tokens": ["a", " b", " c"], "tokens_acts_list": [0.0, 1.5, 0.2],
                   "train_token_ind": 1, "is_repeated_datapoint": False}  # fmt: skip
        cards[f"{li}_{f}"] = {
            "index": f, "label": f"auto {li}.{f}", "activation_frequency": 0.01,
            "act_max": 2.0, "histogram": [3.0, 2.0, 1.0], "top_logits": [" x"],
            "bottom_logits": [" y"],
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": [example]}],
        }  # fmt: skip
    return cards


@pytest.fixture(scope="module")
def page(graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer")
    (tmp / "cards.js").write_text("window.TCSPEC_CARDS = " + json.dumps(cards_of(graph)) + ";")
    path = write_viewer(graph, tmp / "graph.html", PAGES, "cards.js", slug="g")
    return tmp, path


def expected_visible(graph) -> int:
    data = viewer_data(graph)
    nt = graph.config.node_threshold
    return sum(
        n["feature_type"] in ("embedding", "logit") or n["influence"] <= nt for n in data["nodes"]
    )


def test_page_is_self_contained(page):
    html = page[1].read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script src" not in html
    assert SCRIPT not in html and "\\u003c/script\\u003e" in html  # data cannot close its tag


@needs_chromium
def test_viewer_draws_the_nodes(page, graph):
    tmp, path = page
    dom = chromium(path.as_uri(), tmp, "--dump-dom").stdout
    n = expected_visible(graph)
    assert n > graph.n_pos + graph.n_logits  # some features and errors are drawn
    m = re.search(r'<span id="count">(\d+) nodes, (\d+) links</span>', dom)
    assert m and int(m.group(1)) == n and int(m.group(2)) > 0
    assert f"<title>Attribution graph: {n} nodes</title>" in dom
    assert len(re.findall(r'class="node (?:feature|error|embedding|logit)', dom)) == n
    assert re.search(r'class="label">auto \d\.\d+</text>', dom)  # features carry labels
    assert dom.count('class="edge') == int(m.group(2))
    assert "pwned" not in dom.split("</title>")[0]
    assert "&lt;/script&gt;&lt;script&gt;document.title='pwned'" in dom  # shown as text


@needs_chromium
def test_clicked_node_lists_its_edges_and_dashboard(page, graph):
    tmp, path = page
    data = viewer_data(graph)
    feature = next(x for x in data["nodes"] if x["feature_type"] == "cross layer transcoder"
                   and x["influence"] <= graph.config.node_threshold)  # fmt: skip
    dom = chromium(path.as_uri() + f"?node={feature['node_id']}", tmp, "--dump-dom").stdout
    assert re.search(r"<h4>incoming \(\d+\)</h4>", dom) and "<h4>outgoing (" in dom
    layer, f, _ = feature["node_id"].split("_")
    assert f'href="../dash/L{layer}/features/{f}.html">feature dashboard</a>' in dom
    assert 'class="node feature sel' in dom
    assert f'id="card-title">auto {layer}.{f}</h3>' in dom  # the card's automatic label


@needs_chromium
def test_screenshot_of_the_viewer(page):
    tmp, path = page
    png = tmp / "graph.png"
    chromium(path.as_uri(), tmp, "--hide-scrollbars", "--window-size=1200,800",
             f"--screenshot={png}")  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@needs_chromium
def test_pin_group_relabel_survive_saving_and_loading_the_json(page, graph):
    """Click a feature, rename it, pin it and a second one, group both: the saved graph JSON
    holds the state as circuit-tracer's qParams (the name as the features' clerp), and a
    fresh browser that opens that JSON shows the same pins, supernode and label."""
    tmp, path = page
    with browser() as b:
        view = b.new_page()
        view.goto(path.as_uri())
        first, second = view.eval_on_selector_all(
            "#nodes .node.feature", "es => es.slice(0, 2).map(e => e.dataset.id)"
        )
        view.hover(f'#nodes .node[data-id="{first}"] circle')
        assert view.locator("#nodes .node.dim").count() > 0  # off its paths: dimmed
        view.click(f'#nodes .node[data-id="{first}"] circle')
        assert view.locator("#examples .example").count() == 1
        view.fill("#relabel", "year feature")
        view.press("#relabel", "Enter")
        view.click("#pin")
        view.click(f'#nodes .node[data-id="{second}"] circle', modifiers=["Shift"])
        for box in view.locator("#pins input").all():
            box.check()
        view.fill("#group-name", "years")
        view.click("#group")
        assert "years" in view.inner_text("#pins .supernode")
        with view.expect_download() as got:
            view.click("#save")
        saved = tmp / "saved.json"
        got.value.save_as(saved)
        fresh = b.new_context().new_page()  # no stored state
        fresh.goto(path.as_uri())
        assert fresh.locator("#pins .supernode").count() == 0
        fresh.set_input_files("#open", str(saved))
        fresh.wait_for_selector("#pins .supernode")
        assert "year feature" in fresh.inner_text("#pins .supernode")
        assert fresh.locator("#nodes .node.pinned").count() == 2
        labels = fresh.eval_on_selector_all("#nodes text.label", "es => es.map(e => e.textContent)")
    data = json.loads(saved.read_text())
    q = data["qParams"]
    assert q["pinnedIds"] == [first, second] and q["supernodes"] == [["years", first, second]]
    layer, f, _ = first.split("_")
    renamed = [n for n in data["nodes"] if n["node_id"].startswith(f"{layer}_{f}_")]
    assert renamed and all(n["clerp"] == "year feature" for n in renamed)
    assert "viewer" not in data and set(data["links"][0]) == {"source", "target", "weight"}
    assert "year feature" in labels
