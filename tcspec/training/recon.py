"""The reconstruction loss of one prediction and its gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace


def reconstruction(
    e: Tensor, y: Tensor, loss: str, ws: Workspace | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-element term [B, d_out], rec as a 0-d tensor, g = d rec / d y_hat [B, d_out]);
    the two [B, d_out] tensors in `ws`'s buffers when given (fresh ones otherwise)."""
    B, d_out = e.shape
    fresh = ws is None
    sq = torch.mul(e, e, out=None if fresh else ws.get("rec_elem", e.shape, e.dtype))
    g = torch.empty_like(e) if fresh else ws.get("g_rec", e.shape, e.dtype)
    if loss == "squared_error":
        return sq, sq.sum() / B, torch.mul(e, 2.0 / B, out=g)
    inv_norm = y.norm(dim=1, keepdim=True).reciprocal_()  # [B, 1]
    rec_elem = sq.mul_(inv_norm)
    return rec_elem, rec_elem.mean(), torch.mul(e, 2.0 / (B * d_out), out=g).mul_(inv_norm)
