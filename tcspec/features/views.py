"""Input-invariant views of a dictionary's features: the logits a feature's decoder
direction writes, `W_dec[f] @ W_U`, and for transcoders the de-embedding (`deembedding`:
the one the dashboards and the circuit studies both read), a score per vocabulary token
independent of any input; and the text of every token id.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tcspec.dictionaries.coders import Coder
from tcspec.models.hooks import relative_name
from tcspec.models.load import NORM_CENTRES, centre

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


def read_direction(model, directions: Tensor, head: tuple[int, int] | None = None) -> Tensor:
    """The direction a token's embedding is scored by (see `deembedding`): ``directions``
    (read from the residual stream), through head ``(layer, h)``'s OV circuit ``W_V W_O``,
    centred where the model's norms centre. [d_model] or [d_model, n] -> the same shape,
    in the wider of the model's and the directions' dtypes."""
    dtype = torch.promote_types(model.W_E.dtype, directions.dtype)
    u = directions.to(model.W_E.device, dtype)
    if head is not None:
        attn = model.blocks[head[0]].attn
        u = attn.W_V[head[1]].to(dtype) @ (attn.W_O[head[1]].to(dtype) @ u)  # [d_model, ...]
    if NORM_CENTRES.get(model.cfg.normalization_type, False):
        u = centre(u.movedim(0, -1)).movedim(-1, 0)  # each direction over d_model
    return u


def deembedding(model, directions: Tensor, head: tuple[int, int] | None = None) -> Tensor:
    """The de-embedding of directions read from the residual stream (a transcoder feature's
    encoder column ``f_enc``): the score of every vocabulary token, independent of any
    input, ``W_E u`` with ``u = f_enc`` (the direct path) or ``u = W_V W_O f_enc`` (through
    head ``(layer, h)``), Dunefsky et al. 2024. [d_model] or [d_model, n] -> [d_vocab] or
    [d_vocab, n].

    Centring: in a model whose norms centre (LayerNorm; the processed model's ``LNPre``, not
    ``RMSPre``), ``u`` is centred. A head reads the embedding through ``ln1`` and a transcoder
    reads the MLP's normalized input (``ln2.hook_normalized``, the paper's) after LayerNorm
    subtracted each position's mean, so what they see of token ``t`` is
    ``centre(W_E[t]) . u == W_E[t] . centre(u)``: centring is exact there, and the norm's
    scale (a positive factor per token and prompt) is ignored, as in the paper and in
    circuit-tracer's readouts. tcspec's models are processed with ``center_writing_weights``,
    so ``W_E``'s rows have mean zero already and the centred score equals the paper's
    ``W_E f_enc`` up to rounding; centring keeps it right for an embedding that is not
    centred. One function, so a feature's dashboard and the circuit report rank its tokens
    by the same numbers."""
    u = read_direction(model, directions, head)
    return model.W_E.to(u.dtype) @ u  # [d_vocab, ...]


def deembeddings(coder: Coder, model, k: int = 10, chunk_elems: int = 1 << 24) -> dict | None:
    """Top/bottom vocabulary tokens of each transcoder feature's `deembedding` (the direct
    path from the embedding). None for SAEs and inputs outside the residual stream."""
    if coder.cfg.kind == "sae" or relative_name(coder.cfg.in_hook or "") not in RESIDUAL_HOOKS:
        return None
    chunk = max(1, chunk_elems // model.W_E.shape[0])
    return top_bottom(lambda s: deembedding(model, coder.W_enc[:, s]).T, coder.cfg.d_sae, k, chunk)


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
