"""Task studies through transcoders: greater-than keep-top-k, de-embeddings of year tokens,
faithfulness checks, and the greater-than circuit study that writes them all.

Keep-top-k (the paper's Figure 4): at the studied layer ``L`` and the last prompt position
(where the model predicts the year), rank the transcoder's features and the MLP's neurons
(``mlp.hook_post``) by the variance of their activation over the prompts; for each
``k = 0..k_max`` keep only the top ``k`` and zero the rest. For the transcoder, the MLP's
output at that position is replaced by the transcoder's output from the kept features (plus
its output bias); for neurons, the other neurons of the MLP are zeroed (its output bias
stays). Every other position runs the original model. The metric is the mean probability
difference of ``greater_than.py``.

De-embedding of year tokens: a feature's de-embedding scores every vocabulary token by how
much its embedding drives the feature, directly (``W_E f_enc``) or through an attention
head's OV circuit (``W_E W_V W_O f_enc``; REFERENCE.md, "Circuit analysis"). A feature
*singles out year tokens* when most of its top-10 de-embedding tokens are two-digit numbers
(``"00".."99"``, and ``" 00".." 99"`` where those are single tokens); ``year_fraction`` is
that share (chance: their count / d_vocab).

Faithfulness: the graph's exactness (each node = kept incoming edges + error nodes, checked
numerically by ``paths.build_graph``), and how well a feature's graph attribution predicts
the change in the root when the feature is zero-ablated in the real model (attention,
norms and every other feature free to change): the Pearson correlation of predicted
(``-attribution``) and actual changes over the graph's top features. It is measured again
with every norm's scale held at its value on the prompts, which separates the error of
treating LayerNorm as a constant scale from the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.circuits.attribution import (
    Attributor,
    Node,
    deembedding,
    total_feature_attributions,
    trace,
)
from tcspec.circuits.greater_than import (
    greater_than_prompts,
    greater_than_root_weights,
    prob_diff,
    two_digit_token_ids,
    year_token_ids,
)
from tcspec.circuits.paths import Graph, build_graph, find_paths
from tcspec.coders import Coder
from tcspec.hooks import full_name

TOP_TOKENS = 10


# ----------------------------------------------------------------------------- helpers
def _coder_input(coder: Coder, layer: int) -> str:
    hook = coder.cfg.in_hook or "ln2.hook_normalized"
    return hook if hook.startswith("blocks.") else full_name(layer, hook)


def _metric(
    model: HookedTransformer, tokens: Tensor, yy: Tensor, year_ids: Tensor, hooks=()
) -> Tensor:
    """Per-prompt probability difference with ``hooks``: [n]."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))  # [n, seq, d_vocab]
    return prob_diff(logits[:, -1], yy, year_ids)


def varying_positions(tokens: Tensor) -> list[int]:
    """Positions whose token differs between prompts (the ``YY`` slot of greater-than)."""
    return [int(p) for p in torch.nonzero((tokens != tokens[:1]).any(0)).flatten()]


def position_labels(tokenizer, tokens: Tensor) -> list[str]:
    """The first prompt's tokens as text, ``*`` where the prompts differ."""
    varying = set(varying_positions(tokens))
    return ["*" if p in varying else tokenizer.decode([int(t)]) for p, t in enumerate(tokens[0])]


