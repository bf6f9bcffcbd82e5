"""The greater-than circuit study through transcoders: the circuit graph from the logit
root with its faithfulness checks, the metric with transcoders spliced in, keep-top-k
(``keep_top_k.py``) and the year de-embeddings (``deembed.py``), written into one folder.

The transcoders are per-layer ones by layer, or one cross-layer transcoder: a CLT feature
at layer ``l`` is one source with all its decoders (it writes into layer ``l``'s MLP output
and every later one's; ``tcspec.circuits.graph.dictionaries``). "The transcoder at layer
``l``" is then layer ``l``'s features with everything they write.

The circuit's root is the logit direction of ``greater_than_root_weights`` at the last
position: the mean logit of the years after ``YY`` minus that of the years up to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec import atomic
from tcspec.circuits.attribution import Attributor, Node, trace
from tcspec.circuits.deembed import (
    deembedding_paths,
    heads_reading,
    upstream_heads,
    year_deembeddings,
)
from tcspec.circuits.faithfulness import ablation_faithfulness
from tcspec.circuits.graph.dictionaries import as_dictionaries
from tcspec.circuits.keep_top_k import Positions, keep_top_k, keep_top_k_summary, metric
from tcspec.circuits.paths import Graph, build_graph, find_paths
from tcspec.circuits.trace import Trace, Transcoders, splice_hooks
from tcspec.models.greater_than import (
    greater_than_prompts,
    greater_than_root_weights,
    two_digit_token_ids,
    year_token_ids,
)
from tcspec.models.hooks import full_name
from tcspec.vocab import GREATER_THAN_FILE, KEEP_TOP_K_FILE, KEEP_TOP_K_PLOT


@dataclass(frozen=True)
class Prompts:
    """A tokenized prompt set: tokens [n, seq], start years [n], year token ids [100]."""

    tokens: Tensor
    yy: Tensor
    year_ids: Tensor

    @classmethod
    def build(
        cls, model: HookedTransformer, yy_values: Sequence[int], template: str | None = None
    ) -> Prompts:
        device = model.cfg.device
        tokens, kept = greater_than_prompts(model.tokenizer, yy_values, template=template)
        year_ids = year_token_ids(model.tokenizer).to(device)
        return cls(tokens.to(device), torch.tensor(kept, device=device), year_ids)

    def metric(self, model: HookedTransformer, hooks=()) -> Tensor:
        """Per-prompt probability difference with ``hooks``: [n]."""
        return metric(model, self.tokens, self.yy, self.year_ids, hooks)


def varying_positions(tokens: Tensor) -> list[int]:
    """Positions whose token differs between prompts (the ``YY`` slot of greater-than)."""
    return [int(p) for p in torch.nonzero((tokens != tokens[:1]).any(0)).flatten()]


def position_labels(tokenizer, tokens: Tensor) -> list[str]:
    """The first prompt's tokens as text, ``*`` where the prompts differ."""
    varying = set(varying_positions(tokens))
    return ["*" if p in varying else tokenizer.decode([int(t)]) for p, t in enumerate(tokens[0])]


def studied_layer(coders: Transcoders, task_layer: int | None) -> int:
    """The model's task layer when a transcoder covers it, else the last transcoder layer."""
    layers = as_dictionaries(coders).layers
    return task_layer if task_layer in layers else max(layers)


@torch.no_grad()
def spliced_prob_diffs(
    model: HookedTransformer, coders: Transcoders, layer: int, prompts: Prompts
) -> pd.DataFrame:
    """Per-prompt metric: original, the studied layer's transcoder spliced in at every
    position (for a CLT: the MLP outputs its layer-``layer`` features write, reconstructed),
    every transcoder at once, and the studied layer's MLP zero-ablated."""
    d = as_dictionaries(coders)

    def zero(act, hook):
        return torch.zeros_like(act)

    every = [m for m in d.layers if d.writes_to(m)]
    zero_mlp = [(full_name(layer, "hook_mlp_out"), zero)]
    return pd.DataFrame({
        "yy": prompts.yy.tolist(),
        "original": prompts.metric(model).tolist(),
        "transcoder_spliced": prompts.metric(model, splice_hooks(d, d.decoders(layer))).tolist(),
        "all_transcoders_spliced": prompts.metric(model, splice_hooks(d, every)).tolist(),
        "mlp_zero_ablated": prompts.metric(model, zero_mlp).tolist(),
    })  # fmt: skip


