"""Pictures of a circuit study: the graph as PNG/SVG and the keep-top-k plot (``report.py``
writes the text). Reads the ``graph.json`` dict of ``paths.Graph.to_json`` (schema there).

Graph layout: x is the token position (a head sits at its destination; its edges come from
its source position), y is where a node writes into the residual stream (embedding at the
bottom, then attention and MLP of each layer, the root on top). Node area grows with
|attribution|, edge width with |weight|; blue is positive, red negative. Error nodes are
small grey squares just below the node they feed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tcspec import atomic  # noqa: E402

POSITIVE, NEGATIVE, ERROR = "#1f77b4", "#d62728", "#9a9a9a"
ERROR_OFFSET = {"error_transcoder": -0.25, "error_bias": 0.0, "error_unexplained": 0.25}
"""Where an error node sits beside the node it feeds (x offset)."""


def write_graph_json(path: Path, graph: dict) -> None:
    """``graph.json`` (keys in the order of ``Graph.to_json``), atomically."""
    atomic.write_text(path, json.dumps(graph, indent=1) + "\n")


def _save(fig, path: Path) -> None:
    atomic.save_figure(fig, path, dpi=130, bbox_inches="tight")


def _level(node: dict, top: int) -> float:
    kind, layer = node["type"], node["layer"]
    if kind == "embed":
        return 0
    if kind == "head":
        return 2 * layer + 1
    if kind in ("feature", "skip") and node["id"] != "root":
        return 2 * layer + 2
    return top


def _label(node: dict) -> str:
    if node["type"] == "feature":
        return f"F{node['layer']}.{node['feature']}"
    if node["type"] == "head":
        return f"H{node['layer']}.{node['head']}\n{node['source_position']}→"
    if node["type"] == "embed":
        return "emb"
    if node["type"] == "skip":
        return f"skip{node['layer']}"
    if node["type"] == "logit":
        return "logit"
    return node["type"].removeprefix("error_")[:5]


def _shown_nodes(graph: dict, max_nodes: int) -> tuple[set[str], list[dict]]:
    """Ids of the root, the ``max_nodes`` nodes of largest |attribution| and the error
    nodes feeding them; and the error edges drawn."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    root = nodes[graph["root"]]
    inner = [n for n in graph["nodes"] if not n["type"].startswith("error") and n is not root]
    inner = sorted(inner, key=lambda n: -abs(n["attribution"]))[:max_nodes]
    shown = {root["id"]} | {n["id"] for n in inner}
    errors = [
        e for e in graph["edges"]
        if e["target"] in shown and nodes[e["source"]]["type"].startswith("error")
    ]  # fmt: skip
    return shown | {e["source"] for e in errors}, errors


