"""Influence, pruning and the two graph scores, as circuit-tracer defines them (``graph.py``).

With ``Â = |A|`` row-normalised (each target's incoming weights sum to one) and ``w`` the
logit probabilities on the logit nodes, a node's *influence* on the output is
``(w Â + w Â² + ...)[node]``: the fraction of the logits' (weighted) inputs that flow from it
along every path (the sum ends: the graph is acyclic). Pruning keeps the nodes whose
influence carries ``node_threshold`` of the total (tokens and logits always), then, in the
graph of those nodes, the edges ``Â[t, s] (I_t + w_t)`` that carry ``edge_threshold`` of the
total, and finally drops features and errors left without a kept outgoing edge and features
without a kept incoming one, until nothing changes.

Scores (``compute_graph_scores``):
``replacement = ΣI_tokens / (ΣI_tokens + ΣI_errors)`` and
``completeness = Σ_n (1 - Σ_{e ∈ errors} Â[n, e]) (I_n + w_n) / Σ_n (I_n + w_n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_ITER = 1000


def normalize_matrix(A: Tensor, eps: float = 1e-10) -> Tensor:
    """``|A|`` with each row divided by its sum (at least ``eps``): [n, m] -> [n, m]."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=eps)


def influence(A_norm: Tensor, weights: Tensor) -> Tensor:
    """``w Â + w Â² + ...`` for a nilpotent (acyclic) ``Â`` [n, n], w [n] -> [n]."""
    current = weights @ A_norm
    total = current.clone()
    for _ in range(MAX_ITER):
        if not current.any():
            return total
        current = current @ A_norm
        total += current
    raise RuntimeError(f"influence did not vanish after {MAX_ITER} steps: the graph has a cycle")


def partial_influence(rows: Tensor, row_nodes: Tensor, logit_probs: Tensor) -> Tensor:
    """Influence on the logits of every column when only some rows are known.

    rows [r, m]: the computed rows, the first ``len(logit_probs)`` being the logits';
    row_nodes [r]: the column of each row's own node (-1 for a logit). Returns [m].
    """
    A_norm = normalize_matrix(rows, eps=1e-8)
    k = len(logit_probs)
    prod = rows.new_zeros(len(rows))
    prod[:k] = logit_probs
    total = rows.new_zeros(rows.shape[1])
    is_feature = row_nodes >= 0
    for _ in range(MAX_ITER):
        cols = prod @ A_norm  # [m]
        if not cols.any():
            return total
        total += cols
        prod = torch.zeros_like(prod)
        prod[is_feature] = cols[row_nodes[is_feature]]
    raise RuntimeError(f"partial influence did not vanish after {MAX_ITER} steps")


def node_influence(adjacency: Tensor, logit_weights: Tensor) -> Tensor:
    """Influence of every node on the weighted logits: [n]."""
    return influence(normalize_matrix(adjacency), logit_weights)


def edge_influence(pruned: Tensor, logit_weights: Tensor) -> Tensor:
    """``Â[t, s] (I_t + w_t)`` on a pruned adjacency: [n, n]."""
    A_norm = normalize_matrix(pruned)
    return A_norm * (influence(A_norm, logit_weights) + logit_weights)[:, None]


def find_threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score at which the scores, sorted in decreasing order, first reach ``fraction``
    of their total."""
    s = scores.sort(descending=True).values
    cumulative = s.cumsum(0) / s.sum()
    i = int(torch.searchsorted(cumulative, cumulative.new_tensor(fraction)))
    return s[min(i, len(s) - 1)]


def cumulative_scores(scores: Tensor) -> Tensor:
    """Each node's place in the cumulative influence: the fraction of the total carried by
    the nodes at least as influential as it (lower = more important): [n]."""
    s, order = scores.sort(descending=True)
    out = torch.zeros_like(scores)
    out[order] = s.cumsum(0) / s.sum()
    return out


@dataclass(frozen=True)
class Pruned:
    node_mask: Tensor  # [n] bool
    edge_mask: Tensor  # [n, n] bool (target, source)
    cumulative: Tensor  # [n]: `cumulative_scores` of the node influence
    influence: Tensor  # [n]: the node influence itself


def prune(
    adjacency: Tensor,
    logit_weights: Tensor,
    n_features: int,
    n_keep_last: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Pruned:
    """Prune a graph (node order ``[features | errors | tokens | logits]``); the last
    ``n_keep_last`` nodes (tokens and logits) are always kept."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    infl = node_influence(adjacency, logit_weights)
    node_mask = infl >= find_threshold(infl, node_threshold)
    node_mask[-n_keep_last:] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    scores = edge_influence(pruned, logit_weights)
    edge_mask = scores >= find_threshold(scores.flatten(), edge_threshold)
    inner = adjacency.shape[0] - n_keep_last  # features and errors
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:inner] &= edge_mask[:, :inner].any(0)  # an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # an incoming edge
        if torch.equal(before, node_mask):
            break
    edge_mask[~node_mask] = False
    edge_mask[:, ~node_mask] = False
    return Pruned(node_mask, edge_mask, cumulative_scores(infl), infl)


@dataclass(frozen=True)
class Scores:
    replacement: float
    completeness: float


def graph_scores(adjacency: Tensor, logit_weights: Tensor, error_slice: slice,
                 token_slice: slice) -> Scores:  # fmt: skip
    """Replacement and completeness scores of an (unpruned) graph."""
    A_norm = normalize_matrix(adjacency)
    infl = influence(A_norm, logit_weights)
    tokens, errors = infl[token_slice].sum(), infl[error_slice].sum()
    replacement = tokens / (tokens + errors)
    non_error = 1 - A_norm[:, error_slice].sum(1)
    out = infl + logit_weights
    completeness = (non_error * out).sum() / out.sum()
    return Scores(float(replacement), float(completeness))


def prune_graph(graph) -> Pruned:
    """`prune` a `attribute.Graph` with its config's thresholds."""
    return prune(
        graph.adjacency,
        graph.logit_weights(),
        graph.n_features,
        graph.n_pos + graph.n_logits,
        graph.config.node_threshold,
        graph.config.edge_threshold,
    )


def score_graph(graph) -> Scores:
    """`graph_scores` of a `attribute.Graph`."""
    return graph_scores(
        graph.adjacency,
        graph.logit_weights(),
        slice(graph.error_start, graph.token_start),
        slice(graph.token_start, graph.logit_start),
    )
