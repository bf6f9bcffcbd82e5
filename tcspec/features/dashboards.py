"""Static HTML feature dashboards (no server: open from disk).

A dashboard site, built from a feature-statistics folder (`tcspec.features.files.save_stats`):

    index.html           the dictionary's summary, a histogram of log10 feature density,
                         and a table of the features with pages, filtered by a search box
                         (`index.html?q=17` opens it filtered)
    features/<f>.html    one feature: its numbers, activation histogram, top and bottom
                         logits (and de-embedding), top examples and examples per band

Every piece of token text is HTML-escaped (a token `<script>` shows as text). Charts are
inline SVG; the only script is the search box's.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tcspec.atomic import write_text
from tcspec.features.charts import band_colors, svg_histogram
from tcspec.features.examples import Example, example_rows, render_example, token_of
from tcspec.features.html_page import esc, fmt, page, token_text
from tcspec.vocab import LIVE_THRESHOLD, is_live, never_fires


def build_dashboard(stats_dir: Path, out_dir: Path, title: str | None = None) -> Path:
    """Write the dashboard site of the statistics in `stats_dir` into `out_dir`; returns
    the index path. Pages are made for the features listed in its features.json `pages`."""
    from tcspec.features.files import load_stats

    stats = load_stats(stats_dir)
    t, meta, vocab = stats.tensors, stats.meta, stats.vocab
    title = title or meta.get("label", "dictionary")
    out_dir = Path(out_dir)
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    pages = sorted(int(f) for f in meta["pages"])
    by_feature = dict(tuple(stats.examples.groupby("feature"))) if len(stats.examples) else {}
    for i, f in enumerate(pages):
        prev_f = pages[i - 1] if i > 0 else None
        next_f = pages[i + 1] if i + 1 < len(pages) else None
        ex = by_feature.get(f, stats.examples.iloc[:0])
        text = _feature_page(f, t, meta, vocab, example_rows(ex, vocab), title, prev_f, next_f)
        write_text(out_dir / "features" / f"{f}.html", text)
    index = out_dir / "index.html"
    write_text(index, _index_page(t, meta, vocab, stats.examples, pages, title))
    return index


def top_tokens(ex: pd.DataFrame, vocab: list[str], n: int = 3) -> list[str]:
    top = ex[ex["section"] == "top"]
    ids = [int(toks[c]) for toks, c in zip(top["tokens"], top["center"])]
    return [vocab[i] for i, _ in Counter(ids).most_common(n)]


def _index_page(
    t: dict, meta: dict, vocab: list[str], examples, pages: list[int], title: str
) -> str:
    freq = t["frequency"].double().numpy()
    count = t["count"].numpy()
    n_dead = int(never_fires(count).sum())
    live_threshold = meta.get("live_threshold", LIVE_THRESHOLD)
    n_live = int(is_live(freq, live_threshold).sum())
    logf = np.log10(freq[count > 0]) if (count > 0).any() else np.array([0.0])
    lo = math.floor(min(logf.min(), math.log10(live_threshold)) * 2) / 2
    edges = np.arange(lo, 0.125, 0.25)  # up to 0 (every token)
    hist, _ = np.histogram(logf, bins=edges)
    chart = svg_histogram(
        hist, edges, xlabel="log10 feature density (fraction of eval tokens)", width=1100,
        marker=math.log10(live_threshold),
    )  # fmt: skip
    by_feature = dict(tuple(examples.groupby("feature"))) if len(examples) else {}
    rows = []
    r2 = meta.get("r2", {})
    for f in pages:
        toks = top_tokens(by_feature[f], vocab) if f in by_feature else []
        shown = " ".join(f'<span class="tok">{token_text(s)}</span>' for s in toks)
        rows.append(
            f'<tr data-id="{f}"><td><a href="features/{f}.html">{f}</a></td>'
            f'<td class="num">{fmt(float(freq[f]))}</td>'
            f'<td class="num">{fmt(float(t["max"][f]))}</td>'
            f'<td class="num">{fmt(float(r2.get(str(f), math.nan)), 2)}</td><td>{shown}</td></tr>'
        )
    facts = [
        ("features", meta.get("d_sae")),
        ("live", f"{n_live} ({n_live / max(len(freq), 1):.0%})"),
        ("dead", n_dead),
        ("eval tokens", f"{meta.get('n_tokens', 0):,}"),
        ("pages", len(pages)),
        ("kind", meta.get("kind", "")),
    ]
    stat_cards = "".join(
        f'<div class="stat"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in facts
    )
    body = (
        f'<div class="nav"><span>tcspec dashboard</span></div><h1>{esc(title)}</h1>'
        f'<div class="sub">{esc(_describe(meta))}</div>'
        f'<div class="card"><div class="stats">{stat_cards}</div></div>'
        f'<div class="card"><h2>Feature density</h2>{chart}'
        f'<div class="sub">{len(freq) - n_dead} features that fire at least once; {n_dead} '
        f"never fire. Dashed line: live threshold {live_threshold:g}.</div></div>"
        f'<div class="card"><h2>Features with pages</h2>'
        f'<input id="q" type="search" placeholder="Search feature id" autocomplete="off">'
        f'<span id="status"></span>'
        f'<table id="features"><thead><tr><th>feature</th><th>density</th><th>max</th>'
        f"<th>token R²</th><th>top tokens</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table></div>"
    )
    return page(f"{title}: features", body, SEARCH_JS)


SEARCH_JS = """
const box = document.getElementById('q'), status = document.getElementById('status');
const rows = Array.from(document.querySelectorAll('#features tbody tr'));
function filter() {
  const q = box.value.trim();
  let shown = 0;
  for (const r of rows) {
    const ok = q === '' || r.dataset.id.startsWith(q);
    r.style.display = ok ? '' : 'none';
    if (ok) shown++;
  }
  status.textContent = q === '' ? rows.length + ' features' :
    (shown ? shown + ' match' + (shown > 1 ? '' : 'es') : 'no page for feature ' + q);
}
box.addEventListener('input', filter);
box.addEventListener('keydown', e => {
  if (e.key !== 'Enter') return;
  const hit = rows.find(r => r.dataset.id === box.value.trim());
  if (hit) location.href = 'features/' + hit.dataset.id + '.html';
});
box.value = new URLSearchParams(location.search).get('q') || '';
filter();
"""


def _describe(meta: dict) -> str:
    parts = [meta.get("kind", "")]
    if meta.get("layer") is not None:
        parts.append(f"layer {meta['layer']}")
    for k in ("in_hook", "out_hook"):
        if meta.get(k):
            parts.append(f"{k.replace('_', ' ')} {meta[k]}")
    return " · ".join(p for p in parts if p)


def _token_table(t: dict, prefix: str, kind: str, vocab: list[str], f: int, cls: str) -> str:
    ids, vals = t.get(f"{prefix}_{kind}_ids"), t.get(f"{prefix}_{kind}_vals")
    if ids is None:
        return ""
    rows = "".join(
        f'<tr><td><span class="tok">{token_text(token_of(vocab, i))}</span></td>'
        f'<td class="num {cls}">{float(v):+.3f}</td></tr>'
        for i, v in zip(ids[f].tolist(), vals[f].tolist())
    )
    return f'<table class="tt">{rows}</table>'


def _writes_card(t: dict, meta: dict, f: int) -> str:
    """A CLT feature's decoder norm into each layer it writes, with its share of the squared
    norm of all its decoders (empty for a per-layer dictionary)."""
    from tcspec.features.files import WRITE_BLOCKS, WRITE_NORMS

    if WRITE_NORMS not in t:
        return ""
    norms = t[WRITE_NORMS][f].double()  # [n_out]
    top, total = float(norms.max()), float(norms.square().sum())
    rows = "".join(
        f'<tr><td>layer {b}</td><td class="num">{fmt(n)}</td>'
        f'<td class="num">{n * n / total if total > 0 else 0:.0%}</td>'
        f'<td style="width:60%"><div class="bar" style="width:{100 * n / top if top > 0 else 0:.1f}%">'
        f"</div></td></tr>"
        for b, n in zip(meta[WRITE_BLOCKS], norms.tolist())
    )
    return (
        '<div class="card"><h2>Where it writes</h2><table><thead><tr><th>MLP output</th>'
        f"<th>decoder norm</th><th>share</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        "<div class=\"sub\">Norm of the feature's decoder into each layer's MLP output "
        "(share: of the squared norm of all its decoders).</div></div>"
    )


def _feature_page(
    f: int,
    t: dict,
    meta: dict,
    vocab: list[str],
    examples: list[Example],
    title: str,
    prev_f: int | None,
    next_f: int | None,
) -> str:
    """Feature ``f``'s page: its numbers, histogram, logit tables and examples. ``t`` holds
    the statistics' tensors, each [n_features, ...]; ``prev_f``/``next_f`` link its
    neighbours among the features with pages."""
    vmax, bands = float(t["max"][f]), meta["config"]["bands"]
    n_bins = t["hist"].shape[1]  # t["hist"]: [n_features, n_bins], bins over (0, max]
    hist = svg_histogram(
        t["hist"][f].numpy(), np.linspace(0, vmax, n_bins + 1), xlabel="activation (nonzero)",
        width=420, height=230, colors=band_colors(n_bins, bands),
    )  # fmt: skip
    logit_cards, n_tables = _logit_cards(t, vocab, f)
    top = [e for e in examples if e.section == "top"]
    top_html = "".join(render_example(e, vmax) for e in top) or '<div class="sub">none</div>'
    body = (
        f'<div class="nav">{_nav(prev_f, next_f)}</div><h1>Feature {f}</h1>'
        f'<div class="sub">{esc(title)} · {esc(_describe(meta))}</div>'
        f'<div class="card"><div class="stats">{_stat_cards(t, meta, f)}</div></div>'
        f"{_writes_card(t, meta, f)}"
        f'<div class="grid g23"><div class="card"><h2>Activation histogram</h2>{hist}'
        f'<div class="sub">Colours mark the {bands} bands examples are sampled from.</div></div>'
        f'<div class="card"><div class="grid g{max(n_tables, 1)}">{logit_cards}</div>'
        f"</div></div>"
        f'<div class="grid g2"><div class="card"><h2>Top activations</h2>{top_html}</div>'
        f'<div class="card"><h2>Examples across the activation range</h2>'
        f"{_band_examples(examples, vmax, bands)}</div></div>"
    )
    return page(f"{title}: feature {f}", body)


def _stat_cards(t: dict, meta: dict, f: int) -> str:
    """Feature ``f``'s numbers as stat cards: density, count, max, quantiles, token R²."""
    vmax = float(t["max"][f])
    q = t["quantiles"][f].tolist()  # [n_levels], at the config's quantile levels
    levels = meta["config"]["quantiles"]
    freq = float(t["frequency"][f])
    r2 = meta.get("r2", {}).get(str(f), math.nan)
    facts = [
        ("density", f"{freq:.2e}"),
        ("log10 density", fmt(math.log10(freq), 3) if freq > 0 else "dead"),
        ("activating tokens", f"{int(t['count'][f]):,}"),
        ("max", fmt(vmax)),
        (" · ".join(f"p{round(100 * p)}" for p in levels), " · ".join(fmt(v, 2) for v in q)),
        ("token R²", fmt(float(r2), 2)),
    ]
    return "".join(
        f'<div class="stat"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in facts
    )


