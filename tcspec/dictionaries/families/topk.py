"""TopK dictionaries: only k of S features are nonzero per token, so the decoder and every
gradient touch those rows alone, and the dense activations z [B, S] are never formed.

The k active features of each token form a sparse [B, S] pattern. The backward takes d z
on it by a sampled GEMM (g W_dec^T at the pattern's entries only, `sampled_addmm`), and the
weight gradients as sparse x dense products with the pattern feature-major (CSR [S, B]):
row i of W_enc^T's gradient is sum_b d pre_bi xc_b, of W_dec's sum_b z_bi g_b. No [B, k, d]
intermediate is formed; a feature's tokens are summed in token order.

In `precision: bf16` the pre-activations are bfloat16 (the encoder GEMM's result), and the
sparse products take bfloat16 operands as the dense GEMMs do, summing in float32: the
decoder reads a bfloat16 copy of W_dec, and the weight gradients are embedding_bags over
bfloat16 xc and g (torch's CSR product has no bfloat16 kernel), rounded to bfloat16 and
widened for Adam. d z at the active entries stays float32 (torch's sampled_addmm has no
bfloat16 kernel either).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tcspec.compute.sparse import feature_major, sum_by_feature
from tcspec.compute.topk import top_k
from tcspec.compute.workspace import Workspace
from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families import relu

trained, rates, state, update, sync = relu.trained, relu.rates, relu.state, relu.update, relu.sync


def activate(pre: Tensor, k: int, threshold=None, bandwidth=None) -> Tensor:
    """The k largest pre-activations per token, ReLU'd, the rest zero: [..., S]."""
    vals, idx = pre.topk(k, dim=-1)  # [..., k]
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


def reference(coder: Coder, pre: Tensor, opts, dead, log_threshold=None):
    """(z [B, S], no extra terms) through autograd."""
    return coder.activate(pre), {}


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
    """pre [B, S] -> (codes, z W_dec + b_out [B, d_out]); the codes' values in the coder's
    dtype. With bfloat16 pre (bf16) the decoder sums bfloat16 rows of W_dec (`ws`'s copy,
    made once a step) in float32 and writes bfloat16, as the dense GEMMs do."""
    vals, idx = select(pre, coder.cfg.k)  # [B, k]
    vals = vals.to(coder.W_dec.dtype).clamp_min_(0)
    W_dec, low = coder.W_dec, pre.dtype
    weights = vals
    if low != W_dec.dtype:
        W_dec, weights = ws.cast("W_dec_low", W_dec, low), ws.cast("vals_low", vals, low)
    y_hat = F.embedding_bag(idx, W_dec, per_sample_weights=weights, mode="sum")  # [B, d_out]
    if low == coder.b_out.dtype:
        y_hat += coder.b_out
    else:  # the sum widened, b_out added in float32, rounded once (a mixed add_: ~4x slower)
        wide = ws.get("y_hat_wide", y_hat.shape, coder.b_out.dtype).copy_(y_hat)
        y_hat.copy_(wide.add_(coder.b_out))
    return Codes(idx, vals, coder.cfg.d_sae, low), y_hat


def select(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest pre-activations per token (values in pre's dtype, long indices [B, k]).

    A bfloat16 pre's bits, read as int16, order its non-negative values (and NaN above them)
    as the values do, and every negative value below them; the ReLU after zeroes whichever
    negative ones are picked, so this selects as a bfloat16 top-k does (ties aside), faster.
    Both go through `tcspec.compute.topk.top_k`.
    """
    if pre.dtype != torch.bfloat16:
        return top_k(pre, k)
    bits, idx = top_k(pre.view(torch.int16), k)
    return bits.view(torch.bfloat16), idx


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec from g = d rec / d y_hat [B, d_out].

    d pre at the active features = (W_dec[idx] g + l1/B) * [vals > 0]  [B, k], plus the
    dead-feature term's gradient `dead` = (dead_idx [n], d term / d pre_dead [B, n]).
    """
    S = coder.cfg.d_sae
    (B, k), flat = codes.idx.shape, codes.idx.reshape(-1)  # [B k] feature of each entry
    by_token = _csr(torch.arange(0, B * k + 1, k, device=g.device), flat, codes.vals, (B, S))
    dz_k = torch.sparse.sampled_addmm(by_token, g, coder.W_dec.t(), beta=0.0).values()
    dz_k = dz_k.view(B, k).add_(l1_b).mul_(codes.vals > 0)  # [B, k]
    order, crow = feature_major(flat, S)  # the entries feature-major, each feature's by token
    tokens, low = order // k, codes.gemm
    if low == g.dtype:
        gW_enc_t = _spmm(
            crow, tokens, dz_k.reshape(-1)[order], xc, ws.get("gW_enc_t", (S, xc.shape[1]))
        )
        gW_dec = _spmm(
            crow, tokens, codes.vals.reshape(-1)[order], g, ws.get("gW_dec", (S, g.shape[1]))
        )
    else:  # bf16: the same sums over bfloat16 operands, in float32, rounded to bfloat16
        xc_low, g_low = ws.cast("xc_low", xc, low), ws.cast("g_low", g, low)
        gW_enc_t = sum_by_feature(tokens, crow, dz_k.reshape(-1)[order].to(low), xc_low)
        gW_dec = sum_by_feature(tokens, crow, codes.vals.reshape(-1)[order].to(low), g_low)
        gW_dec = ws.cast("g_W_dec", gW_dec, g.dtype)
    gW_enc = ws.transposed("g_W_enc", gW_enc_t, g.dtype)  # [d_in, S] as W_enc, for Adam
    gb_enc = torch.zeros(S, dtype=g.dtype, device=g.device).index_add_(0, flat, dz_k.view(-1))
    if dead is not None:
        dead_idx, gpre_dead = dead
        gW_enc.t().index_add_(0, dead_idx, torch.mm(gpre_dead.t(), xc))
        gb_enc.index_add_(0, dead_idx, gpre_dead.sum(0))
    return {"W_enc": gW_enc, "b_enc": gb_enc, "W_dec": gW_dec}


def _spmm(crow: Tensor, col: Tensor, values: Tensor, M: Tensor, out: Tensor) -> Tensor:
    """The CSR [S, B] matrix (crow, col, values) times M [B, n], into `out` [S, n]."""
    S, B = len(crow) - 1, M.shape[0]
    return torch.addmm(out, _csr(crow, col, values, (S, B)), M, beta=0.0, out=out)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix (torch's sparse CSR is marked beta; its warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values.reshape(-1), shape, check_invariants=False)
