"""The feature-major (CSR by feature) view of sparse codes that the hand-written gradients
of TopK dictionaries share, per-layer and cross-layer: each feature's entries together, in
token order, and sums over them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_major(features: Tensor, n_features: int) -> tuple[Tensor, Tensor]:
    """(order, crow) of entries whose features are `features` (long [nnz], token order):
    entry e in feature order is entry order[e]; feature f's entries are crow[f]:crow[f+1]."""
    order = torch.argsort(features, stable=True)
    crow = torch.zeros(n_features + 1, dtype=torch.long, device=features.device)
    torch.cumsum(torch.bincount(features, minlength=n_features), 0, out=crow[1:])
    return order, crow


def sum_by_feature(tokens: Tensor, crow: Tensor, values: Tensor, M: Tensor) -> Tensor:
    """sum over each feature's entries of value x M[token]: [F, M.shape[1]], a sparse [F, B]
    x dense [B, n] product (`tokens`, `values` in feature order, `crow` as `feature_major`'s)."""
    return F.embedding_bag(tokens, M, crow[:-1], per_sample_weights=values, mode="sum")
