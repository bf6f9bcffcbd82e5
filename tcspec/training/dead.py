"""What the trainer does for dead features: the ghost-grad and aux-k loss terms (with their
gradients), and resampling. A feature is dead by `tcspec.vocab.is_dead`."""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.dictionaries.coders import Coder
from tcspec.training.adam import AdamState
from tcspec.training.firing import FiringStats

RESAMPLE_ENC_SCALE = 0.2  # resampled encoder columns: 0.2 x mean norm of live columns
DEAD_TERMS = ("ghost_grads", "aux_k")  # the `dead_features` modes that add a loss term


def ghost_term(pre_dead: Tensor, W_dec_dead: Tensor, r: Tensor, rec_elem: Tensor, loss: str):
    """Ghost-grad loss (Anthropic, as in the paper's released code), for the dead features.

    r  [B, d_out] the residual fit (no gradient; see `ghost_residual`),
    g = exp(pre_dead) W_dec_dead  [B, d_out],  g <- g * ||r|| / (2 ||g|| + 1e-6) (scale
    without gradient),  q = (g - r)^2 / ||r||  [B, d_out],
    term = reduce(sg(rec_elem / (q + 1e-6)) * q), with rec_elem the reconstruction loss's
    per-element term and reduce its reduction (mean over elements for normalized_mse, sum
    over dims and mean over tokens for squared_error).
    """
    ghost = torch.exp(pre_dead) @ W_dec_dead  # [B, n_dead] @ [n_dead, d_out] -> [B, d_out]
    r_norm = r.norm(dim=1, keepdim=True)  # [B, 1]
    scale = r_norm / (1e-6 + 2 * ghost.norm(dim=1, keepdim=True))
    ghost = ghost * scale.detach()
    q = (ghost - r).square() / r_norm  # [B, d_out]
    q = (rec_elem / (q + 1e-6)).detach() * q
    return q.mean() if loss == "normalized_mse" else q.sum() / q.shape[0]


def ghost_residual(side: str, x: Tensor, y: Tensor, e: Tensor) -> Tensor:
    """The residual ghost grads fit [B, d_out], with e = y_hat - y: `output`, y - y_hat =
    -e; `input`, x - y_hat = x - y - e (the paper's released code: the transcoder's input
    x in place of its target; d_in = d_out)."""
    return -e if side == "output" else x - y - e


def aux_k_term(pre_dead: Tensor, W_dec_dead: Tensor, y: Tensor, e: Tensor, k_aux: int) -> Tensor:
    """Aux-k loss (Gao et al. 2024) on the dead features, before its coefficient, normalised
    as sparsify's `SparseCoder.forward` normalises it.

    r = y - y_hat = -e (no gradient); z_aux keeps the k = min(k_aux, n_dead) largest dead
    pre-activations per token (ReLU'd); r_hat = z_aux W_dec_dead;
        term = min(n_dead / k_aux, 1) * sum (r_hat - r)^2 / sum (y - mean_b y)^2
    (the total variance of the target, as the FVU's denominator; the scale shrinks the term
    while few features are dead). r_hat has no decoder bias: r already has it subtracted,
    and sparsify's `decode(...) + b_dec` there would make the dead features fit -b_dec too
    (dictionary_learning leaves it out as well).
    """
    n_dead = pre_dead.shape[1]
    k = min(k_aux, n_dead)
    vals, idx = pre_dead.topk(k, dim=1)  # [B, k]
    z_aux = torch.zeros_like(pre_dead).scatter(1, idx, torch.relu(vals))  # [B, n_dead]
    r_hat = z_aux @ W_dec_dead  # [B, d_out]
    scale = min(n_dead / k_aux, 1.0)
    return scale * (r_hat + e).square().sum() / (y - y.mean(0)).square().sum()


def dead_term(opts, d_out: int, pre_dead: Tensor, W_dec_dead: Tensor, x, y, e, rec_elem):
    """The configured dead-feature term (ghost grads, or aux-k times its coefficient), on
    the batch's x [B, d_in], y and e = y_hat - y [B, d_out] (e without gradient); aux-k's
    k_aux defaults to d_out // 2 (sparsify's heuristic, Gao et al. appendix B.1)."""
    if opts.dead_features == "ghost_grads":
        r = ghost_residual(opts.ghost_residual, x, y, e)
        return ghost_term(pre_dead, W_dec_dead, r, rec_elem, opts.loss)
    k_aux = opts.aux_k or d_out // 2
    return opts.aux_k_coef * aux_k_term(pre_dead, W_dec_dead, y, e, k_aux)


def dead_term_grads(opts, coder: Coder, pre_dead: Tensor, dead_idx: Tensor, x, y, e, rec_elem):
    """(term as a 0-d tensor, d term / d pre_dead [B, n_dead], d term / d W_dec_dead
    [n_dead, d_out]) by autograd on the small dead-feature slice only."""
    pre_dead.requires_grad_()
    W_dec_dead = coder.W_dec.index_select(0, dead_idx).requires_grad_()  # [n_dead, d_out]
    with torch.enable_grad():
        aux = dead_term(opts, coder.cfg.d_out, pre_dead, W_dec_dead, x, y, e, rec_elem)
        gpre_dead, gW_dec_dead = torch.autograd.grad(aux, (pre_dead, W_dec_dead))
    return aux.detach(), gpre_dead, gW_dec_dead


@torch.no_grad()
def resample(
    coder: Coder,
    adam: AdamState,
    firing: FiringStats,
    dead_window: int,
    gen: torch.Generator,
    x: Tensor,
    y: Tensor,
    e: Tensor,
) -> int:
    """Re-initialize the dead features; returns how many.

    Tokens are drawn with probability proportional to their squared error squared; a dead
    feature's encoder column becomes the token's unit (x - b_dec) times 0.2 x the mean
    norm of live encoder columns, its decoder row the token's unit (y - b_out), its b_enc
    0, and its Adam moments 0. The residual `e` is the batch's, before this step's update.
    (The released code's learning-rate warm-back after resampling is not reproduced.)
    """
    dead = firing.dead(dead_window)  # [S]
    n = int(dead.sum())
    err = e.square().sum(1).square().cpu()  # [B]
    if n == 0 or not err.sum() > 0:
        return 0
    idx = dead.nonzero().squeeze(1)
    rows = torch.multinomial(err, n, replacement=True, generator=gen).to(x.device)
    c = coder
    xin = x[rows] - c.b_dec  # [n, d_in]
    xin /= xin.norm(dim=1, keepdim=True).clamp_min(1e-8)
    yout = y[rows] - c.b_out  # [n, d_out]
    yout /= yout.norm(dim=1, keepdim=True).clamp_min(1e-8)
    live = ~dead
    enc_norm = c.W_enc[:, live].norm(dim=0).mean() if live.any() else 1.0
    c.W_enc[:, idx] = (xin * enc_norm * RESAMPLE_ENC_SCALE).t()
    c.b_enc[idx] = 0.0
    c.W_dec[idx] = yout
    adam.reset_features(idx)
    firing.since_fired[idx] = 0
    return n
