"""Matryoshka dictionaries (Bussmann et al. 2025; SAELens `MatryoshkaBatchTopKTrainingSAE`):
nested prefixes of the features must each reconstruct on their own.

With prefix widths w_1 < ... < w_n = d_sae, y_hat_w = b_out + z[:, :w] W_dec[:w] (+ x W_skip):

    loss = sum_w rec(y, y_hat_w)       (SAELens: the full loss plus each inner prefix's,
                                        unweighted; no 1/n^2 from averaging weighted terms)

Feature i sits in every prefix w > i, so its gradients use G(i) = sum_{w > i} g_w, g_w =
d rec_w / d y_hat_w: one G per group [w_{j-1}, w_j) of features.

The latents come from the dictionary's own activation over the whole width: BatchTopK (the
paper's, SAELens's) or TopK (k per token), whose sparse codes are made dense here; either
way z = pre * mask, so the gradient to pre is the prefixes' d / d z on the kept features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace
from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families.relu import encoder_grads
from tcspec.training.recon import reconstruction


def widths(opts, d_sae: int) -> list[int]:
    """The prefix widths, d_sae last."""
    ws = [w for w in opts.matryoshka if w < d_sae]
    return [*ws, d_sae]


def prefix_terms(
    coder: Coder, z: Tensor, e: Tensor, y: Tensor, g: Tensor, opts, ws: Workspace
) -> tuple[Tensor, list]:
    """(sum of the inner prefixes' reconstruction losses, [(start, end, G)] per group).

    e = y_hat - y and g = d rec / d y_hat of the full width; z [B, S] dense activations (the
    GEMMs in z's dtype).
    """
    bounds = widths(opts, coder.cfg.d_sae)
    total, gs = torch.zeros((), dtype=e.dtype, device=e.device), []
    W_dec = ws.cast("W_dec_low", coder.W_dec, z.dtype)
    for w in bounds[:-1]:
        e_w = e - z[:, w:] @ W_dec[w:]  # [B, d_out] y_hat_w - y
        _, rec_w, g_w = reconstruction(e_w, y, opts.loss)
        total = total + rec_w
        gs.append(g_w)
    groups, G = [], g.clone()
    for j in range(len(bounds) - 1, -1, -1):  # widest group first: G accumulates inward
        start = bounds[j - 1] if j > 0 else 0
        if j < len(bounds) - 1:
            G = G + gs[j]
        groups.append((start, bounds[j], G))
    return total, groups[::-1]


def backward(
    coder: Coder, z: Tensor, groups, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec of a dense-activation (z = pre * mask, z [B, S])
    dictionary."""
    low = z.dtype
    dz = ws.get("dz", z.shape, low)
    gW_dec = ws.get("gW_dec", coder.W_dec.shape, low)
    W_dec = ws.cast("W_dec_low", coder.W_dec, low)
    for a, b, G in groups:
        G = G.to(low)  # [B, d_out]
        dz[:, a:b] = torch.mm(G, W_dec[a:b].t()).add_(l1_b)  # [B, b - a]
        torch.mm(z[:, a:b].t(), G, out=gW_dec[a:b])  # [b - a, d_out]
    torch.ops.aten.threshold_backward.grad_input(dz, z, 0.0, grad_input=dz)
    return encoder_grads(coder, xc, dz, dead, ws) | {"W_dec": gW_dec}
