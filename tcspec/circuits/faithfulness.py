"""Faithfulness of a circuit graph: how well a feature's graph attribution predicts the
change in the root when the feature is zero-ablated in the real model (attention, norms and
every other feature free to change): the Pearson correlation of predicted (``-attribution``)
and actual changes over the graph's top features. It is measured again with every norm's
scale held at its value on the prompts, which separates the error of treating LayerNorm as
a constant scale from the rest. (The graph's exactness, each node = kept incoming edges +
error nodes, is checked numerically by ``paths.build_graph``.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.circuits.attribution import Attributor, total_feature_attributions
from tcspec.circuits.paths import Graph
from tcspec.circuits.trace import splice_hooks
from tcspec.models.hooks import full_name


def _top_features(graph: Graph, top: int) -> list:
    """The graph's ``top`` feature nodes by |mean attribution| (the root excluded)."""
    return sorted(
        (n for n in graph.nodes if n.kind == "feature" and n != graph.root),
        key=lambda n: -float(graph.nodes[n].mean().abs()),
    )[:top]


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
    pos, w = graph.root.pos, root_weights.to(model.W_U.dtype)

    def root_value(logits: Tensor) -> Tensor:
        return (logits[:, pos] * w).sum(-1)  # [n]

    splice = _replacement_hooks(att) if replacement else []
    if freeze_scales:
        frozen = att.trace.frozen.items()
        splice += [(k, lambda act, hook, v=v: v) for k, v in frozen if k.endswith("hook_scale")]
    base = root_value(model.run_with_hooks(tokens, fwd_hooks=splice))
    total = total_feature_attributions(model, att.dicts, att.trace, w, pos)
    rows = []
    for node in _top_features(graph, top):
        z = att.trace.z[node.layer][:, node.pos, node.index]  # [n]
        hooks = list(splice)  # the feature's write into every MLP output it reaches removed
        for m, W in att.dicts.decoders(node.layer).items():
            delta = z[:, None] * W[node.index]  # [n, d_model]
            hooks.append((full_name(m, "hook_mlp_out"), _subtract(node.pos, delta)))
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


def _subtract(pos: int, delta: Tensor):
    """A hook subtracting ``delta`` [n, d] at position ``pos``."""

    def hook(act, hook):
        act = act.clone()
        act[:, pos] -= delta.to(act.dtype)
        return act

    return hook


def _replacement_hooks(att: Attributor) -> list:
    """Hooks putting the transcoders (plus their error on the traced prompts) in place of
    the MLPs they write."""
    tr, d = att.trace, att.dicts
    outs = [m for m in d.layers if d.writes_to(m)]
    return splice_hooks(d, outs, after=lambda m, y: y + (tr.mlp_out[m] - tr.tc_out[m]))


def _pearson(rows: list[dict], key: str) -> float | None:
    if len(rows) < 3:
        return None
    pred, act = np.array([r[key] for r in rows]), np.array([r["actual"] for r in rows])
    if pred.std() == 0 or act.std() == 0:
        return None
    return float(np.corrcoef(pred, act)[0, 1])
