"""De-embeddings of year tokens: which vocabulary tokens drive a feature, input-invariantly.

A feature's de-embedding scores every vocabulary token by how much its embedding drives the
feature: directly (``W_E f_enc``) or through an attention head's OV circuit
(``W_E W_V W_O f_enc``; Dunefsky et al. 2024, "Circuit analysis with transcoders"). In GPT-2,
MLP0 acts as an extended embedding: the paper's greater-than plot goes through the top MLP0
transcoder features instead. With the layer-0 transcoder (``f_enc0``, ``f_dec0``), each MLP0
feature ``j`` scores ``s_j = f_dec0_j . (W_V W_O) f_enc`` (or ``f_dec0_j . f_enc`` directly),
and the extended de-embedding is ``sum_j s_j W_E f_enc0_j`` over the ``top_mlp0`` features
with the largest ``s_j``. A path is named ``direct``, ``H{l}.{h}``, or ``mlp0+direct``,
``mlp0+H{l}.{h}`` through MLP0.

A feature *singles out year tokens* when most of its top-10 de-embedding tokens are two-digit
numbers (``"00".."99"``, and ``" 00".." 99"`` where those are single tokens);
``year_fraction`` is that share (chance: their count / d_vocab).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.dictionaries.coders import Coder
from tcspec.features.views import deembedding, read_direction

TOP_TOKENS = 10
TOP_MLP0 = 10
"""MLP0 features an extended de-embedding sums over (the paper's plot: 10)."""

Head = tuple[int, int]


@torch.no_grad()
def mlp0_deembedding(
    model: HookedTransformer,
    coder0: Coder,
    direction: Tensor,
    head: Head | None = None,
    top_mlp0: int = TOP_MLP0,
) -> Tensor:
    """The extended de-embedding through MLP0 (module docstring) of a direction read from
    the residual stream after MLP0, each MLP0 feature's term a `deembedding` (centring
    as there). direction [d_model] -> [d_vocab]."""
    u = read_direction(model, direction, head)  # [d]
    scores = coder0.W_dec.to(u.dtype) @ u  # [d_sae0]
    top = scores.topk(min(top_mlp0, scores.numel()))
    W_enc0 = coder0.W_enc.to(u.dtype)[:, top.indices]  # [d, top]
    per_feature = torch.stack([deembedding(model, W_enc0[:, j]) for j in range(W_enc0.shape[1])])
    return top.values @ per_feature  # [d_vocab]


def deembedding_paths(
    heads: Sequence[Head], layer: int, mlp0: bool
) -> list[tuple[str, Head | None, bool]]:
    """(name, head, through MLP0) of every de-embedding path of a feature at ``layer``; MLP0
    paths only where MLP0's output is upstream (a later layer, or a head after layer 0)."""
    plain = [("direct", None)] + [(f"H{li}.{h}", (li, h)) for li, h in heads]
    out = [(name, head, False) for name, head in plain]
    if mlp0:
        out += [
            (f"mlp0+{name}", head, True)
            for name, head in plain
            if (layer if head is None else head[0]) >= 1
        ]
    return out


@torch.no_grad()
def year_deembeddings(
    model: HookedTransformer,
    coder: Coder,
    layer: int,
    year_ids: Tensor,
    features: Sequence[int],
    heads: Sequence[Head] = (),
    top: int = TOP_TOKENS,
    coder0: Coder | None = None,
) -> pd.DataFrame:
    """For each feature and each path (``direct``, ``H{l}.{h}`` for each head in ``heads``,
    and with ``coder0`` the same through MLP0): the share of its top-``top`` de-embedding
    tokens that are years, and those tokens. One row per (feature, path)."""
    years = set(year_ids.tolist())
    rows = []
    W_enc = coder.W_enc.to(model.W_E.dtype)  # [d_model, d_sae]
    for name, head, via_mlp0 in deembedding_paths(heads, layer, coder0 is not None):
        for i in features:
            if via_mlp0:
                scores = mlp0_deembedding(model, coder0, W_enc[:, i], head)  # [d_vocab]
            else:
                scores = deembedding(model, W_enc[:, i], head)  # [d_vocab]
            best = scores.topk(top).indices.tolist()
            rows.append({
                "feature": int(i),
                "path": name,
                "year_fraction": sum(t in years for t in best) / top,
                "top_tokens": " ".join(repr(model.tokenizer.decode([t])) for t in best),
            })  # fmt: skip
    return pd.DataFrame(rows)


def upstream_heads(model: HookedTransformer, layer: int) -> list[Head]:
    """Heads whose output an MLP at ``layer`` reads (the same layer too in a sequential block)."""
    last = layer if not model.cfg.parallel_attn_mlp else layer - 1
    return [(li, h) for li in range(last + 1) for h in range(model.cfg.n_heads)]


def heads_reading(tr, heads: list[Head], src: int, max_heads: int) -> list[Head]:
    """The ``max_heads`` heads of ``heads`` attending most from the last position to ``src``."""
    weight = [float(tr.pattern[li][:, h, -1, src].mean()) for li, h in heads]
    order = np.argsort(weight)[::-1][:max_heads]
    return [heads[i] for i in sorted(order)]
