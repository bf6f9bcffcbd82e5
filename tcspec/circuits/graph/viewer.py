"""A static HTML viewer of one attribution graph: one file that opens from disk, no server.

Nodes sit by position (x, a column per prompt token) and layer (y: tokens at the bottom,
logits on top), each feature labelled by its automatic label (its top activating tokens,
from the feature cards) or the user's; edges are drawn with width by |weight|, blue
positive and red negative. Two sliders prune as the graph JSON does, by cumulative node
influence and cumulative edge influence (from the loose pruning embedded in the page).
Hovering a node highlights every path through it; clicking shows its card (label, which
the user can rename; top activations with context, logits, histogram, where a CLT feature
writes; its dashboard page; its edges); shift-click or the card's button pins it into the
subgraph, where checked pins group into supernodes. That state is circuit-tracer's
``qParams``: kept in the browser per graph, saved into a downloaded copy of the graph JSON
(renamed features as their ``clerp``), and loaded back from one. The script and styles are
``viewer.js`` / ``viewer.css`` beside this module; the data is embedded as JSON and only
ever inserted as text, never as markup.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import torch

from tcspec.atomic import write_text
from tcspec.circuits.graph.attribute import Graph
from tcspec.circuits.graph.files import graph_json, node_records
from tcspec.circuits.graph.prune import edge_influence, prune

LOOSE_NODE, LOOSE_EDGE = 0.99, 0.999  # what the page holds; the sliders prune within it
MAX_LINKS = 20_000


def viewer_data(
    graph: Graph, pages: dict[str, str] | None = None, cards: str | None = None
) -> dict:
    """The graph JSON of a loosely pruned graph, with each link's cumulative edge score.
    ``pages``: per layer (a string key), a feature's dashboard page with ``{feature}``;
    ``cards``: the feature cards script; both relative to the page."""
    cfg = graph.config
    w = graph.logit_weights()
    loose = prune(graph.adjacency, w, graph.n_features, graph.n_pos + graph.n_logits,
                  max(cfg.node_threshold, LOOSE_NODE), max(cfg.edge_threshold, LOOSE_EDGE))  # fmt: skip
    data = graph_json(graph, "viewer", pruned=loose)
    scores = edge_influence(graph.adjacency * loose.node_mask[:, None] * loose.node_mask, w)
    ids = [n["node_id"] for n in node_records(graph, torch.zeros(graph.n_nodes))]
    flat = scores[loose.edge_mask]
    order = flat.argsort(descending=True)
    cum = torch.zeros_like(flat)
    cum[order] = flat[order].cumsum(0) / flat.sum().clamp(min=1e-30)
    by_pair = {}
    dst, src = loose.edge_mask.nonzero(as_tuple=True)
    for t, s, c in zip(dst.tolist(), src.tolist(), cum.tolist()):
        by_pair[(ids[s], ids[t])] = c
    for link in data["links"]:
        link["score"] = by_pair[(link["source"], link["target"])]
    data["links"] = sorted(data["links"], key=lambda x: x["score"])[:MAX_LINKS]
    data["viewer"] = {
        "n_layers": graph.n_layers,
        "n_pos": graph.n_pos,
        "node_threshold": cfg.node_threshold,
        "edge_threshold": cfg.edge_threshold,
        "pages": pages,
        "cards": cards,
    }
    return data


def write_viewer(
    graph: Graph,
    path: str | Path,
    pages: dict[str, str] | None = None,
    cards: str | None = None,
    slug: str | None = None,
) -> Path:
    """Write the viewer page (see `viewer_data` for ``pages`` and ``cards``); ``slug``: the
    graph's (its saved copy's file name and its state's key in the browser)."""
    data = viewer_data(graph, pages, cards)
    data["metadata"]["slug"] = slug or Path(path).stem
    text = json.dumps(data, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    here = files("tcspec.circuits.graph")
    page = PAGE.replace("__CSS__", (here / "viewer.css").read_text())
    page = page.replace("__JS__", (here / "viewer.js").read_text())
    return write_text(Path(path), page.replace("__DATA__", text))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Attribution graph</title>
<style>__CSS__</style></head><body>
<div id="main">
<div id="controls">
<strong id="prompt"></strong><br>
<label>node threshold <input id="nt" type="range" min="0.05" max="0.99" step="0.01">
<span id="ntv"></span></label>
<label>edge threshold <input id="et" type="range" min="0.05" max="0.999" step="0.001">
<span id="etv"></span></label>
<span id="count"></span> <span id="scores"></span><br>
<button id="save">save graph JSON</button>
<label>open graph JSON <input id="open" type="file" accept=".json,application/json"></label>
<span id="status"></span>
</div>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="subgraph"><strong>Subgraph</strong> (shift-click a node or use its card's pin button)
<button id="group">group checked</button> <input id="group-name" placeholder="supernode name">
<button id="clear">clear pins</button>
<div id="pins"></div><pre id="sg-edges"></pre></div>
</div>
<div id="side"><div id="card"></div></div>
<script type="application/json" id="graph-data">__DATA__</script>
<script>__JS__</script></body></html>
"""