@dataclass(frozen=True)
class Circuit:
    """The circuit from the logit root: graph, its JSON, the paths and the ablation checks."""

    root: Node
    trace: Trace
    graph: Graph
    graph_json: dict
    paths: list
    faith: dict
    frozen_scales: dict


def trace_circuit(
    model: HookedTransformer,
    coders: Transcoders,
    prompts: Prompts,
    search: tuple[int, int, int],
    top_features: int,
    ignore_bos: bool = False,
) -> Circuit:
    """Path search (``search`` = iterations, branches, top paths) from the logit root, the
    graph, and its ablation faithfulness (real model, then with norm scales frozen)."""
    tokens = prompts.tokens
    tr = trace(model, tokens, coders)
    att = Attributor(model, coders, tr)
    weights = greater_than_root_weights(prompts.yy, prompts.year_ids, model.cfg.d_vocab)
    weights = weights.to(tokens.device)
    root = Node("logit", None, None, tokens.shape[1] - 1)
    root_state = att.logit_root(weights.to(tr.embed.dtype), root.pos)
    paths = find_paths(att, root, root_state, *search, ignore_bos=ignore_bos)
    graph = build_graph(att, root, root_state, paths)
    graph.settings = dict(zip(("iterations", "branches", "top_paths"), search))
    faith = ablation_faithfulness(model, att, graph, tokens, weights, top_features)
    fixed = ablation_faithfulness(
        model, att, graph, tokens, weights, top_features, freeze_scales=True
    )
    for row, other in zip(faith["rows"], fixed["rows"]):
        row["actual_frozen_scales"] = other["actual"]
    graph_json = graph.to_json(position_labels(model.tokenizer, tokens))
    graph_json["checks"]["ablation_pearson"] = faith["pearson"]
    graph_json["checks"]["ablation_pearson_total"] = faith["pearson_total"]
    return Circuit(root, tr, graph, graph_json, paths, faith, fixed)


def keep_top_k_all_layers(
    model: HookedTransformer,
    coders: Transcoders,
    prompts: Prompts,
    k_max: int,
    positions: Positions = "last",
    rank: Prompts | None = None,
    replace_bos: bool = True,
) -> tuple[pd.DataFrame, dict[int, dict]]:
    """Keep-top-k at every transcoder layer: the curves (a ``layer`` column added) and each
    layer's baselines and summary."""
    curves, by_layer, d = [], {}, as_dictionaries(coders)
    for li in d.layers:
        part, base = keep_top_k(
            model, d, li, prompts.tokens, prompts.yy, prompts.year_ids, k_max,
            positions, None if rank is None else rank.tokens, replace_bos,
        )  # fmt: skip
        curves.append(part.assign(layer=li))
        by_layer[li] = {"baselines": base, "positions": positions}
        by_layer[li] |= keep_top_k_summary(part, base)
    return pd.concat(curves, ignore_index=True), by_layer


def deembeddings_all_layers(
    model: HookedTransformer,
    coders: Transcoders,
    tr: Trace,
    max_features: int,
    max_heads: int,
    mlp0: bool = False,
) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Year de-embeddings, at every transcoder layer, of the features that vary most over
    the prompts at the last position, directly and through the heads that attend most from
    the last token to the start year (and through MLP0 with ``mlp0`` and a layer-0
    transcoder). Returns the rows (best first) and each layer's path names."""
    d = as_dictionaries(coders)
    coder0 = d.mlp0_coder() if mlp0 else None
    varying = varying_positions(tr.tokens)
    number_ids = two_digit_token_ids(model.tokenizer)
    frames, head_names = [], {}
    for li in d.layers:
        var = tr.z[li][:, -1].var(0, unbiased=False)  # [d_sae]
        live = [int(i) for i in var.argsort(descending=True) if var[i] > 0][:max_features]
        heads = upstream_heads(model, li)
        if varying:  # the heads that could bring the start year to the last token
            heads = heads_reading(tr, heads, varying[0], max_heads)
        features = d.layer_coder(li)  # for a CLT, its decoders summed
        part = year_deembeddings(model, features, li, number_ids, live, heads, coder0=coder0)
        head_names[li] = [name for name, _, _ in deembedding_paths(heads, li, coder0 is not None)]
        part.insert(0, "layer", li)
        part["activation_variance"] = [float(var[i]) for i in part["feature"]]
        frames.append(part)
    deemb = pd.concat(frames, ignore_index=True)
    deemb = deemb.sort_values(["year_fraction", "activation_variance"], ascending=False)
    return deemb, head_names


