"""Dashboards and the packet, rendered by headless Chromium.

Needs Debian's chromium (`apt-get update && apt-get install -y chromium`); skipped without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.features.dashboards import build_dashboard
from tcspec.features.examples import example_rows
from tcspec.features.files import load_stats, save_stats
from tcspec.features.packet import PacketItem, render_packet
from tcspec.features.stats import StatsConfig, feature_statistics

torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
V, D, T, ROWS, F = 30, 8, 12, 40, 24
SCRIPT = "<script>document.title='pwned'</script>"
PAGES = [2, 3, 12, 20]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium)"
)


def chromium(url: str, tmp: Path, *extra: str) -> str:
    """Load `url` in headless Chromium; returns the DOM after scripts ran."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}", *extra, "--dump-dom", url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    g = torch.Generator().manual_seed(0)
    coder = Coder(CoderConfig(kind="transcoder", d_in=D, d_out=D, d_sae=F), seed=0)
    emb = torch.randn(V, D, generator=g)
    tokens = np.random.default_rng(0).integers(1, V, size=(ROWS, T)).astype(np.int32)
    tokens[:, 0] = 0
    cfg = StatsConfig(top_k=6, bands=3, per_band=2, context_window=3, batch_contexts=8)
    s = feature_statistics(coder, lambda t: emb[t], tokens, V, cfg, lambda c, n: PAGES)
    s.tensors["logit_top_ids"] = torch.arange(3).repeat(F, 1)  # token 1 is the script
    s.tensors["logit_top_vals"] = torch.ones(F, 3)
    s.meta = {"label": "tc-L0-demo", "kind": "transcoder", "layer": 0, "live_threshold": 1e-4}
    vocab = ["<bos>", SCRIPT] + [f"w{i}" for i in range(2, V)]
    vocab[5] = "a\nb"
    save_stats(s, tmp / "stats", vocab)
    index = build_dashboard(tmp / "stats", tmp / "site")
    return tmp, index, s


def test_site_has_an_index_and_one_page_per_chosen_feature(site):
    tmp, index, _ = site
    assert index.name == "index.html"
    assert sorted(p.stem for p in (tmp / "site" / "features").glob("*.html")) == sorted(
        map(str, PAGES)
    )
    html = (tmp / "site" / "features" / "3.html").read_text()
    assert "<script>" not in html  # feature pages run no script at all
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert "a\u21b5b" in html or "a\nb" not in html  # newlines shown as a visible mark


@needs_chromium
def test_feature_page_renders_examples_and_escapes_tokens(site):
    tmp, _, s = site
    f = 3
    dom = chromium((tmp / "site" / "features" / f"{f}.html").as_uri(), tmp)
    n_examples = int((s.examples["feature"] == f).sum())
    assert dom.count('class="ex"') == n_examples > 0
    assert "<h1>Feature 3</h1>" in dom
    assert "<title>tc-L0-demo: feature 3</title>" in dom  # the token did not run
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert len(re.findall(r"<script", dom)) == 0
    assert "<svg" in dom and "Top logits" in dom and "band 3 of 3" in dom


@needs_chromium
def test_index_search_box_filters_rows(site):
    tmp, index, _ = site
    dom = chromium(index.as_uri(), tmp)
    assert dom.count("<tr data-id=") == len(PAGES)
    assert "display: none" not in dom and f"{len(PAGES)} features" in dom
    dom = chromium(index.as_uri() + "?q=2", tmp)  # ids starting with 2: 2 and 20
    hidden = re.findall(r'<tr data-id="(\d+)" style="display: none;">', dom)
    assert sorted(hidden, key=int) == ["3", "12"]
    assert "2 match" in dom
    dom = chromium(index.as_uri() + "?q=7", tmp)
    assert "no page for feature 7" in dom
    assert "log10 feature density" in dom


@needs_chromium
def test_packet_renders_without_values(site):
    tmp, _, _ = site
    stats = load_stats(tmp / "stats")
    items = [
        PacketItem(
            f"F{i:02d}", example_rows(stats.examples[stats.examples["feature"] == f], stats.vocab)
        )
        for i, f in enumerate(PAGES, start=1)
    ]
    path = tmp / "packet.html"
    path.write_text(render_packet(items))
    dom = chromium(path.as_uri(), tmp)
    assert dom.count('class="card" id="F') == len(PAGES)
    assert 'class="val"' not in dom and ' title="' not in dom
    assert "<title>Blind feature rating</title>" in dom


@needs_chromium
def test_screenshot_of_a_feature_page(site):
    tmp, _, _ = site
    png = tmp / "page.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars",
        "--window-size=1200,900", f"--screenshot={png}",
        (tmp / "site" / "features" / "3.html").as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
