"""TopK dictionaries: only k of S features are nonzero per token, so the decoder and every
gradient touch those rows alone, and the dense activations z [B, S] are never formed.

The k active features of each token form a sparse [B, S] pattern. The backward takes d z
on it by a sampled GEMM (g W_dec^T at the pattern's entries only, `sampled_addmm`), and the
weight gradients as sparse x dense products with the pattern feature-major (CSR [S, B]):
row i of W_enc^T's gradient is sum_b d pre_bi xc_b, of W_dec's sum_b z_bi g_b. No [B, k, d]
intermediate is formed; a feature's tokens are summed in token order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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
    S = coder.cfg.d_sae
    (B, k), flat = codes.idx.shape, codes.idx.reshape(-1)  # [B k] feature of each entry
    by_token = _csr(torch.arange(0, B * k + 1, k, device=g.device), flat, codes.vals, (B, S))
    dz_k = torch.sparse.sampled_addmm(by_token, g, coder.W_dec.t(), beta=0.0).values()
    dz_k = dz_k.view(B, k).add_(l1_b).mul_(codes.vals > 0)  # [B, k]
    order = flat.argsort(stable=True)  # the entries feature-major, each feature's by token
    crow = torch.zeros(S + 1, dtype=torch.long, device=g.device)
    torch.cumsum(torch.bincount(flat, minlength=S), 0, out=crow[1:])
    tokens = order // k
    gW_enc_t = _csr(crow, tokens, dz_k.reshape(-1)[order], (S, B)) @ xc  # [S, d_in]
    gW_dec = _csr(crow, tokens, codes.vals.reshape(-1)[order], (S, B)) @ g  # [S, d_out]
    gb_enc = torch.zeros(S, dtype=g.dtype, device=g.device).index_add_(0, flat, dz_k.view(-1))
    if dead is not None:
        dead_idx, gpre_dead = dead
        gW_enc_t.index_add_(0, dead_idx, torch.mm(gpre_dead.t(), xc))
        gb_enc.index_add_(0, dead_idx, gpre_dead.sum(0))
    return {"W_enc": gW_enc_t.t(), "b_enc": gb_enc, "W_dec": gW_dec}


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix (torch's sparse CSR is marked beta; its warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values.reshape(-1), shape, check_invariants=False)
