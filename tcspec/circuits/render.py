"""Pictures and text of a circuit study: the graph as PNG/SVG, the keep-top-k plot, and
``report.md``. Reads the ``graph.json`` dict of ``paths.Graph.to_json`` (schema there).

Graph layout: x is the token position (a head sits at its destination; its edges come from
its source position), y is where a node writes into the residual stream (embedding at the
bottom, then attention and MLP of each layer, the root on top). Node area grows with
|attribution|, edge width with |weight|; blue is positive, red negative. Error nodes are
small grey squares just below the node they feed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

POSITIVE, NEGATIVE, ERROR = "#1f77b4", "#d62728", "#9a9a9a"


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file beside it, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".tmp{os.getpid()}.{path.name}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lstrip("."))
    os.replace(tmp, path)


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


def draw_graph(graph: dict, png: Path, svg: Path | None = None, max_nodes: int = 80) -> None:
    """Draw ``graph`` (a graph.json dict) to ``png`` (and ``svg``): the root and the
    ``max_nodes`` nodes of largest |attribution|, with their edges."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    root = nodes[graph["root"]]
    layers = [n["layer"] for n in graph["nodes"] if n["layer"] is not None]
    top = 2 * (max(layers) + 1) + 1 if layers else 3
    inner = [n for n in graph["nodes"] if not n["type"].startswith("error") and n is not root]
    inner = sorted(inner, key=lambda n: -abs(n["attribution"]))[:max_nodes]
    shown = {root["id"]} | {n["id"] for n in inner}
    errors = [
        e for e in graph["edges"]
        if e["target"] in shown and nodes[e["source"]]["type"].startswith("error")
    ]  # fmt: skip
    shown |= {e["source"] for e in errors}

    # layout: each position gets a column as wide as its busiest (position, level) slot
    slots: dict[tuple, list[str]] = defaultdict(list)
    for nid in shown:
        n = nodes[nid]
        if not n["type"].startswith("error"):
            slots[(n["position"], top if nid == root["id"] else _level(n, top))].append(nid)
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
        k = ("error_transcoder", "error_bias", "error_unexplained").index(
            nodes[e["source"]]["type"]
        )
        xy[e["source"]] = (tx + (k - 1) * 0.25, ty - 0.4)

    scale = max([abs(nodes[i]["attribution"]) for i in shown] + [1e-12])
    wscale = max(
        [abs(e["weight"]) for e in graph["edges"] if e["source"] in xy and e["target"] in xy]
        + [1e-12]
    )
    span = start[-1] + width[-1]
    fig, ax = plt.subplots(figsize=(min(max(8, 0.7 * span), 60), 1.4 * top + 2))
    for e in graph["edges"]:
        if e["source"] not in xy or e["target"] not in xy:
            continue
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        err = nodes[e["source"]]["type"].startswith("error")
        color = ERROR if err else (POSITIVE if e["weight"] >= 0 else NEGATIVE)
        ax.plot([x0, x1], [y0, y1], color=color, alpha=0.6, lw=0.3 + 4 * abs(e["weight"]) / wscale,
                zorder=1)  # fmt: skip
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