def _explained(graph: Graph) -> float | None:
    """Share of the root's value carried by its kept incoming edges."""
    total = float(graph.nodes[graph.root].mean())
    kept = sum(float(w.mean()) for (u, t), w in graph.edges.items() if t == graph.root)
    return kept / total if total else None


def _faithfulness_summary(circuit: Circuit) -> dict:
    """The graph's exactness (against a float-rounding tolerance) and the ablation checks."""
    graph, faith, fixed = circuit.graph, circuit.faith, circuit.frozen_scales
    # float rounding only: the split is exact in exact arithmetic
    eps = torch.finfo(circuit.trace.embed.dtype).eps
    tol = 1e3 * eps * (1 + max(float(v.abs().max()) for v in graph.nodes.values()))
    gaps = (graph.checks["node_sum_gap"], graph.checks["completeness_gap"])
    return {
        "node_sum_gap": graph.checks["node_sum_gap"],
        "completeness_gap": graph.checks["completeness_gap"],
        "exact": max(gaps) <= tol,
        "tolerance": tol,
        "ablation_pearson": faith["pearson"],
        "ablation_pearson_total": faith["pearson_total"],
        "ablation_pearson_frozen_scales": fixed["pearson"],
        "ablation_pearson_total_frozen_scales": fixed["pearson_total"],
        "ablation_features": faith["features"],
    }


def _deembedding_summary(model, best: pd.DataFrame, head_names: dict) -> dict:
    chance = len(two_digit_token_ids(model.tokenizer)) / model.cfg.d_vocab
    return {
        "features_scored": len(best),
        "paths": head_names,
        "chance_year_fraction": chance,
        "year_features": int((best["year_fraction"] >= 0.5).sum()),
        "top": best.head(10)[["layer", "feature", "path", "year_fraction"]].to_dict("records"),
    }


def _summary(
    model: HookedTransformer,
    layer: int,
    prompts: Prompts,
    circuit: Circuit,
    per_prompt: pd.DataFrame,
    by_layer: dict[int, dict],
    best: pd.DataFrame,
    head_names: dict[int, list[str]],
) -> dict:
    """The study's summary (the caller's ``summary.json``)."""
    graph = circuit.graph
    return {
        "task": "greater_than",
        "layer": layer,
        "prompts": int(prompts.tokens.shape[0]),
        "yy": prompts.yy.tolist(),
        "root": circuit.root.id,
        "root_value": float(graph.nodes[circuit.root].mean()),
        "metric": {k: float(per_prompt[k].mean()) for k in per_prompt.columns if k != "yy"},
        "keep_top_k": by_layer[layer] | {"by_layer": by_layer},
        "graph": {
            "nodes": len(circuit.graph_json["nodes"]),
            "edges": len(circuit.graph_json["edges"]),
            "paths": len(circuit.paths),
            "explained_at_root": _explained(graph),
        },
        "faithfulness": _faithfulness_summary(circuit),
        "deembedding": _deembedding_summary(model, best, head_names),
    }


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic.write_text(path, frame.to_csv(index=False))


