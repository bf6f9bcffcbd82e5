"""TopK dictionaries: only k of S features are nonzero per token, so the decoder and every
gradient touch those rows alone (gathers and index-adds instead of dense matmuls)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tcspec.coders import Coder
from tcspec.train.workspace import Workspace


@dataclass
class Codes:
    z: Tensor  # [B, S] dense activations (zero but at idx)
    idx: Tensor  # long [B, k] active features
    vals: Tensor  # [B, k] their activations (ReLU'd)


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace) -> tuple[Codes, Tensor]:
    """pre [B, S] (overwritten) -> (codes, z W_dec + b_out [B, d_out])."""
    vals, idx = pre.topk(coder.cfg.k, dim=1)  # [B, k]
    vals.clamp_min_(0)
    z = pre.zero_().scatter_(1, idx, vals)
    y_hat = F.embedding_bag(idx, coder.W_dec, per_sample_weights=vals, mode="sum")
    y_hat += coder.b_out
    return Codes(z, idx, vals), y_hat


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec from g = d rec / d y_hat [B, d_out].

    d pre at the active features = (W_dec[idx] g + l1/B) * [vals > 0]  [B, k], plus the
    dead-feature term's gradient `dead` = (dead_idx [n], d term / d pre_dead [B, n]).
    """
    idx, vals = codes.idx, codes.vals
    S, d_in, d_out = coder.cfg.d_sae, coder.cfg.d_in, coder.cfg.d_out
    rows = coder.W_dec[idx]  # [B, k, d_out]
    dz_k = torch.bmm(rows, g.unsqueeze(2)).squeeze(2).add_(l1_b)  # [B, k]
    dz_k.mul_(vals > 0)
    flat = idx.reshape(-1)  # [B * k]
    gW_enc_t = ws.get("gW_enc_t", (S, d_in)).zero_()  # [S, d_in]
    gW_enc_t.index_add_(0, flat, (dz_k.unsqueeze(2) * xc.unsqueeze(1)).reshape(-1, d_in))
    gb_enc = ws.get("gb_enc", (S,)).zero_().index_add_(0, flat, dz_k.reshape(-1))
    gW_dec = ws.get("gW_dec", (S, d_out)).zero_()  # [S, d_out]
    gW_dec.index_add_(0, flat, (vals.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, d_out))
    if dead is not None:
        dead_idx, gpre_dead = dead
        gW_enc_t.index_add_(0, dead_idx, torch.mm(gpre_dead.t(), xc))
        gb_enc.index_add_(0, dead_idx, gpre_dead.sum(0))
    return {"W_enc": gW_enc_t.t(), "b_enc": gb_enc, "W_dec": gW_dec}