def plot_keep_top_k(curve: pd.DataFrame, baselines: dict[int, dict[str, float]], png: Path) -> None:
    """The paper's Figure 4, one panel per layer: the metric against k for transcoder
    features and MLP neurons (``curve`` has columns layer, k, method, prob_diff)."""
    layers = sorted(baselines)
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        base = baselines[layer]
        for method, color in (("transcoder", POSITIVE), ("neurons", NEGATIVE)):
            part = curve[(curve["layer"] == layer) & (curve["method"] == method)]
            label = "transcoder features" if method == "transcoder" else "MLP neurons"
            ax.plot(part["k"], part["prob_diff"], marker=".", color=color, label=label)
        ax.axhline(base["original"], color="black", ls="--", lw=1, label="original model")
        ax.axhline(base["transcoder_last"], color=POSITIVE, ls=":", lw=1, label="all features")
        ax.axhline(base["mlp_zero_last"], color="grey", ls=":", lw=1, label="MLP zero-ablated")
        ax.set_xlabel("k (components kept at the last token, the rest zeroed)")
        ax.set_ylabel("probability difference")
        ax.set_title(f"greater-than, layer {layer}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, png)
    plt.close(fig)


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def write_report(
    path: Path,
    summary: dict,
    graph: dict,
    deembedding: pd.DataFrame,
    ablations: list[dict],
    top_paths: int = 20,
) -> None:
    """``report.md``: metrics, the faithfulness checks, the top paths as text, keep-top-k and
    the year de-embeddings, each with a sentence saying what it shows."""
    m, k, f, d = (
        summary["metric"],
        summary["keep_top_k"],
        summary["faithfulness"],
        summary["deembedding"],
    )
    lines = [
        f"# Greater-than circuit study (layer {summary['layer']})",
        "",
        f"{summary['prompts']} prompts, start years {summary['yy']}. Metric: mean probability "
        "difference over the 100 two-digit year tokens (REFERENCE.md, Greater-than).",
        "",
        "| setting | prob. difference |",
        "|---|---|",
        *[f"| {name.replace('_', ' ')} | {_f(v)} |" for name, v in m.items()],
        "",
        "## Faithfulness",
        "",
        f"- Exactness ({'passes' if f['exact'] else '**FAILS**'}, tolerance "
        f"{_f(f['tolerance'], 2)}): every node's kept incoming edges plus its error nodes equal its "
        f"attribution; largest gap over nodes and prompts {_f(f['node_sum_gap'], 3)}. Each "
        f"node's parts add up to its value read off the residual stream: largest gap "
        f"{_f(f['completeness_gap'], 3)} (norm scales and attention patterns held fixed).",
        f"- Ablation: over the {f['ablation_features']} feature nodes with the largest "
        f"attribution, the Pearson correlation between the predicted change of the root "
        f"(minus the node's attribution in the graph, i.e. through its kept paths) and the "
        f"actual change when the feature is zero-ablated in the real model is "
        f"**{_f(f['ablation_pearson'], 3)}**; predicting with the attribution through every "
        f"path (one backward pass through the frozen model) gives "
        f"**{_f(f['ablation_pearson_total'], 3)}**. With every norm's scale held at its value "
        f"on the prompts during the ablation (the one approximation that differs), the two "
        f"correlations are **{_f(f['ablation_pearson_frozen_scales'], 3)}** and "
        f"**{_f(f['ablation_pearson_total_frozen_scales'], 3)}**.",
        f"- The root ({summary['root']}, the mean logit of later years minus that of earlier "
        f"ones) is {_f(summary['root_value'])}; its kept incoming edges carry "
        f"{_f(summary['graph']['explained_at_root'], 3)} of it.",
        "",
        "| feature | predicted (graph) | predicted (all paths) | actual | actual, scales frozen |",
        "|---|---|---|---|---|",
        *[
            f"| {r['id']} | {r['predicted']:+.4f} | {r['predicted_total']:+.4f} "
            f"| {r['actual']:+.4f} | {r['actual_frozen_scales']:+.4f} |"
            for r in ablations
        ],
        "",
        f"## Top paths ({len(graph['paths'])} found; settings {graph['settings']})",
        "",
        "Ids: `F<layer>.<feature>@<pos>` transcoder feature, `H<layer>.<head>@<dst><<src>` "
        "attention head from source to destination, `E@<pos>` embedding, `L@<pos>` the "
        "logit root. Attributions are means over prompts in logit units.",
        "",
        "```",
        *[
            " <- ".join(p["nodes"]) + f"   ({p['attribution']:+.4f})"
            for p in graph["paths"][:top_paths]
        ],
        "```",
        "",
        f"Positions: {', '.join(f'{i}:{t!r}' for i, t in enumerate(graph['positions'] or []))}",
        "",
        f"The graph ({len(graph['nodes'])} nodes with error nodes, {len(graph['edges'])} edges) "
        f"is in `graph.json`, schema `{graph['schema']}` (documented in "
        "`tcspec/circuits/paths.py`).",
        "",
        "![graph](graph.png)",
        "",
        "## Keep-top-k",
        "",
        "At the last token only, the MLP's neurons (`mlp.hook_post`) or the transcoder's "
        "features are ranked by their variance over the prompts; the top k are kept and the "
        "rest zeroed (the transcoder stands in for the MLP there, output bias included).",
        "",
        f"Layer {summary['layer']}: original {_f(k['baselines']['original'])}; all transcoder "
        f"features at the last token {_f(k['baselines']['transcoder_last'])}; MLP "
        f"zero-ablated there {_f(k['baselines']['mlp_zero_last'])}. Reaching "
        f"{k['level']:.0%} of the original metric takes k = {_f(k['k_transcoder'])} "
        f"transcoder features and k = {_f(k['k_neurons'])} neurons; the transcoder is ahead "
        f"at {len(k['k_transcoder_ahead'])} values of k (mean gap {_f(k['mean_gap'], 3)}).",
        "",
        *[f"- layer {layer}: {v['verdict']}" for layer, v in k["by_layer"].items()],
        "",
        "| layer | original | all features | MLP zeroed | k (features) | k (neurons) "
        "| transcoder ahead at k | mean gap |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {layer} | {_f(v['baselines']['original'])} | {_f(v['baselines']['transcoder_last'])} "
            f"| {_f(v['baselines']['mlp_zero_last'])} | {_f(v['k_transcoder'])} "
            f"| {_f(v['k_neurons'])} | {_ranges(v['k_transcoder_ahead'])} | {_f(v['mean_gap'], 3)} |"
            for layer, v in k["by_layer"].items()
        ],
        "",
        "![keep-top-k](keep_top_k.png)",
        "",
        "## De-embeddings of year tokens",
        "",
        f"{d['features_scored']} features (at each transcoder layer, the most variable over "
        f"the prompts at the last token) scored directly and through the heads that attend "
        f"most from the last token to the start year "
        f"({'; '.join(f'layer {li}: ' + ', '.join(p) for li, p in d['paths'].items())}). "
        f"{d['year_features']} have at least half of their top-10 de-embedding tokens among "
        f"the two-digit number tokens (chance {d['chance_year_fraction']:.3f}).",
        "",
        "| layer | feature | path | year fraction | top tokens |",
        "|---|---|---|---|---|",
        *[
            f"| {r.layer} | {r.feature} | {r.path} | {r.year_fraction:.1f} | {r.top_tokens} |"
            for r in deembedding.itertuples()
        ],
        "",
    ]
    Path(path).write_text("\n".join(lines))


def _ranges(ks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    out, run = [], []
    for k in ks:
        if run and k != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(k)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out) or "none"
