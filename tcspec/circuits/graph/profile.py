"""Where a graph's influence lies, and how far two graphs of the same prompt agree.

A graph's *profile* (each node's influence on the weighted logits, `prune.node_influence`):

- ``layer_share`` [n_layers]: each layer's share of the feature nodes' total influence (a
  feature belongs to the layer whose input it reads: a CLT feature to its encoder's layer);
- ``mean_layer``: the influence-weighted mean of the features' layers: a shallower circuit
  (e.g. a CLT's, whose features write to every later layer) has a smaller one;
- ``error_share``: the error nodes' share of the influence of features and errors;
- ``top_positions``: the ``k`` prompt positions whose token nodes carry the most influence.

Two profiles of one prompt (through different dictionaries) agree by ``token_overlap``, the
Jaccard index of their top positions, and ``layer_agreement``, one minus the total-variation
distance of their layer shares (1: the same share in every layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcspec.circuits.graph.attribute import Graph
from tcspec.circuits.graph.prune import node_influence


@dataclass(frozen=True)
class Profile:
    layer_share: tuple[float, ...]
    mean_layer: float
    error_share: float
    top_positions: tuple[int, ...]


def profile(graph: Graph, k: int = 3) -> Profile:
    """The profile of ``graph`` (see the module docstring)."""
    infl = node_influence(graph.adjacency, graph.logit_weights()).double().cpu()  # [n_nodes]
    feats = infl[: graph.n_features]
    layers = graph.features[:, 0].cpu()
    per_layer = torch.zeros(graph.n_layers, dtype=torch.float64).index_add_(0, layers, feats)
    total = float(per_layer.sum())
    share = per_layer / total if total > 0 else per_layer
    errors = float(infl[graph.error_start : graph.token_start].sum())
    tokens = infl[graph.token_start : graph.logit_start]
    top = tokens.topk(min(k, graph.n_pos)).indices.sort().values
    return Profile(
        layer_share=tuple(share.tolist()),
        mean_layer=float((share * torch.arange(graph.n_layers)).sum()),
        error_share=errors / (errors + total) if errors + total > 0 else 0.0,
        top_positions=tuple(top.tolist()),
    )


def profile_cells(p: Profile) -> dict:
    """A profile as a table row's cells, its shares and positions space-separated text
    (`profile_of_cells` reads them back)."""
    return {
        "mean_layer": p.mean_layer,
        "error_share": p.error_share,
        "layer_share": " ".join(f"{x:.4f}" for x in p.layer_share),
        "top_positions": " ".join(map(str, p.top_positions)),
    }


def profile_of_cells(row) -> Profile:
    """The profile in a table row's cells (`profile_cells`)."""
    shares = tuple(float(x) for x in str(row["layer_share"]).split())
    top = tuple(int(x) for x in str(row["top_positions"]).split())
    return Profile(shares, float(row["mean_layer"]), float(row["error_share"]), top)


def agreement(a: Profile, b: Profile) -> tuple[float, float]:
    """(token_overlap, layer_agreement) of two profiles of the same prompt."""
    ta, tb = set(a.top_positions), set(b.top_positions)
    overlap = len(ta & tb) / len(ta | tb) if ta | tb else 1.0
    if len(a.layer_share) != len(b.layer_share):
        raise ValueError("profiles of models with different numbers of layers")
    tv = 0.5 * sum(abs(x - y) for x, y in zip(a.layer_share, b.layer_share))
    return overlap, 1.0 - tv
