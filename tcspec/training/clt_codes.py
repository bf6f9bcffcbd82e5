"""One CLT layer's activations a [B, F], dense or sparse, and the products the training step
takes of them: the decoder forward a W, the decoder gradient a^T g, and the encoder
gradients from d pre.

`Sparse` holds only the nonzero activations (CSR by token: k a token for TopK), so the
decoder and its gradients touch those rows alone, as the per-layer TopK trainer does
(`tcspec.dictionaries.families.topk`); the dense [B, F] activations are never formed:

    a W        embedding_bag over each token's active rows of W        [B, n]
    (g W^T)_a  sampled_addmm: g W^T at the active entries only         [nnz]
    a^T g      embedding_bag over each feature's tokens (CSR by feature) [F, n]

(g W^T)_a is taken feature by feature (CSR by feature): a feature's row of W against its
tokens' rows of g, twice as fast as token by token. A source layer's decoder W [F, m, d]
(m output layers) is taken a column part [F, w] of at most `clt_layout.PART_BYTES` at a
time: the whole [F, m d] does not fit in cache and each token reads k random rows of it,
while a part stays cached across the batch, as the per-layer TopK trainer's [F, d] decoder
does. The products read W through its parts view [m, n, F, w] (`tcspec.training.clt_layout`):
strided parts of the [F, m, d] layout, or contiguous ones of a decoder held part-major, as
the TopK trainer holds them. Each sums in a fixed order, the same in both layouts, so a step
is bitwise reproducible on CPU. In `precision: bf16` dense activations are bfloat16 (the
encoder GEMM's result) and their GEMMs take bfloat16 operands; sparse ones are float32, as
the per-layer TopK trainer's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tcspec.compute.sparse import feature_major, sum_by_feature
from tcspec.compute.workspace import Workspace
from tcspec.training.clt_layout import as_parts, part_width

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
        """out [B, m, d] += a W, W [F, m, d] (one GEMM in a's dtype, added into out's)."""
        out, W = out.view(out.shape[0], -1), flat_decoder(W)
        if self.a.dtype == out.dtype:
            out.addmm_(self.a, W)
        else:
            low = self.a.dtype
            out += torch.mm(
                self.a, low_copy(ws, "W_low", W, low), out=ws.flat("dec", out.shape, low)
            )

    def decoder_grad(self, g: Tensor, ws: Workspace, order, W: Tensor) -> Tensor:
        """a^T g [F, m, d] for g [B, m, d], W [F, m, d] (in `ws`'s flat "grad" buffer, a's
        dtype)."""
        flat_decoder(W)  # refuses a part-major W: the gradient must be held as W is
        low, (B, m, d) = self.a.dtype, g.shape
        out = ws.flat("grad", (self.a.shape[1], m * d), low)
        gW = torch.mm(self.a.t(), low_copy(ws, "g_low", g.reshape(B, -1), low), out=out)
        return gW.view(-1, m, d)


class ByFeature(NamedTuple):
    """A `Sparse`'s entries in feature order (CSR by feature, [F, B])."""

    perm: Tensor  # long [nnz]: entry e in feature order is entry perm[e] in token order
    tokens: Tensor  # long [nnz]: its token
    crow: Tensor  # long [F + 1]: feature f's entries are crow[f]:crow[f+1]
    val: Tensor  # [nnz]: its activation


