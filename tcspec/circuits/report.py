"""``report.md`` of a greater-than circuit study: metrics, the faithfulness checks, the top
paths as text, keep-top-k and the year de-embeddings, each with a sentence saying what it
shows. Reads the study's summary and the ``graph.json`` dict."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tcspec import atomic

PAPER = "Dunefsky et al. 2024, *Transcoders Find Interpretable LLM Feature Circuits*"

KEEP_TOP_K_PROTOCOL = {
    "last": (
        "At the last token only, the MLP's neurons (`mlp.hook_post`) or the transcoder's "
        "features are ranked by their variance over the prompts; the top k are kept and the "
        "rest zeroed (the transcoder stands in for the MLP there, output bias included)."
    ),
    "all": (
        "As in the paper's greater-than notebook: the MLP's neurons (`mlp.hook_post`) or the "
        "transcoder's features are ranked by the variance of their activation at the last "
        "token over the ranking prompts; the top k are kept and the rest zeroed at every "
        "position (the transcoder replaces the MLP at every position, output bias included)."
    ),
}
WHERE = {"last": "at the last token", "all": "at every position"}


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


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


def _metric_section(summary: dict) -> list[str]:
    return [
        f"# Greater-than circuit study (layer {summary['layer']})",
        "",
        f"{summary['prompts']} prompts, start years {summary['yy']}. Metric: mean probability "
        f"difference over the 100 two-digit year tokens ({PAPER}, greater-than case study).",
        "",
        "| setting | prob. difference |",
        "|---|---|",
        *[f"| {name.replace('_', ' ')} | {_f(v)} |" for name, v in summary["metric"].items()],
        "",
    ]


def _faithfulness_section(summary: dict, ablations: list[dict]) -> list[str]:
    f = summary["faithfulness"]
    return [
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
    ]


def _paths_section(graph: dict, top_paths: int) -> list[str]:
    return [
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
    ]


def _keep_top_k_row(layer: int, v: dict) -> str:
    base, where = v["baselines"], v["positions"]
    return (
        f"| {layer} | {_f(base['original'])} | {_f(base[f'transcoder_{where}'])} "
        f"| {_f(base[f'mlp_zero_{where}'])} | {_f(v['k_transcoder'])} "
        f"| {_f(v['k_neurons'])} | {_ranges(v['k_transcoder_ahead'])} | {_f(v['mean_gap'], 3)} |"
    )


def _keep_top_k_section(summary: dict) -> list[str]:
    k = summary["keep_top_k"]
    base, where = k["baselines"], k["positions"]
    return [
        "## Keep-top-k",
        "",
        KEEP_TOP_K_PROTOCOL[where],
        "",
        f"Layer {summary['layer']}: original {_f(base['original'])}; all transcoder "
        f"features {WHERE[where]} {_f(base[f'transcoder_{where}'])}; MLP "
        f"zero-ablated there {_f(base[f'mlp_zero_{where}'])}. Reaching "
        f"{k['level']:.0%} of the original metric takes k = {_f(k['k_transcoder'])} "
        f"transcoder features and k = {_f(k['k_neurons'])} neurons; the transcoder is ahead "
        f"at {len(k['k_transcoder_ahead'])} values of k (mean gap {_f(k['mean_gap'], 3)}).",
        "",
        *[f"- layer {layer}: {v['verdict']}" for layer, v in k["by_layer"].items()],
        "",
        "| layer | original | all features | MLP zeroed | k (features) | k (neurons) "
        "| transcoder ahead at k | mean gap |",
        "|---|---|---|---|---|---|---|---|",
        *[_keep_top_k_row(layer, v) for layer, v in k["by_layer"].items()],
        "",
        "![keep-top-k](keep_top_k.png)",
        "",
    ]


def _deembedding_section(summary: dict, deembedding: pd.DataFrame) -> list[str]:
    d = summary["deembedding"]
    paths = "; ".join(f"layer {li}: " + ", ".join(p) for li, p in d["paths"].items())
    return [
        "## De-embeddings of year tokens",
        "",
        f"{d['features_scored']} features (at each transcoder layer, the most variable over "
        f"the prompts at the last token) scored directly and through the heads that attend "
        f"most from the last token to the start year ({paths}). "
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


def write_report(
    path: Path,
    summary: dict,
    graph: dict,
    deembedding: pd.DataFrame,
    ablations: list[dict],
    top_paths: int = 20,
) -> None:
    """``report.md``: metrics, the faithfulness checks, the top paths as text, keep-top-k and
    the year de-embeddings."""
    lines = [
        *_metric_section(summary),
        *_faithfulness_section(summary, ablations),
        *_paths_section(graph, top_paths),
        *_keep_top_k_section(summary),
        *_deembedding_section(summary, deembedding),
    ]
    atomic.write_text(path, "\n".join(lines))