# ----------------------------------------------------------------------------- keep-top-k
@torch.no_grad()
def keep_top_k(
    model: HookedTransformer,
    coder: Coder,
    layer: int,
    tokens: Tensor,
    yy: Tensor,
    year_ids: Tensor,
    k_max: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The keep-top-k curves (module docstring): a frame with columns ``k``, ``method``
    (``transcoder`` or ``neurons``), ``prob_diff``, ``index`` (the component added at that
    k); and baselines ``original``, ``transcoder_last`` (every feature kept) and
    ``mlp_zero_last`` (the MLP's output zeroed at the last position)."""
    if k_max < 0:
        raise ValueError(f"keep_top_k must be >= 0, got {k_max}")
    in_name, post = _coder_input(coder, layer), full_name(layer, "mlp.hook_post")
    out_name = full_name(layer, "hook_mlp_out")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in (in_name, post))
    x = cache[in_name][:, -1].to(coder.W_enc.dtype)  # [n, d_in]
    z = coder.encode(x)  # [n, d_sae]
    neurons = cache[post][:, -1]  # [n, d_mlp]
    order = {
        "transcoder": z.var(0, unbiased=False).argsort(descending=True, stable=True),
        "neurons": neurons.var(0, unbiased=False).argsort(descending=True, stable=True),
    }

    def transcoder_hook(mask: Tensor):
        def hook(act, hook):
            act = act.clone()
            y = coder.decode(z * mask, x if coder.cfg.skip else None)  # [n, d_out]
            act[:, -1] = y.to(act.dtype)
            return act

        return [(out_name, hook)]

    def neuron_hook(mask: Tensor):
        def hook(act, hook):
            act = act.clone()
            act[:, -1] = act[:, -1] * mask
            return act

        return [(post, hook)]

    def zero_hook(act, hook):
        act = act.clone()
        act[:, -1] = 0
        return act

    rows = []
    for method, make, width in (
        ("transcoder", transcoder_hook, z.shape[1]),
        ("neurons", neuron_hook, neurons.shape[1]),
    ):
        for k in range(min(k_max, width) + 1):
            like = z if method == "transcoder" else neurons
            mask = torch.zeros(width, dtype=like.dtype, device=like.device)
            mask[order[method][:k]] = 1
            score = float(_metric(model, tokens, yy, year_ids, make(mask)).mean())
            added = int(order[method][k - 1]) if k > 0 else None
            rows.append({"k": k, "method": method, "prob_diff": score, "index": added})
    baselines = {
        "original": float(_metric(model, tokens, yy, year_ids).mean()),
        "transcoder_last": float(
            _metric(model, tokens, yy, year_ids, transcoder_hook(torch.ones_like(z[0]))).mean()
        ),
        "mlp_zero_last": float(
            _metric(model, tokens, yy, year_ids, [(out_name, zero_hook)]).mean()
        ),
    }
    return pd.DataFrame(rows), baselines


def keep_top_k_summary(
    frame: pd.DataFrame, baselines: dict[str, float], level: float = 0.9
) -> dict:
    """Smallest k at which each method reaches ``level`` of the original metric, and the k
    where the transcoder is ahead of the neurons."""
    target = level * baselines["original"]
    out: dict = {"level": level, "target": target}
    pivot = frame.pivot(index="k", columns="method", values="prob_diff")
    for method in ("transcoder", "neurons"):
        reached = pivot.index[pivot[method] >= target]
        out[f"k_{method}"] = int(reached[0]) if len(reached) else None
    ahead = pivot.index[pivot["transcoder"] > pivot["neurons"]]
    out["k_transcoder_ahead"] = [int(k) for k in ahead]
    out["transcoder_ahead_fraction"] = float(len(ahead) / len(pivot))
    out["n_k"] = int(len(pivot))
    out["mean_gap"] = float((pivot["transcoder"] - pivot["neurons"]).mean())
    out["verdict"] = keep_top_k_verdict(out)
    return out


def keep_top_k_verdict(k: dict) -> str:
    """One plain sentence: do transcoder features recover the metric with fewer components?"""
    kt, kn, level = k["k_transcoder"], k["k_neurons"], f"{k['level']:.0%}"
    ahead = f"{len(k['k_transcoder_ahead'])} of {k['n_k']}"
    if kt is not None and (kn is None or kt < kn):
        return (
            f"Transcoder features recover the metric with fewer components than neurons "
            f"({level} at k = {kt} against {_num(kn)})."
        )
    if kt is not None and kt == kn:
        return f"Transcoder features and neurons reach {level} at the same k = {kt}."
    if kn is not None:
        return (
            f"Transcoder features do **not** recover the metric with fewer components than "
            f"neurons ({level} at k = {_num(kt)} against {kn}); they score higher at {ahead} values of k."
        )
    better = "higher" if k["transcoder_ahead_fraction"] > 0.5 else "not higher"
    return (
        f"Neither reaches {level} of the original metric within the k tried; transcoder "
        f"features score {better} than neurons at equal k ({ahead} values of k, mean gap "
        f"{_num(k['mean_gap'], 3)})."
    )


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


# ----------------------------------------------------------------------------- de-embedding
@torch.no_grad()
def year_deembeddings(
    model: HookedTransformer,
    coder: Coder,
    layer: int,
    year_ids: Tensor,
    features: Sequence[int],
    heads: Sequence[tuple[int, int]] = (),
    top: int = TOP_TOKENS,
) -> pd.DataFrame:
    """For each feature and each path (``direct``, or ``H{l}.{h}`` for each head in
    ``heads``): the share of its top-``top`` de-embedding tokens that are years, and those
    tokens. One row per (feature, path)."""
    years = set(year_ids.tolist())
    rows = []
    paths: list[tuple[str, tuple[int, int] | None]] = [("direct", None)]
    paths += [(f"H{li}.{h}", (li, h)) for li, h in heads]
    W_enc = coder.W_enc.to(model.W_E.dtype)  # [d_model, d_sae]
    for name, head in paths:
        for i in features:
            scores = deembedding(model, W_enc[:, i], head)  # [d_vocab]
            best = scores.topk(top).indices.tolist()
            rows.append({
                "feature": int(i),
                "path": name,
                "year_fraction": sum(t in years for t in best) / top,
                "top_tokens": " ".join(repr(model.tokenizer.decode([t])) for t in best),
            })  # fmt: skip
    return pd.DataFrame(rows)


def upstream_heads(model: HookedTransformer, layer: int) -> list[tuple[int, int]]:
    """Heads whose output an MLP at ``layer`` reads (the same layer too in a sequential block)."""
    last = layer if not model.cfg.parallel_attn_mlp else layer - 1
    return [(li, h) for li in range(last + 1) for h in range(model.cfg.n_heads)]


def heads_reading(
    tr, heads: list[tuple[int, int]], src: int, max_heads: int
) -> list[tuple[int, int]]:
    """The ``max_heads`` heads of ``heads`` attending most from the last position to ``src``."""
    weight = [float(tr.pattern[li][:, h, -1, src].mean()) for li, h in heads]
    order = np.argsort(weight)[::-1][:max_heads]
    return [heads[i] for i in sorted(order)]


# ----------------------------------------------------------------------------- faithfulness
@torch.no_grad()
def ablation_faithfulness(
    model: HookedTransformer,
    att: Attributor,
    graph: Graph,
    tokens: Tensor,
    root_weights: Tensor,
    top: int = 20,
    replacement: bool = False,
    freeze_scales: bool = False,
) -> dict:
    """Predicted against actual change of the root (its logit direction at its position)
    when each of the graph's ``top`` feature nodes is zero-ablated in the real model (or,
    with ``replacement``, in the model whose MLPs are the transcoders plus their error on
    the prompts held fixed: then only norms, attention and feature gates respond; with
    ``freeze_scales``, every norm's scale is also held at its value on the prompts).

    Two predictions: minus the node's attribution in the graph (its kept paths), and minus
    its total attribution over every path (`total_feature_attributions`). Returns
    ``pearson`` and ``pearson_total`` (None under 3 features) and one row per feature."""
    feats = sorted(
        (n for n in graph.nodes if n.kind == "feature" and n != graph.root),
        key=lambda n: -float(graph.nodes[n].mean().abs()),
    )[:top]
    pos, w = graph.root.pos, root_weights.to(model.W_U.dtype)

    def root_value(logits: Tensor) -> Tensor:
        return (logits[:, pos] * w).sum(-1)  # [n]

    splice = _replacement_hooks(att) if replacement else []
    if freeze_scales:
        frozen = att.trace.frozen.items()
        splice += [(k, lambda act, hook, v=v: v) for k, v in frozen if k.endswith("hook_scale")]
    base = root_value(model.run_with_hooks(tokens, fwd_hooks=splice))
    total = total_feature_attributions(model, att.coders, att.trace, w, pos)
    rows = []
    for node in feats:
        coder = att.coders[node.layer]
        z = att.trace.z[node.layer][:, node.pos, node.index]  # [n]
        delta = z[:, None] * coder.W_dec[node.index]  # [n, d_model]

        def ablate(act, hook, node=node, delta=delta):
            act = act.clone()
            act[:, node.pos] -= delta.to(act.dtype)
            return act

        hooks = splice + [(full_name(node.layer, "hook_mlp_out"), ablate)]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        rows.append({
            "id": node.id,
            "predicted": -float(graph.nodes[node].mean()),
            "predicted_total": -float(total[node.layer][:, node.pos, node.index].mean()),
            "actual": float((root_value(logits) - base).mean()),
        })  # fmt: skip
    return {
        "pearson": _pearson(rows, "predicted"),
        "pearson_total": _pearson(rows, "predicted_total"),
        "features": len(rows),
        "rows": rows,
    }


def _replacement_hooks(att: Attributor) -> list:
    """Hooks putting each transcoder (plus its error on the traced prompts) in place of its
    MLP."""
    store, hooks = {}, []
    for li, c in att.coders.items():
        error = att.trace.mlp_out[li] - att.trace.tc_out[li]  # [n, seq, d]

        def keep(act, hook, li=li):
            store[li] = act

        def replace(act, hook, li=li, c=c, error=error):
            return c(store[li].to(c.W_enc.dtype))[0].to(act.dtype) + error

        hooks += [(_coder_input(c, li), keep), (full_name(li, "hook_mlp_out"), replace)]
    return hooks


def _pearson(rows: list[dict], key: str) -> float | None:
    if len(rows) < 3:
        return None
    pred, act = np.array([r[key] for r in rows]), np.array([r["actual"] for r in rows])
    if pred.std() == 0 or act.std() == 0:
        return None
    return float(np.corrcoef(pred, act)[0, 1])


# ----------------------------------------------------------------------------- the study
def studied_layer(coders: dict[int, Coder], task_layer: int | None) -> int:
    """The model's task layer when a transcoder covers it, else the last transcoder layer."""
    return task_layer if task_layer in coders else max(coders)


@torch.no_grad()
def spliced_prob_diffs(
    model: HookedTransformer,
    coders: dict[int, Coder],
    layer: int,
    tokens: Tensor,
    yy: Tensor,
    year_ids: Tensor,
) -> pd.DataFrame:
    """Per-prompt metric: original, the studied layer's transcoder spliced in at every
    position, every transcoder at once, and the studied layer's MLP zero-ablated."""

    def splice(c: Coder, li: int):
        store = {}
        in_name = _coder_input(c, li)

        def keep(act, hook):
            store["x"] = act

        def replace(act, hook):
            return c(store["x"].to(c.W_enc.dtype))[0].to(act.dtype)

        return [(in_name, keep), (full_name(li, "hook_mlp_out"), replace)]

    def zero(act, hook):
        return torch.zeros_like(act)

    all_hooks = [h for li, c in coders.items() for h in splice(c, li)]
    return pd.DataFrame({
        "yy": yy.tolist(),
        "original": _metric(model, tokens, yy, year_ids).tolist(),
        "transcoder_spliced": _metric(model, tokens, yy, year_ids, splice(coders[layer], layer)).tolist(),
        "all_transcoders_spliced": _metric(model, tokens, yy, year_ids, all_hooks).tolist(),
        "mlp_zero_ablated": _metric(model, tokens, yy, year_ids, [(full_name(layer, "hook_mlp_out"), zero)]).tolist(),
    })  # fmt: skip


@torch.no_grad()
def greater_than_study(
    model: HookedTransformer,
    coders: dict[int, Coder],
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
) -> dict:
    """Run the whole greater-than study and write ``graph.json``, ``graph.png``/``.svg``,
    ``greater_than.csv``, ``keep_top_k.csv`` (every transcoder layer; the studied one is the
    summary's headline), ``keep_top_k.png``, ``deembedding.csv`` and
    ``report.md`` into ``out_dir``. Returns the summary (also the caller's ``summary.json``).

    The circuit's root is the logit direction of ``greater_than_root_weights`` at the last
    position: the mean logit of the years after ``YY`` minus that of the years up to it.
    """
    from tcspec.circuits import render

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.cfg.device
    year_ids = year_token_ids(model.tokenizer).to(device)
    tokens, kept = greater_than_prompts(model.tokenizer, yy_values)
    tokens, yy = tokens.to(device), torch.tensor(kept, device=device)
    layer = studied_layer(coders, task_layer)
    labels = position_labels(model.tokenizer, tokens)

    # circuit: path search from the logit root, graph, faithfulness
    tr = trace(model, tokens, coders)
    att = Attributor(model, coders, tr)
    weights = greater_than_root_weights(yy, year_ids, model.cfg.d_vocab).to(device)
    root = Node("logit", None, None, tokens.shape[1] - 1)
    root_state = att.logit_root(weights.to(tr.embed.dtype), root.pos)
    paths = find_paths(att, root, root_state, iterations, branches, top_paths)
    graph = build_graph(att, root, root_state, paths)
    graph.settings = {"iterations": iterations, "branches": branches, "top_paths": top_paths}
    faith = ablation_faithfulness(model, att, graph, tokens, weights, top_features)
    fixed = ablation_faithfulness(
        model, att, graph, tokens, weights, top_features, freeze_scales=True
    )
    for row, other in zip(faith["rows"], fixed["rows"]):
        row["actual_frozen_scales"] = other["actual"]
    graph_json = graph.to_json(labels)
    graph_json["checks"]["ablation_pearson"] = faith["pearson"]
    graph_json["checks"]["ablation_pearson_total"] = faith["pearson_total"]
    render.write_json(out_dir / "graph.json", graph_json)
    render.draw_graph(graph_json, out_dir / "graph.png", out_dir / "graph.svg")

    # metrics with transcoders spliced, keep-top-k
    per_prompt = spliced_prob_diffs(model, coders, layer, tokens, yy, year_ids)
    per_prompt.to_csv(out_dir / "greater_than.csv", index=False)
    # keep-top-k at every transcoder layer; the studied layer is the headline
    curves, by_layer = [], {}
    for li in sorted(coders):
        part, base = keep_top_k(model, coders[li], li, tokens, yy, year_ids, keep_top_k_max)
        curves.append(part.assign(layer=li))
        by_layer[li] = {"baselines": base} | keep_top_k_summary(part, base)
    curve = pd.concat(curves, ignore_index=True)
    curve.to_csv(out_dir / "keep_top_k.csv", index=False)
    render.plot_keep_top_k(
        curve, {li: v["baselines"] for li, v in by_layer.items()}, out_dir / "keep_top_k.png"
    )

    # de-embeddings, at every transcoder layer, of the features that vary most over prompts
    varying = varying_positions(tokens)
    number_ids = two_digit_token_ids(model.tokenizer)
    frames, head_names = [], {}
    for li in sorted(coders):
        var = tr.z[li][:, -1].var(0, unbiased=False)  # [d_sae]
        live = [int(i) for i in var.argsort(descending=True) if var[i] > 0][:max_features]
        heads = upstream_heads(model, li)
        if varying:  # the heads that could bring the start year to the last token
            heads = heads_reading(tr, heads, varying[0], max_heads)
        head_names[li] = ["direct"] + [f"H{hl}.{h}" for hl, h in heads]
        part = year_deembeddings(model, coders[li], li, number_ids, live, heads)
        part.insert(0, "layer", li)
        part["activation_variance"] = [float(var[i]) for i in part["feature"]]
        frames.append(part)
    deemb = pd.concat(frames, ignore_index=True)
    deemb = deemb.sort_values(["year_fraction", "activation_variance"], ascending=False)
    deemb.to_csv(out_dir / "deembedding.csv", index=False)
    best = deemb.drop_duplicates(["layer", "feature"])
    chance = len(number_ids) / model.cfg.d_vocab
    year_features = best[best["year_fraction"] >= 0.5]

    # float rounding only: the split is exact in exact arithmetic
    eps = torch.finfo(tr.embed.dtype).eps
    tol = 1e3 * eps * (1 + max(float(v.abs().max()) for v in graph.nodes.values()))
    gaps = (graph.checks["node_sum_gap"], graph.checks["completeness_gap"])
    summary = {
        "task": "greater_than",
        "layer": layer,
        "prompts": int(tokens.shape[0]),
        "yy": kept,
        "root": root.id,
        "root_value": float(graph.nodes[root].mean()),
        "metric": {k: float(per_prompt[k].mean()) for k in per_prompt.columns if k != "yy"},
        "keep_top_k": by_layer[layer] | {"by_layer": by_layer},
        "graph": {
            "nodes": len(graph_json["nodes"]),
            "edges": len(graph_json["edges"]),
            "paths": len(paths),
            "explained_at_root": _explained(graph),
        },
        "faithfulness": {
            "node_sum_gap": graph.checks["node_sum_gap"],
            "completeness_gap": graph.checks["completeness_gap"],
            "exact": max(gaps) <= tol,
            "tolerance": tol,
            "ablation_pearson": faith["pearson"],
            "ablation_pearson_total": faith["pearson_total"],
            "ablation_pearson_frozen_scales": fixed["pearson"],
            "ablation_pearson_total_frozen_scales": fixed["pearson_total"],
            "ablation_features": faith["features"],
        },
        "deembedding": {
            "features_scored": len(best),
            "paths": head_names,
            "chance_year_fraction": chance,
            "year_features": int(len(year_features)),
            "top": best.head(10)[["layer", "feature", "path", "year_fraction"]].to_dict("records"),
        },
    }
    render.write_report(out_dir / "report.md", summary, graph_json, best.head(15), faith["rows"])
    return summary


def _explained(graph: Graph) -> float | None:
    """Share of the root's value carried by its kept incoming edges."""
    total = float(graph.nodes[graph.root].mean())
    kept = sum(float(w.mean()) for (u, t), w in graph.edges.items() if t == graph.root)
    return kept / total if total else None