@dataclass
class Sparse:
    """Activations as CSR by token: token b's are val[crow[b]:crow[b+1]] at features
    col[...]; `by_feature` orders the same entries by feature for the transposed products.
    `part_bytes`: the most bytes of a decoder's [F, w] column part that a product reads
    (None: `tcspec.training.clt_layout.PART_BYTES`)."""

    crow: Tensor  # long [B + 1]
    col: Tensor  # long [nnz]
    val: Tensor  # [nnz]
    d_sae: int
    part_bytes: int | None = None

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

    def parts_of(self, W: Tensor) -> Tensor:
        """W's parts view [m, n, F, w]: a part-major W's own, else column parts of W
        [F, m, d] of at most `part_bytes` each (or one column)."""
        if W.dim() == 4:
            return W
        return as_parts(W, part_width(self.d_sae, W.shape[-1], W.element_size(), self.part_bytes))

    def _by_part(self, W: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """W's column parts [m n, F, w] and the same columns of t [B, m, d], [B, m n, w]
        (views: part q is output layer q // n's columns (q % n) w ...)."""
        Wp = self.parts_of(W).flatten(0, 1)
        return Wp, t.view(t.shape[0], -1, Wp.shape[-1])

    def decode_into(self, out: Tensor, W: Tensor, ws: Workspace) -> None:
        """out [B, m, d] += a W, W [F, m, d] or part-major, a column part at a time."""
        Wp, out = self._by_part(W, out)
        for q, Wq in enumerate(Wp):
            out[:, q] += F.embedding_bag(self.col, Wq, self.crow[:-1], per_sample_weights=self.val,
                                         mode="sum")  # fmt: skip

    def at_active(self, g: Tensor, W: Tensor, order: ByFeature) -> Tensor:
        """(g W^T) at the active entries, [nnz] in token order; g [B, m, d], W [F, m, d] or
        part-major: W's parts' products summed, each taken feature by feature (a feature's
        row of W against its tokens' rows of g: twice as fast as token by token), each added
        into the sum in place (1.2x faster than summing fresh parts; the same bits)."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            shape = (self.d_sae, len(self.crow) - 1)
            ga = torch.sparse_csr_tensor(
                order.crow, order.tokens, torch.zeros_like(order.val), shape
            )
        Wp, g = self._by_part(W, g)
        for q, Wq in enumerate(Wp):
            torch.sparse.sampled_addmm(ga, Wq, g[:, q].t(), out=ga)  # ga += part q's
        return torch.empty_like(ga.values()).index_put_((order.perm,), ga.values())

    def by_feature(self) -> ByFeature:
        """The entries in feature order (each feature's in token order)."""
        perm, crow = feature_major(self.col, self.d_sae)
        return ByFeature(perm, self.rows()[perm], crow, self.val[perm])

    def transposed_product(self, values: Tensor, M: Tensor, order: ByFeature) -> Tensor:
        """sum over each feature's entries of values x M[token]: [F, M.shape[1]] (d pre^T x
        with values = d pre at the active entries, in token order)."""
        return sum_by_feature(order.tokens, order.crow, values[order.perm], M)

    def decoder_grad(self, g: Tensor, ws: Workspace, order: ByFeature, W: Tensor) -> Tensor:
        """a^T g for g [B, m, d], held as W is ([F, m, d] or part-major), a column part at a
        time (in `ws`'s flat "grad" buffer: Adam steps a contiguous gradient 2-3x faster
        than its strided parts)."""
        Wp, g = self._by_part(W, g)
        out = ws.flat("grad", W.shape, self.val.dtype)
        parts = as_parts(out, Wp.shape[-1]).flatten(0, 1)  # [m n, F, w], as Wp
        for q in range(len(parts)):
            parts[q] = sum_by_feature(order.tokens, order.crow, order.val, g[:, q])
        return out


def flat_decoder(W: Tensor) -> Tensor:
    """W [F, m, d] as [F, m d], what a dense GEMM reads; a part-major W is refused."""
    if W.dim() != 3:
        raise ValueError("a dense layer's products need its decoder as [F, m, d], not part-major")
    return W.view(W.shape[0], -1)


def low_copy(ws: Workspace, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
    """t itself when it is in `dtype`, else a copy in `ws`'s flat buffer `name` (one for
    every shape: each layer's decoder has its own)."""
    if t.dtype == dtype:
        return t
    return ws.flat(name, t.shape, dtype).copy_(t)
