"""The reconstruction loss of one prediction and its gradient."""

from __future__ import annotations

from torch import Tensor


def reconstruction(e: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """(per-element term [B, d_out], rec as a 0-d tensor, g = d rec / d y_hat [B, d_out])."""
    B, d_out = e.shape
    if loss == "squared_error":
        rec_elem = e.square()  # [B, d_out]
        return rec_elem, rec_elem.sum() / B, e * (2.0 / B)
    inv_norm = y.norm(dim=1, keepdim=True).reciprocal_()  # [B, 1]
    rec_elem = e.square().mul_(inv_norm)
    return rec_elem, rec_elem.mean(), (e * (2.0 / (B * d_out))).mul_(inv_norm)
