"""A CLT decoder's column parts: how wide they are (`part_bytes`, `part_width`) and how the
decoder is held while it trains.

A source layer's decoder W [F, m, d] (m output layers) is read by the sparse products
(`tcspec.training.clt_codes.Sparse`) a column part [F, w] at a time, through its parts view
[m, n, F, w] (n = d / w, `as_parts`): strided views of the [F, m, d] layout, or contiguous
ones when W is held part-major (`to_part_major`). A TopK CLT always decodes sparsely, so its
trainer holds every decoder and its Adam moments part-major for the whole run
(`hold_for_training`): at F 8,192, d 768, 12 layers, batch 4,096 its sparse products take
~20% less time, as no part is copied out of a strided layout or into one. Adam is
elementwise and each product sums in the same order either way, so the steps are
bitwise those of the [F, m, d] layout; only the decoder norms (`decoder_norms`) sum in
another order. Checkpoints keep the layout and record its w; the saved CLT is [F, m, d].
"""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.compute import cache_bytes, cpu_vendor

MAX_PART_BYTES = 16 * 2**20
"""The part size where the caches are not reported, and the most half an L3 gives."""


def part_bytes() -> int:
    """The most bytes of a decoder's [F, w] column part that a sparse product reads at a
    time, so that the part stays cached across the batch's tokens (each reads k random rows).

    Measured on the TopK CLT step at F 8192, d 768, 12 layers, batch 4096, 2 threads. On an
    AMD Zen 4 (1 MB L2 a core, a fast 32 MB L3), decoders in the [F, m, d] layout: 16 MB
    parts (half the L3; an output layer's 24 MB block in two) ran 1.4x faster than whole
    blocks, the whole [F, m d] decoder 2-3x slower. On an Intel Xeon (2 MB L2 a core, its L3
    a slower mesh), [F, m, d] layout: 2-4 MB parts stepped in 6.1-6.5 s, 8 MB in 7.2, 16 MB
    in 8.0, 1 MB in 7.1; held part-major, 2 MB parts (the L2) in 5.8 s against 6.2 for
    4 MB (the three products of a 12-layer block: 376 against 446 ms; 1 MB: 454). So the L2
    on Intel, half the L3 (at most 16 MB) elsewhere (not measured part-major); 16 MB where
    the caches are not reported.
    """
    l2, l3 = cache_bytes(2), cache_bytes(3)
    if cpu_vendor() == "GenuineIntel" and l2:
        return l2
    return min(MAX_PART_BYTES, l3 // 2) if l3 else MAX_PART_BYTES


PART_BYTES = part_bytes()
"""This CPU's `part_bytes()`."""


def part_width(d_sae: int, d: int, itemsize: int, limit: int | None = None) -> int:
    """w of a decoder [F, m, d]'s column parts [F, w]: the widest divisor of d whose part
    holds at most `limit` bytes (default `PART_BYTES`; 1 if none does)."""
    limit = limit or PART_BYTES
    fits = [w for w in range(1, d + 1) if d % w == 0 and d_sae * w * itemsize <= limit]
    return max(fits, default=1)


def as_parts(W: Tensor, w: int) -> Tensor:
    """W [F, m, d]'s column parts as [m, n, F, w] (a strided view, n = d / w); a W held
    part-major ([m, n, F, w] already) as it is."""
    if W.dim() == 4:
        return W
    F, m, d = W.shape
    return W.view(F, m, d // w, w).permute(1, 2, 0, 3)


def to_part_major(W: Tensor, w: int) -> Tensor:
    """W [F, m, d] held part-major: contiguous [m, n, F, w]."""
    return as_parts(W, w).contiguous()


def to_canonical(P: Tensor) -> Tensor:
    """A part-major P [m, n, F, w] as contiguous [F, m, n w]."""
    m, n, F, w = P.shape
    return P.permute(2, 0, 1, 3).reshape(F, m, n * w).contiguous()


def relayout(t: Tensor, width: int | None, to: int | None) -> Tensor:
    """A decoder (or its moment) held at part width `width` (None: [F, m, d]) held at `to`."""
    if width == to:
        return t
    t = to_canonical(t) if width else t
    return to_part_major(t, to) if to else t


def decoder_norms(clt) -> Tensor:
    """`CLT.decoder_norms` [L, F] of a CLT whose decoders may be held part-major (then each
    part's row norms first)."""
    if clt.W_dec[0].dim() == 3:
        return clt.decoder_norms()
    norm = torch.linalg.vector_norm
    return torch.stack([norm(norm(W, dim=-1), dim=(0, 1)) for W in clt.W_dec])


def per_feature(v: Tensor, W: Tensor) -> Tensor:
    """v [F] shaped to scale W's rows, W [F, m, d] or part-major [m, n, F, w]."""
    return v[:, None] if W.dim() == 4 else v[:, None, None]


def train_width(cfg) -> int | None:
    """The part width a CLT trains its decoders held at: TopK (always sparse) part-major at
    this CPU's `part_width` of its float32 decoders; None (the [F, m, d] layout, which the
    dense GEMMs read) for the families that may decode densely."""
    if not cfg.family.takes_k:
        return None
    return part_width(cfg.d_sae, cfg.d_model, torch.float32.itemsize)


@torch.no_grad()
def hold(clt, adam, width: int | None, to: int | None) -> None:
    """Hold each of the CLT's decoders, and its two moments in `adam` (an `AdamState`), at
    part width `to` instead of `width`, in place (one decoder's copy at a time)."""
    for i, W in enumerate(clt.W_dec):
        W.data = relayout(W.data, width, to)
        for state in (adam.exp_avg, adam.exp_avg_sq):
            state[f"W_dec.{i}"] = relayout(state[f"W_dec.{i}"], width, to)


def hold_for_training(clt, adam) -> int | None:
    """Hold a fresh CLT's decoders and moments as its trainer does (at `train_width`); that
    width."""
    width = train_width(clt.cfg)
    hold(clt, adam, None, width)
    return width