def _logit_cards(t: dict, vocab: list[str], f: int) -> tuple[str, int]:
    """Feature ``f``'s top and bottom logits and de-embedding, those the statistics hold:
    (their tables' HTML, how many)."""
    tables = [
        ("Top logits", _token_table(t, "logit", "top", vocab, f, "pos")),
        ("Bottom logits", _token_table(t, "logit", "bottom", vocab, f, "neg")),
        ("De-embedding", _token_table(t, "deembed", "top", vocab, f, "pos")),
    ]
    tables = [(h, x) for h, x in tables if x]
    return "".join(f"<div><h2>{esc(h)}</h2>{x}</div>" for h, x in tables), len(tables)


def _band_examples(examples: list[Example], vmax: float, bands: int) -> str:
    """The examples sampled per activation band, highest band first, each under its range."""
    band_html = []
    for b in reversed(range(bands)):
        lo, hi = b / bands * vmax, (b + 1) / bands * vmax
        ex = [e for e in examples if e.section == "band" and e.band == b]
        if not ex:
            continue
        band_html.append(f'<div class="band">band {b + 1} of {bands}: ({lo:.3g}, {hi:.3g}]</div>')
        band_html.extend(render_example(e, vmax) for e in ex)
    return "".join(band_html)


def _nav(prev_f: int | None, next_f: int | None) -> str:
    """Links to the index and to the previous and next features with pages."""
    nav = ['<a href="../index.html">&larr; index</a>']
    if prev_f is not None:
        nav.append(f'<a href="{prev_f}.html">&lsaquo; feature {prev_f}</a>')
    if next_f is not None:
        nav.append(f'<a href="{next_f}.html">feature {next_f} &rsaquo;</a>')
    return "".join(nav)
