"""Input-invariant views of a dictionary's features: the logits a feature's decoder
direction writes, `W_dec[f] @ W_U`, and for transcoders the de-embedding `W_E @ W_enc[:, f]`,
a score per vocabulary token independent of any input (LayerNorm ignored); and the text of
every token id.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tcspec.dictionaries.coders import Coder
from tcspec.models.hooks import relative_name

# hooks (relative to blocks.{L}) whose basis is the residual stream's
RESIDUAL_HOOKS = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_in", "hook_attn_out",
    "hook_mlp_out", "ln1.hook_normalized", "ln2.hook_normalized",
)  # fmt: skip


@torch.no_grad()
def top_bottom(scores_of: Callable[[slice], Tensor], n: int, k: int, chunk: int) -> dict:
    """Top and bottom `k` entries of the rows of a [n, V] score matrix built `chunk` rows at
    a time by `scores_of(rows)`: {top_ids, top_vals, bottom_ids, bottom_vals}, each [n, k]."""
    out: dict[str, list[Tensor]] = {
        "top_ids": [],
        "top_vals": [],
        "bottom_ids": [],
        "bottom_vals": [],
    }
    for i in range(0, n, chunk):
        s = scores_of(slice(i, min(i + chunk, n))).float()  # [c, V]
        kk = min(k, s.shape[1])
        tv, ti = s.topk(kk, dim=1)
        bv, bi = s.topk(kk, dim=1, largest=False)
        for name, t in zip(out, (ti, tv, bi, bv)):
            out[name].append(t.cpu())
    return {name: torch.cat(ts) for name, ts in out.items()}


def logit_effects(coder: Coder, model, k: int = 10, chunk_elems: int = 1 << 24) -> dict | None:
    """Top/bottom logits of each feature's decoder direction through the unembedding:
    `W_dec[f] @ W_U` (for an output in the MLP's hidden basis, `W_dec[f] @ W_out @ W_U`).
    None when the output hook is in neither basis."""
    out_hook = relative_name(coder.cfg.out_hook or "")
    W_dec = coder.W_dec  # [d_sae, d_out]
    if out_hook == "mlp.hook_post":
        W_dec = W_dec @ model.blocks[coder.cfg.layer].mlp.W_out  # [d_sae, d_model]
    elif out_hook not in RESIDUAL_HOOKS:
        return None
    W_U = model.W_U.to(W_dec.device, W_dec.dtype)  # [d_model, d_vocab]
    chunk = max(1, chunk_elems // W_U.shape[1])
    return top_bottom(lambda s: W_dec[s] @ W_U, coder.cfg.d_sae, k, chunk)


def deembeddings(coder: Coder, model, k: int = 10, chunk_elems: int = 1 << 24) -> dict | None:
    """Top/bottom vocabulary tokens of each transcoder feature's de-embedding
    `W_E @ W_enc[:, f]` (direct path from the embedding, LayerNorm ignored). None for SAEs
    and inputs outside the residual stream."""
    if coder.cfg.kind == "sae" or relative_name(coder.cfg.in_hook or "") not in RESIDUAL_HOOKS:
        return None
    W_E = model.W_E.to(coder.W_enc.device, coder.W_enc.dtype)  # [d_vocab, d_model]
    W_encT = coder.W_enc.T  # [d_sae, d_in]
    chunk = max(1, chunk_elems // W_E.shape[0])
    return top_bottom(lambda s: W_encT[s] @ W_E.T, coder.cfg.d_sae, k, chunk)


def vocab_strings(tokenizer, d_vocab: int) -> list[str]:
    """The text of every token id (`<id>` beyond the tokenizer's vocabulary)."""
    n = min(len(tokenizer), d_vocab)
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    return list(texts) + [f"<{i}>" for i in range(n, d_vocab)]


def add_input_invariant(stats, coder: Coder, model, k: int | None = None) -> None:
    """Add the logit and de-embedding tables of `coder`'s features to `stats.tensors`
    (`stats` an `interp.FeatureStats`)."""
    k = k or stats.config.logit_k
    for name, views in (
        ("logit", logit_effects(coder, model, k)),
        ("deembed", deembeddings(coder, model, k)),
    ):
        for key, value in (views or {}).items():
            stats.tensors[f"{name}_{key}"] = value