def _layout(graph: dict, shown: set[str], errors: list[dict], top: int):
    """Node positions: each token position gets a column as wide as its busiest (position,
    level) slot. Returns (xy by id, column starts, column widths, number of positions)."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    slots: dict[tuple, list[str]] = defaultdict(list)
    for nid in shown:
        n = nodes[nid]
        if not n["type"].startswith("error"):
            slots[(n["position"], top if nid == graph["root"] else _level(n, top))].append(nid)
    n_pos = len(graph.get("positions") or []) or 1 + max(n["position"] for n in graph["nodes"])
    width = [
        max([len(ids) for (p, _), ids in slots.items() if p == pos] + [1]) for pos in range(n_pos)
    ]
    start = [sum(width[:pos]) + 0.6 * pos for pos in range(n_pos)]
    xy: dict[str, tuple[float, float]] = {}
    for (pos, y), ids in slots.items():
        ids.sort(key=lambda i: -abs(nodes[i]["attribution"]))
        offset = start[pos] + (width[pos] - len(ids)) / 2
        for j, nid in enumerate(ids):
            xy[nid] = (offset + j, y)
    for e in errors:
        tx, ty = xy[e["target"]]
        xy[e["source"]] = (tx + ERROR_OFFSET[nodes[e["source"]]["type"]], ty - 0.4)
    return xy, start, width, n_pos


def _draw_edges(ax, graph: dict, xy: dict, nodes: dict) -> None:
    """Edges between drawn nodes, width by |weight|, colour by sign (grey from errors)."""
    drawn = [e for e in graph["edges"] if e["source"] in xy and e["target"] in xy]
    wscale = max([abs(e["weight"]) for e in drawn] + [1e-12])
    for e in drawn:
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        err = nodes[e["source"]]["type"].startswith("error")
        color = ERROR if err else (POSITIVE if e["weight"] >= 0 else NEGATIVE)
        ax.plot([x0, x1], [y0, y1], color=color, alpha=0.6, lw=0.3 + 4 * abs(e["weight"]) / wscale,
                zorder=1)  # fmt: skip


def _draw_nodes(ax, xy: dict, nodes: dict, shown: set[str]) -> None:
    """Nodes, area by |attribution|, colour by sign; error nodes small grey squares."""
    scale = max([abs(nodes[i]["attribution"]) for i in shown] + [1e-12])
    for nid, (x, y) in xy.items():
        n = nodes[nid]
        a = n["attribution"]
        err = n["type"].startswith("error")
        size = 12 if err else 20 + 500 * abs(a) / scale
        ax.scatter([x], [y], s=size, marker="s" if err else "o", zorder=2,
                   color=ERROR if err else (POSITIVE if a >= 0 else NEGATIVE), alpha=0.85)  # fmt: skip
        if not err:
            ax.annotate(_label(n), (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=6, zorder=3)  # fmt: skip


def draw_graph(graph: dict, png: Path, svg: Path | None = None, max_nodes: int = 80) -> None:
    """Draw ``graph`` (a graph.json dict) to ``png`` (and ``svg``): the root and the
    ``max_nodes`` nodes of largest |attribution|, with their edges."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    layers = [n["layer"] for n in graph["nodes"] if n["layer"] is not None]
    top = 2 * (max(layers) + 1) + 1 if layers else 3
    shown, errors = _shown_nodes(graph, max_nodes)
    xy, start, width, n_pos = _layout(graph, shown, errors, top)
    span = start[-1] + width[-1]
    fig, ax = plt.subplots(figsize=(min(max(8, 0.7 * span), 60), 1.4 * top + 2))
    _draw_edges(ax, graph, xy, nodes)
    _draw_nodes(ax, xy, nodes, shown)
    positions = graph.get("positions")
    if positions:
        centres = [start[p] + (width[p] - 1) / 2 for p in range(n_pos)]
        ax.set_xticks(centres, [repr(p) if p != "*" else "*" for p in positions], rotation=60,
                      fontsize=7)  # fmt: skip
    names = (
        ["embed"] + [f"{k}{li}" for li in range((top - 1) // 2) for k in ("attn", "mlp")] + ["root"]
    )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.8, top + 0.6)
    ax.set_title(f"circuit from {graph['root']} ({graph['prompts']} prompts; mean attributions)")
    ax.grid(alpha=0.2)
    _save(fig, png)
    if svg is not None:
        _save(fig, svg)
    plt.close(fig)


WHERE_KEPT = {"last": "at the last token", "all": "at every position"}
"""How a keep-top-k protocol's positions read in a label."""


def plot_keep_top_k(curve: pd.DataFrame, by_layer: dict[int, dict], png: Path) -> None:
    """The paper's keep-top-k plot, one panel per layer: the metric against k for transcoder
    features and MLP neurons (``curve`` has columns layer, k, method, prob_diff; ``by_layer``
    each layer's ``baselines`` and ``positions``, as `study.keep_top_k_all_layers` gives)."""
    layers = sorted(by_layer)
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        base, where = by_layer[layer]["baselines"], by_layer[layer]["positions"]
        for method, color in (("transcoder", POSITIVE), ("neurons", NEGATIVE)):
            part = curve[(curve["layer"] == layer) & (curve["method"] == method)]
            label = "transcoder features" if method == "transcoder" else "MLP neurons"
            ax.plot(part["k"], part["prob_diff"], marker=".", color=color, label=label)
        ax.axhline(base["original"], color="black", ls="--", lw=1, label="original model")
        ax.axhline(base[f"transcoder_{where}"], color=POSITIVE, ls=":", lw=1, label="all features")
        ax.axhline(base[f"mlp_zero_{where}"], color="grey", ls=":", lw=1, label="MLP zero-ablated")
        ax.set_xlabel(f"k (components kept {WHERE_KEPT[where]}, the rest zeroed)")
        ax.set_ylabel("probability difference")
        ax.set_title(f"greater-than, layer {layer}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, png)
    plt.close(fig)
