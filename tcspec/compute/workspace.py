"""Reusable work buffers for the hand-written gradients, and the casts of the bf16 path.

In `precision: bf16` the GEMMs take bfloat16 operands (`Workspace.cast`) and write bfloat16
results, so the [B, d_sae] tensors they make (pre-activations, activations, d pre) are
bfloat16; sums over a batch of them go through `column_sums` and `total`, which keep the
float32 accuracy the statistics need. In float32 every one of these is the plain op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BF16_EXACT_ROWS = 256
"""Rows a bfloat16 sum may span and stay exact on 0/1 values (bf16 holds integers to 256)."""
TRANSPOSE_ROWS = 256
"""Rows of a [n, m] tensor `Workspace.transposed` copies at a time (measured at n 8,192,
m 768: 4 ms against 9 ms for one strided copy_)."""


class Workspace:
    """Reusable buffers by (name, shape, dtype): members of equal shape share them; and
    flat buffers by name, viewed as any shape (one allocation, the largest asked for)."""

    def __init__(self, device, dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """The buffer `name` of `shape`, in `dtype` (default: the workspace's)."""
        dtype = dtype or self.dtype
        key = (name, tuple(shape), dtype)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(shape, device=self.device, dtype=dtype)
        return self.buffers[key]

    def flat(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """A contiguous [shape] view of the flat buffer `name` in `dtype` (default: the
        workspace's), grown to fit."""
        dtype, n = dtype or self.dtype, math.prod(shape)
        buf = self.buffers.get((name, None, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, device=self.device, dtype=dtype)
            self.buffers[(name, None, dtype)] = buf
        return buf[:n].view(shape)

    def cast(self, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
        """`t` in `dtype`: `t` itself when it is already, else a copy in the buffer `name`."""
        if t.dtype == dtype:
            return t
        return self.get(name, t.shape, dtype).copy_(t)

    def transposed(self, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
        """t [n, m]'s transpose in `dtype`, contiguous [m, n], in the buffer `name`: copied
        in blocks of `TRANSPOSE_ROWS` rows of t, which stay in cache (~2x a plain copy_)."""
        out = self.get(name, (t.shape[1], t.shape[0]), dtype)
        for i in range(0, t.shape[0], TRANSPOSE_ROWS):
            out[:, i : i + TRANSPOSE_ROWS].copy_(t[i : i + TRANSPOSE_ROWS].t())
        return out


def column_sums(t: Tensor) -> Tensor:
    """Sums over dim 0 of t [B, S] in t's dtype, or float32 [S] for a bfloat16 t: summed in
    blocks of `BF16_EXACT_ROWS` rows, then the blocks in float32 (counts stay exact)."""
    if t.dtype != torch.bfloat16:
        return t.sum(0)
    B = t.shape[0]
    n = -(-B // BF16_EXACT_ROWS)
    if B % n:  # blocks of equal size: no block exceeds BF16_EXACT_ROWS rows
        return torch.stack([c.sum(0) for c in t.chunk(n)]).float().sum(0)
    return t.reshape(n, B // n, -1).sum(1).float().sum(0)


def total(t: Tensor) -> Tensor:
    """The sum of t's elements, 0-d, as float32 for a bfloat16 t (`column_sums` first)."""
    return column_sums(t).sum() if t.dtype == torch.bfloat16 else t.sum()
