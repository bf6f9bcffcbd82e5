"""A static HTML viewer of one attribution graph: one file that opens from disk, no server.

Nodes sit by position (x) and layer (y: tokens at the bottom, logits on top); edges are
drawn with width by |weight|, blue positive and red negative. Two sliders prune as the
graph JSON does, by cumulative node influence and cumulative edge influence (from the
loose pruning embedded in the page). Clicking a node lists its incoming and outgoing edges
and, given ``dashboards_url``, links its feature dashboard. The data is embedded as JSON and
only ever inserted as text, never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tcspec.atomic import write_text
from tcspec.circuits.graph.attribute import Graph
from tcspec.circuits.graph.files import graph_json, node_records
from tcspec.circuits.graph.prune import edge_influence, prune

LOOSE_NODE, LOOSE_EDGE = 0.99, 0.999  # what the page holds; the sliders prune within it
MAX_LINKS = 20_000


def viewer_data(graph: Graph, dashboards_url: str | dict[str, str] | None = None) -> dict:
    """The graph JSON of a loosely pruned graph, with each link's cumulative edge score."""
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
        "dashboards_url": dashboards_url,
    }
    return data


def write_viewer(
    graph: Graph, path: str | Path, dashboards_url: str | dict[str, str] | None = None
) -> Path:
    """Write the viewer page. ``dashboards_url``: a template with ``{layer}`` and
    ``{feature}``, relative to the page (e.g. ``../interp/L{layer}/features/{feature}.html``),
    or one template per layer (``{"0": ...}``; layers without one get no link)."""
    data = json.dumps(viewer_data(graph, dashboards_url), separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return write_text(Path(path), PAGE.replace("__DATA__", data))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Attribution graph</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#main{flex:1;overflow:auto;padding:8px}
#side{width:320px;border-left:1px solid #ccc;padding:8px;overflow:auto;font-size:13px}
#controls{font-size:13px;margin-bottom:6px}
#controls label{margin-right:16px}
svg text{font-size:10px;fill:#444}
.node{cursor:pointer;stroke:#333;stroke-width:.5}
.node.sel{stroke:#000;stroke-width:2.5}
.feature{fill:#f5c542}.error{fill:#9a9a9a}.embedding{fill:#8fd19e}.logit{fill:#7fb3e6}
.edge{fill:none}
.dim{opacity:.08}
table{border-collapse:collapse}td{padding:1px 4px;border-bottom:1px solid #eee}
</style></head><body>
<div id="main">
<div id="controls">
<strong id="prompt"></strong><br>
<label>node threshold <input id="nt" type="range" min="0.05" max="0.99" step="0.01">
<span id="ntv"></span></label>
<label>edge threshold <input id="et" type="range" min="0.05" max="0.999" step="0.001">
<span id="etv"></span></label>
<span id="count"></span> <span id="scores"></span>
</div>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>
</div>
<div id="side"><div id="info">Click a node to see its edges.</div></div>
<script type="application/json" id="graph-data">__DATA__</script>
<script>
"use strict";
const G = JSON.parse(document.getElementById("graph-data").textContent);
const V = G.viewer, NS = "http://www.w3.org/2000/svg";
const byId = new Map(G.nodes.map(n => [n.node_id, n]));
const svg = document.getElementById("graph");
let selected = null;
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function row(n) {
  if (n.layer === "E") return 0;
  return n.feature_type === "logit" ? V.n_layers + 1 : Number(n.layer) + 1;
}
function visibleNodes(nt) {
  return G.nodes.filter(n => n.feature_type === "embedding" || n.feature_type === "logit"
    || (n.influence !== null && n.influence <= nt));
}
function draw() {
  const nt = Number(document.getElementById("nt").value);
  const et = Number(document.getElementById("et").value);
  document.getElementById("ntv").textContent = nt.toFixed(2);
  document.getElementById("etv").textContent = et.toFixed(3);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const nodes = visibleNodes(nt), keep = new Set(nodes.map(n => n.node_id));
  const links = G.links.filter(l => l.score <= et && keep.has(l.source) && keep.has(l.target));
  const cells = new Map();
  for (const n of nodes) {
    const key = row(n) + ":" + n.ctx_idx;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const colw = new Array(V.n_pos).fill(50);
  for (const [key, list] of cells) {
    const p = Number(key.split(":")[1]);
    colw[p] = Math.max(colw[p], Math.min(12 * list.length + 16, 400));
  }
  const x0 = [70];
  for (let p = 0; p < V.n_pos; p++) x0.push(x0[p] + colw[p]);
  const rh = 60, rows = V.n_layers + 2, W = x0[V.n_pos] + 20, H = rh * rows + 40;
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const pos = new Map();
  for (const [key, list] of cells) {
    const [r, p] = key.split(":").map(Number);
    list.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0));
    const step = Math.min(12, (colw[p] - 16) / Math.max(list.length, 1));
    list.forEach((n, i) => pos.set(n.node_id, [x0[p] + 8 + i * step, H - 30 - r * rh]));
  }
  for (let r = 0; r < rows; r++) {
    const label = r === 0 ? "Emb" : r === rows - 1 ? "Logit" : "L" + (r - 1);
    el("text", {x: 4, y: H - 26 - r * rh}, svg).textContent = label;
  }
  G.metadata.prompt_tokens.forEach((t, p) => {
    const short = t.length > 10 ? t.slice(0, 9) + "\u2026" : t;
    el("text", {x: x0[p], y: H - 6}, svg).textContent = short;
  });
  const maxw = Math.max(1e-12, ...links.map(l => Math.abs(l.weight)));
  const eg = el("g", {id: "edges"}, svg);
  for (const l of links) {
    const [x1, y1] = pos.get(l.source), [x2, y2] = pos.get(l.target);
    const on = !selected || l.source === selected || l.target === selected;
    el("path", {class: "edge" + (on ? "" : " dim"),
      d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`,
      stroke: l.weight >= 0 ? "#1f77b4" : "#d62728",
      "stroke-width": 0.3 + 3 * Math.abs(l.weight) / maxw, "stroke-opacity": 0.6}, eg);
  }
  const ng = el("g", {id: "nodes"}, svg);
  for (const n of nodes) {
    const [x, y] = pos.get(n.node_id);
    const cls = "node " + (n.feature_type === "cross layer transcoder" ? "feature"
      : n.feature_type === "mlp reconstruction error" ? "error" : n.feature_type)
      + (n.node_id === selected ? " sel" : "");
    const shape = n.feature_type === "cross layer transcoder"
      ? el("circle", {cx: x, cy: y, r: 5, class: cls}, ng)
      : el("rect", {x: x - 5, y: y - 5, width: 10, height: 10, class: cls}, ng);
    shape.setAttribute("data-id", n.node_id);
    el("title", {}, shape).textContent = label(n);
    shape.addEventListener("click", () => { selected = n.node_id; draw(); info(n, links); });
  }
  document.getElementById("count").textContent =
    `${nodes.length} nodes, ${links.length} links`;
  document.title = `Attribution graph: ${nodes.length} nodes`;
}
function label(n) {
  if (n.feature_type === "cross layer transcoder")
    return `L${n.layer} #${n.node_id.split("_")[1]} @${n.ctx_idx} a=${n.activation.toFixed(3)}`
      + (n.clerp ? " " + n.clerp : "");
  if (n.feature_type === "mlp reconstruction error") return `error L${n.layer} @${n.ctx_idx}`;
  if (n.feature_type === "embedding") return `token ${G.metadata.prompt_tokens[n.ctx_idx]} @${n.ctx_idx}`;
  return n.clerp;
}
function info(n, links) {
  const box = document.getElementById("info");
  box.textContent = "";
  const h = document.createElement("h3"); h.textContent = label(n); box.appendChild(h);
  const url = typeof V.dashboards_url === "string" ? V.dashboards_url
    : (V.dashboards_url || {})[n.layer];
  if (n.feature_type === "cross layer transcoder" && url) {
    const a = document.createElement("a");
    a.href = url.replace("{layer}", n.layer).replace("{feature}", n.node_id.split("_")[1]);
    a.textContent = "feature dashboard"; a.id = "dashboard"; box.appendChild(a);
  }
  for (const [title, list, other] of [
      ["incoming", links.filter(l => l.target === n.node_id), "source"],
      ["outgoing", links.filter(l => l.source === n.node_id), "target"]]) {
    const t = document.createElement("h4"); t.textContent = `${title} (${list.length})`;
    box.appendChild(t);
    const table = document.createElement("table"); box.appendChild(table);
    list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    for (const l of list) {
      const tr = document.createElement("tr");
      const a = document.createElement("td"); a.textContent = label(byId.get(l[other]));
      const b = document.createElement("td"); b.textContent = l.weight.toPrecision(4);
      tr.appendChild(a); tr.appendChild(b); table.appendChild(tr);
    }
  }
}
document.getElementById("prompt").textContent = G.metadata.prompt_tokens.join("");
const s = G.metadata.scores;
document.getElementById("scores").textContent =
  `replacement ${s.replacement.toFixed(3)}, completeness ${s.completeness.toFixed(3)}`;
document.getElementById("nt").value = V.node_threshold;
document.getElementById("et").value = V.edge_threshold;
document.getElementById("nt").addEventListener("input", draw);
document.getElementById("et").addEventListener("input", draw);
const q = new URLSearchParams(location.search);
if (q.has("node")) selected = q.get("node");
draw();
if (selected && byId.has(selected)) info(byId.get(selected), G.links);
</script></body></html>
"""
