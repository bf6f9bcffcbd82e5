"""TopK dictionaries: only k of S features are nonzero per token, so the decoder and every
gradient touch those rows alone (gathers and index-adds instead of dense matmuls), and the
dense activations z [B, S] are never formed.

The backward runs over chunks of CHUNK tokens, into reused work buffers, so that its
[C, k, d] intermediates stay bounded (and are not allocated afresh each step); index_add_
accumulates in index order, so chunking leaves every sum's order, and so the result,
exactly as one call over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tcspec.coders import Coder
from tcspec.train.workspace import Workspace

CHUNK = 512  # tokens per backward chunk


@dataclass
class Codes:
    idx: Tensor  # long [B, k] active features
    vals: Tensor  # [B, k] their activations (ReLU'd)
    d_sae: int
    gemm: torch.dtype  # the dtype of the dense GEMMs (the pre-activations')

    def l1_sum(self) -> Tensor:
        """sum_b sum_i z_bi (z >= 0), over the active features only."""
        return self.vals.sum()

    def extra_terms(self) -> dict[str, Tensor]:
        return {}

    def fired(self, ws: Workspace) -> Tensor:
        """Tokens each feature fired on (z > 0), float [S]."""
        on = self.idx[self.vals > 0]
        return torch.bincount(on, minlength=self.d_sae).to(self.vals.dtype)

    def dense(self, ws: Workspace) -> Tensor:
        """The activations z [B, S]: the k active ones scattered into zeros (for the
        Matryoshka prefixes, whose gradients are dense)."""
        z = ws.get("z_dense", (self.idx.shape[0], self.d_sae), self.gemm).zero_()
        return z.scatter_(1, self.idx, self.vals.to(self.gemm))


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts=None):
    """pre [B, S] -> (codes, z W_dec + b_out [B, d_out]); the codes and the sparse decoder
    in the coder's dtype whatever pre's (bfloat16 in bf16: only the encoder GEMM is dense)."""
    vals, idx = pre.topk(coder.cfg.k, dim=1)  # [B, k]
    vals = vals.to(coder.W_dec.dtype).clamp_min_(0)
    y_hat = F.embedding_bag(idx, coder.W_dec, per_sample_weights=vals, mode="sum")
    y_hat += coder.b_out
    return Codes(idx, vals, coder.cfg.d_sae, pre.dtype), y_hat


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec from g = d rec / d y_hat [B, d_out].

    d pre at the active features = (W_dec[idx] g + l1/B) * [vals > 0]  [B, k], plus the
    dead-feature term's gradient `dead` = (dead_idx [n], d term / d pre_dead [B, n]).
    """
    S, d_in, d_out = coder.cfg.d_sae, coder.cfg.d_in, coder.cfg.d_out
    # one index_add per chunk fills both matrices: rows of gW [S, d_in + d_out] are
    # [d W_enc^T row | d W_dec row]; the sums per element are the same as two index_adds
    gW = ws.get("gW_topk", (S, d_in + d_out)).zero_()
    gW_enc_t, gW_dec = gW[:, :d_in], gW[:, d_in:]  # [S, d_in], [S, d_out]
    gb_enc = ws.get("gb_enc", (S,)).zero_()  # [S]
    k = codes.idx.shape[1]
    for s in range(0, g.shape[0], CHUNK):
        idx, vals = codes.idx[s : s + CHUNK], codes.vals[s : s + CHUNK]  # [C, k]
        gc, xcc = g[s : s + CHUNK], xc[s : s + CHUNK]
        C, flat = idx.shape[0], idx.reshape(-1)  # [C * k]
        rows = ws.get("rows", (C, k, d_out))
        torch.index_select(coder.W_dec, 0, flat, out=rows.view(C * k, d_out))  # W_dec[idx]
        dz_k = torch.bmm(rows, gc.unsqueeze(2), out=ws.get("dz_k", (C, k, 1))).squeeze(2)
        dz_k.add_(l1_b).mul_(vals > 0)  # [C, k]
        contrib = ws.get("contrib", (C, k, d_in + d_out))
        torch.mul(dz_k.unsqueeze(2), xcc.unsqueeze(1), out=contrib[:, :, :d_in])
        torch.mul(vals.unsqueeze(2), gc.unsqueeze(1), out=contrib[:, :, d_in:])
        gW.index_add_(0, flat, contrib.view(C * k, d_in + d_out))
        gb_enc.index_add_(0, flat, dz_k.reshape(-1))
    if dead is not None:
        dead_idx, gpre_dead = dead
        gW_enc_t.index_add_(0, dead_idx, torch.mm(gpre_dead.t(), xc))
        gb_enc.index_add_(0, dead_idx, gpre_dead.sum(0))
    return {"W_enc": gW_enc_t.t(), "b_enc": gb_enc, "W_dec": gW_dec}
