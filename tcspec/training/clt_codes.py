"""One CLT layer's activations a [B, F], dense or sparse, and the products the training step
takes of them: the decoder forward a W, the decoder gradient a^T g, and the encoder
gradients from d pre.

`Sparse` holds only the nonzero activations (CSR by token: k a token for TopK), so the
decoder and its gradients touch those rows alone, as the per-layer TopK trainer does
(`tcspec.dictionaries.families.topk`); the dense [B, F] activations are never formed:

    a W        embedding_bag over each token's active rows of W        [B, n]
    (g W^T)_a  sampled_addmm: g W^T at the active entries only         [nnz]
    a^T g      embedding_bag over each feature's tokens (CSR by feature) [F, n]

Each of these sums in a fixed order, so a step is bitwise reproducible on CPU. In
`precision: bf16` dense activations are bfloat16 (the encoder GEMM's result) and their
GEMMs take bfloat16 operands; sparse ones are float32, as the per-layer TopK trainer's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tcspec.compute.workspace import Workspace

SPARSE_BELOW = 1 / 64
"""A ReLU or JumpReLU layer's activations go sparse when at most this fraction is nonzero:
a sparse product costs density x `tcspec.plan.cost.SPARSE_COST` (measured 17 to ~60) of the
dense GEMM's time, so below ~1/64 sparse is the faster. TopK is always sparse."""


@dataclass
class Dense:
    """Activations a [B, F] as they are (a ws buffer)."""

    a: Tensor

    def count(self) -> Tensor:
        """Nonzero activations (0-d)."""
        return torch.count_nonzero(self.a)

    def decode_into(self, out: Tensor, W: Tensor, ws: Workspace) -> None:
        """out [B, n] += a W, W [F, n] (a GEMM in a's dtype, added into out's)."""
        if self.a.dtype == out.dtype:
            out.addmm_(self.a, W)
        else:
            low = self.a.dtype
            out += torch.mm(
                self.a, low_copy(ws, "W_low", W, low), out=ws.flat("dec", out.shape, low)
            )

    def decoder_grad(self, g: Tensor, ws: Workspace, order=None) -> Tensor:
        """a^T g [F, n], g [B, n] (in `ws`'s flat "grad" buffer, a's dtype)."""
        low = self.a.dtype
        out = ws.flat("grad", (self.a.shape[1], g.shape[1]), low)
        return torch.mm(self.a.t(), low_copy(ws, "g_low", g, low), out=out)


@dataclass
class Sparse:
    """Activations as CSR by token: token b's are val[crow[b]:crow[b+1]] at features
    col[...]; `by_feature` orders the same entries by feature for the transposed products."""

    crow: Tensor  # long [B + 1]
    col: Tensor  # long [nnz]
    val: Tensor  # [nnz]
    d_sae: int

    @classmethod
    def from_topk(cls, idx: Tensor, vals: Tensor, d_sae: int) -> Sparse:
        """idx, vals [B, k]: k active features a token."""
        B, k = idx.shape
        crow = torch.arange(0, B * k + 1, k, device=idx.device)
        return cls(crow, idx.reshape(-1), vals.reshape(-1), d_sae)

    @classmethod
    def from_dense(cls, a: Tensor, dtype: torch.dtype) -> Sparse:
        """The nonzero entries of a [B, F], their values in `dtype`."""
        rows, col = a.nonzero(as_tuple=True)
        crow = torch.zeros(a.shape[0] + 1, dtype=torch.long, device=a.device)
        torch.cumsum(torch.bincount(rows, minlength=a.shape[0]), 0, out=crow[1:])
        return cls(crow, col, a[rows, col].to(dtype), a.shape[1])

    def count(self) -> Tensor:
        return torch.count_nonzero(self.val)

    def dense(self, out: Tensor) -> Tensor:
        """a [B, F] into `out`."""
        return out.zero_().index_put_((self.rows(), self.col), self.val.to(out.dtype))

    def rows(self) -> Tensor:
        """Token of each entry, long [nnz]."""
        counts = self.crow.diff()
        return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)

    def decode_into(self, out: Tensor, W: Tensor, ws: Workspace) -> None:
        """out [B, n] += a W, W [F, n]."""
        out += F.embedding_bag(self.col, W, self.crow[:-1], per_sample_weights=self.val,
                               mode="sum")  # fmt: skip

    def at_active(self, g: Tensor, W: Tensor) -> Tensor:
        """(g W^T) at the active entries, [nnz]; g [B, n], W [F, n]."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            shape = (len(self.crow) - 1, self.d_sae)
            pattern = torch.sparse_csr_tensor(self.crow, self.col, self.val, shape)
        return torch.sparse.sampled_addmm(pattern, g, W.t(), beta=0.0).values()

    def by_feature(self) -> tuple[Tensor, Tensor, Tensor]:
        """(perm, token of each entry in feature order, each feature's first entry [F])."""
        perm = torch.argsort(self.col, stable=True)
        starts = torch.zeros(self.d_sae, dtype=torch.long, device=self.col.device)
        torch.cumsum(torch.bincount(self.col, minlength=self.d_sae)[:-1], 0, out=starts[1:])
        return perm, self.rows()[perm], starts

    def transposed_product(self, values: Tensor, M: Tensor, order) -> Tensor:
        """sum over each feature's entries of values x M[token]: [F, M.shape[1]] (a^T g with
        values = val; d pre^T x with values = d pre at the active entries)."""
        perm, tokens, starts = order
        return F.embedding_bag(tokens, M, starts, per_sample_weights=values[perm], mode="sum")

    def decoder_grad(self, g: Tensor, ws: Workspace, order=None) -> Tensor:
        """a^T g [F, n], g [B, n]."""
        return self.transposed_product(self.val, g, order or self.by_feature())


def low_copy(ws: Workspace, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
    """t itself when it is in `dtype`, else a copy in `ws`'s flat buffer `name` (one for
    every shape: each layer's decoder has its own)."""
    if t.dtype == dtype:
        return t
    return ws.flat(name, t.shape, dtype).copy_(t)