@torch.no_grad()
def greater_than_study(
    model: HookedTransformer,
    coders: Transcoders,
    yy_values: Sequence[int],
    out_dir: Path,
    *,
    iterations: int,
    branches: int,
    top_paths: int,
    keep_top_k_max: int,
    task_layer: int | None = None,
    top_features: int = 20,
    max_heads: int = 8,
    max_features: int = 64,
    template: str | None = None,
    keep_top_k_positions: Positions = "last",
    keep_top_k_rank_yy: Sequence[int] | None = None,
    mlp0_deembeddings: bool = False,
    exclude_bos: bool = False,
) -> dict:
    """Run the whole greater-than study on the prompts of ``template`` (default: the toy
    corpus's sentence) for the start years ``yy_values``, and write ``graph.json``,
    ``graph.png``/``.svg``, ``greater_than.csv``, ``keep_top_k.csv`` (every transcoder
    layer; the studied one is the summary's headline), ``keep_top_k.png``,
    ``deembedding.csv`` and ``report.md`` into ``out_dir``. Returns the summary (also the
    caller's ``summary.json``). ``coders``: transcoders by layer, or a CLT.

    Keep-top-k replaces ``keep_top_k_positions`` (``all`` or ``last``) and ranks over the
    prompts of ``keep_top_k_rank_yy`` (default: ``yy_values``). ``mlp0_deembeddings`` adds
    the de-embeddings through MLP0. ``exclude_bos`` (the spec's BOS convention excludes BOS
    positions): attention candidates ignore the BOS source and keep-top-k leaves the MLP at
    BOS alone.
    """
    from tcspec.circuits import render, report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    coders = as_dictionaries(coders)
    prompts = Prompts.build(model, yy_values, template)
    layer = studied_layer(coders, task_layer)
    search = (iterations, branches, top_paths)
    circuit = trace_circuit(model, coders, prompts, search, top_features, exclude_bos)
    render.write_graph_json(out_dir / "graph.json", circuit.graph_json)
    render.draw_graph(circuit.graph_json, out_dir / "graph.png", out_dir / "graph.svg")

    per_prompt = spliced_prob_diffs(model, coders, layer, prompts)
    _write_csv(out_dir / GREATER_THAN_FILE, per_prompt)
    by_layer = _write_keep_top_k(
        out_dir, model, coders, prompts, keep_top_k_max, keep_top_k_positions,
        keep_top_k_rank_yy, template, exclude_bos,
    )  # fmt: skip

    best, head_names = _write_deembeddings(
        out_dir, model, coders, circuit.trace, max_features, max_heads, mlp0_deembeddings
    )
    summary = _summary(model, layer, prompts, circuit, per_prompt, by_layer, best, head_names)
    report.write_report(
        out_dir / "report.md", summary, circuit.graph_json, best.head(15), circuit.faith["rows"]
    )
    return summary


def _write_keep_top_k(
    out_dir: Path,
    model: HookedTransformer,
    coders: Transcoders,
    prompts: Prompts,
    k_max: int,
    positions: Positions,
    rank_yy: Sequence[int] | None,
    template: str | None,
    exclude_bos: bool,
) -> dict[int, dict]:
    """Keep-top-k at every transcoder layer, ranked over the prompts of ``rank_yy`` (default:
    ``prompts``), its curves written to ``keep_top_k.csv`` and plotted; returns each layer's
    baselines and summary. ``exclude_bos`` leaves the MLP at BOS alone."""
    from tcspec.circuits import render

    rank = None if rank_yy is None else Prompts.build(model, rank_yy, template)
    curve, by_layer = keep_top_k_all_layers(
        model, coders, prompts, k_max, positions, rank, not exclude_bos
    )
    _write_csv(out_dir / KEEP_TOP_K_FILE, curve)
    render.plot_keep_top_k(curve, by_layer, out_dir / KEEP_TOP_K_PLOT)
    return by_layer


def _write_deembeddings(
    out_dir: Path,
    model: HookedTransformer,
    coders: Transcoders,
    tr: Trace,
    max_features: int,
    max_heads: int,
    mlp0: bool,
) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """The year de-embeddings of every layer's top features (``deembeddings_all_layers``),
    written to ``deembedding.csv``: (each feature's best row, each layer's path names)."""
    deemb, head_names = deembeddings_all_layers(model, coders, tr, max_features, max_heads, mlp0)
    _write_csv(out_dir / "deembedding.csv", deemb)
    return deemb.drop_duplicates(["layer", "feature"]), head_names
