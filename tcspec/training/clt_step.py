"""One training step of a CLT with its gradients written out by hand: the loss of
`tcspec.dictionaries.clt.clt_loss` (the autograd reference the tests hold this to), and each
parameter stepped by Adam (`tcspec.training.adam.adam_update`) as soon as its gradient is
ready, so that one gradient at a time is held.

With g = d mse / d y_hat = 2 (y_hat - y) / B [B, L d] (layer m at columns m d .. m d + d),
g_l = g[:, l d:] [B, (L - l) d] what layer l's decoders write, W_l = W_dec[l] as
[F, (L - l) d], n_l its rows' norms [F], s the penalty (tanh(c u) or u) at u = a n:

    d a_l     = g_l W_l^T + (coef/B) s'(a n) n                               [B, F]
    d pre_l   = d a_l * [a_l > 0]       (ReLU; TopK at its k entries)
              = d a_l * H(pre - theta) - (pre_coef/B) n [theta > pre]   (JumpReLU)
    d theta_l = -(theta/eps) sum_b K((pre - theta)/eps) d a_l + (pre_coef/B) n sum_b [theta > pre]
    d n_l     = (coef/B) sum_b s'(a n) a + (pre_coef/B) sum_b relu(theta - pre)
    d W_dec[l] = a_l^T g_l + d n_l W_l / n_l          d W_enc[l] = x_l^T d pre_l
    d b_enc[l] = sum_b d pre_l    d b_dec = sum_b g    d W_skip[m] = x_m^T g_m
    d log_threshold = theta d theta

Sparse layers (`tcspec.training.clt_codes.Sparse`: TopK, or a ReLU/JumpReLU layer at most
`sparse_below` dense) decode and take a^T g over their active entries only, and a ReLU or
TopK layer its d a there too; a JumpReLU's d a stays dense (its kernel reaches features
that did not fire). Dense layers are not kept between forward and backward: their
pre-activations are computed again (one [B, d] x [d, F] matmul a layer), so the step holds
O(B F) of activations, not O(L B F).

W_dec[l] is [F, L - l, d], or held part-major [L - l, n, F, w] by a TopK CLT's trainer
(`tcspec.training.clt_layout`): its gradient comes out as it is held, for Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace, column_sums
from tcspec.dictionaries.clt import CLT, CLTLoss
from tcspec.dictionaries.families.jumprelu import rectangle
from tcspec.dictionaries.families.topk import select
from tcspec.training.adam import AdamState, adam_update
from tcspec.training.clt_codes import SPARSE_BELOW, Dense, Sparse, flat_decoder, low_copy
from tcspec.training.clt_layout import decoder_norms, per_feature


@dataclass(frozen=True)
class Hyper:
    """What a step needs besides the batch: the loss, the penalty's warm-up factor, Adam's
    step number (1-based), rate and betas."""

    loss: CLTLoss
    coef_factor: float
    t: int
    lr: float
    betas: tuple[float, float]
    sparse_below: float = SPARSE_BELOW
    gemm: torch.dtype | None = None
    """The dense GEMMs' operand and result dtype (`tcspec.compute.gemm_dtype`; None: the
    CLT's, float32): bfloat16 in `precision: bf16`."""


@torch.no_grad()
def train_step(
    clt: CLT, adam: AdamState, xs: Tensor, ys: Tensor, h: Hyper, ws: Workspace, check=None
) -> dict[str, Tensor]:
    """One step on xs, ys [L, B, d]: the parameters updated in place; returns the terms
    before the update (0-d tensors): loss, mse, penalty, pre_act, count (nonzero acts).
    `check(loss)`, called before any parameter changes, may raise to stop the step."""
    B = xs.shape[1]
    norms = decoder_norms(clt)  # [L, F], of the weights before the step
    y_hat, kept, terms = _forward(clt, xs, h, norms, ws)
    e = y_hat.sub_(ys.transpose(0, 1))  # [B, L, d]
    terms["mse"] = torch.mul(e, e, out=ws.get("e2", e.shape)).sum() / B  # no fresh [B, L, d]
    terms["loss"] = terms["mse"] + terms["penalty"] + terms["pre_act"]
    if check is not None:
        check(terms["loss"])
    g = e.mul_(2.0 / B).view(B, -1)  # [B, L d]
    _backward(clt, adam, xs, g, kept, norms, h, ws)
    return terms


def _forward(clt: CLT, xs: Tensor, h: Hyper, norms: Tensor, ws: Workspace):
    """(y_hat [B, L, d] in ws, the sparse layers' codes (None for a dense layer), terms)."""
    cfg = clt.cfg
    L, d, B = cfg.n_layers, cfg.d_model, xs.shape[1]
    y = ws.get("y_hat", (B, L, d))
    y.copy_(clt.b_dec.expand(B, L, d))
    if cfg.skip:
        for m in range(L):
            y[:, m].addmm_(xs[m], clt.W_skip[m])
    zero = torch.zeros((), dtype=xs.dtype, device=xs.device)
    s_sum, gap_sum, count, kept = zero, zero, zero, []
    for i in range(L):
        codes, pre = _codes(clt, xs[i], i, h, ws)
        codes.decode_into(y[:, i:], clt.W_dec[i], ws)
        if h.loss.coef > 0:
            s_sum = s_sum + _penalty_sum(codes, norms[i], h.loss, ws)
        if _pre_act_on(clt, h):
            gap = torch.sub(clt.threshold[i], pre, out=ws.get("t", pre.shape)).clamp_min_(0)
            gap_sum = gap_sum + gap.mul_(norms[i]).sum()
        count = count + codes.count()
        kept.append(codes if isinstance(codes, Sparse) else None)
    terms = {
        "penalty": h.loss.coef * h.coef_factor * s_sum / B,
        "pre_act": h.loss.pre_act_coef * gap_sum / B,
        "count": count,
    }
    return y, kept, terms


def _pre_act_on(clt: CLT, h: Hyper) -> bool:
    return clt.cfg.family.thresholded and h.loss.pre_act_coef > 0


def _codes(clt: CLT, x: Tensor, i: int, h: Hyper, ws: Workspace, sparse_below=None):
    """(layer i's activations, its pre-activations [B, F] in ws, in the GEMM dtype; for
    ReLU the same buffer, rectified). `sparse_below`: h's unless given."""
    cfg, master = clt.cfg, clt.W_enc.dtype
    low = h.gemm or master
    sparse_below = h.sparse_below if sparse_below is None else sparse_below
    pre = torch.addmm(
        ws.cast("b_enc_low", clt.b_enc[i], low),
        ws.cast("x_low", x, low),
        ws.cast("W_enc_low", clt.W_enc[i], low),
        out=ws.get("pre", (x.shape[0], cfg.d_sae), low),
    )  # [B, F]
    if cfg.family.takes_k:  # TopK
        vals, idx = select(pre, cfg.k)  # [B, k]
        codes = Sparse.from_topk(idx, vals.to(master).clamp_min_(0), cfg.d_sae)
        if sparse_below > 0:
            return codes, pre
        return Dense(codes.dense(ws.get("a", pre.shape, low))), pre
    if not cfg.family.thresholded:  # ReLU
        a = pre.clamp_min_(0)
    else:
        a = torch.mul(pre, pre > clt.threshold[i], out=ws.get("a", pre.shape, low))
    if torch.count_nonzero(a) <= sparse_below * a.numel():
        return Sparse.from_dense(a, master), pre
    return Dense(a), pre


def _penalty_sum(codes, n: Tensor, loss: CLTLoss, ws: Workspace) -> Tensor:
    """sum s(a n) over the layer's activations (0-d)."""
    if isinstance(codes, Sparse):
        u = codes.val * n[codes.col]
    else:
        u = torch.mul(codes.a, n, out=ws.get("t", codes.a.shape))
    return (u.mul_(loss.tanh_scale).tanh_() if loss.penalty == "tanh" else u).sum()


def _penalty_grads(a: Tensor, n: Tensor, h: Hyper, B: int, ga: Tensor, ws: Workspace):
    """Add d penalty / d a (a [..], n broadcast as a) into ga in place; d penalty / d n
    per element of a (a buffer of a's shape), to be summed per feature by the caller."""
    loss, scale = h.loss, h.loss.coef * h.coef_factor / B
    if loss.penalty == "l1":
        ga.add_(n * scale)
        return a * scale
    t = torch.mul(a, n, out=ws.get("t", a.shape)).mul_(loss.tanh_scale).tanh_()
    slope = t.square_().neg_().add_(1.0).mul_(scale * loss.tanh_scale)  # (coef/B) s'(a n)
    ga.addcmul_(slope, n)
    return slope.mul_(a)


def _backward(clt, adam, xs, g, kept, norms, h: Hyper, ws: Workspace) -> None:
    """Every parameter's gradient, each stepped by Adam once it is complete."""
    cfg = clt.cfg
    L, d, F, B = cfg.n_layers, cfg.d_model, cfg.d_sae, g.shape[0]
    g_b_enc = ws.get("g_b_enc", (L, F))
    jump = cfg.family.thresholded  # JumpReLU
    g_theta = ws.get("g_theta", (L, F)) if jump else None
    for i in range(L):
        codes, pre = kept[i], None
        if codes is None or jump:  # computed again, dense
            fresh, pre = _codes(clt, xs[i], i, h, ws, sparse_below=0.0)
            codes = codes or fresh
        W = clt.W_dec[i]  # [F, L - i, d] or part-major
        g_l = g.view(B, L, d)[:, i:]  # [B, L - i, d]
        order = codes.by_feature() if isinstance(codes, Sparse) else None
        if jump:
            d_pre, g_n = _jumprelu_grads(clt, i, pre, g_l, W, norms[i], h, ws, g_theta[i])
        else:
            d_pre, g_n = _rectified_grads(codes, g_l, W, norms[i], h, ws, order)
        gW = _master(codes.decoder_grad(g_l, ws, order, W), W.dtype, ws)  # as W
        if g_n is not None:
            gW.addcmul_(W, per_feature(g_n / norms[i], W))
        _adam(adam, f"W_dec.{i}", W, gW, h, ws)
        _encoder_step(clt, adam, i, xs[i], d_pre, codes, order, g_b_enc[i], h, ws)
    _adam(adam, "b_enc", clt.b_enc, g_b_enc, h, ws)
    if g_theta is not None:
        _adam(adam, "log_threshold", clt.log_threshold, g_theta.mul_(clt.threshold), h, ws)
    _adam(adam, "b_dec", clt.b_dec, g.view(-1, L, d).sum(0), h, ws)
    if cfg.skip:
        for m in range(L):
            gWs = torch.mm(xs[m].t(), g[:, m * d : (m + 1) * d], out=ws.flat("grad", (d, d)))
            _adam(adam, "W_skip", clt.W_skip, gWs, h, ws, index=m)


def _master(grad: Tensor, dtype: torch.dtype, ws: Workspace) -> Tensor:
    """A gradient in the master dtype: itself, or (bf16) a copy in ws's flat "grad32"."""
    return grad if grad.dtype == dtype else ws.flat("grad32", grad.shape).copy_(grad)


def _adam(adam: AdamState, name: str, p: Tensor, grad: Tensor, h: Hyper, ws, index=None):
    """Step parameter `name` (or its slice `index`) from its gradient."""
    grad = _master(grad, p.dtype, ws)
    m, v = adam.exp_avg[name], adam.exp_avg_sq[name]
    if index is not None:
        p, m, v = p[index], m[index], v[index]
    adam_update(p, grad, m, v, h.t, h.lr, h.betas)


def _rectified_grads(codes, g_l, W, n, h: Hyper, ws, order):
    """ReLU / TopK: (d pre: [B, F] dense or [nnz] at the active entries, d n [F] or None)."""
    B = g_l.shape[0]
    if isinstance(codes, Sparse):
        ga = codes.at_active(g_l, W, order)  # [nnz]
        g_n = None
        if h.loss.coef > 0:
            per = _penalty_grads(codes.val, n[codes.col], h, B, ga, ws)
            g_n = torch.zeros_like(n).index_add_(0, codes.col, per)
        return ga.mul_(codes.val > 0), g_n
    a = codes.a
    ga = _dense_grad_of_acts(g_l, W, a.dtype, ws)  # [B, F]
    g_n = _penalty_grads(a, n, h, B, ga, ws).sum(0) if h.loss.coef > 0 else None
    torch.ops.aten.threshold_backward.grad_input(ga, a, 0.0, grad_input=ga)
    return ga, g_n


def _jumprelu_grads(clt, i, pre, g_l, W, n, h: Hyper, ws, g_theta: Tensor):
    """JumpReLU: (d pre [B, F], d n [F] or None); d theta into g_theta [F]."""
    theta, eps, B = clt.threshold[i], h.loss.bandwidth, g_l.shape[0]
    a = torch.mul(pre, pre > theta, out=ws.get("a", pre.shape, pre.dtype))
    ga = _dense_grad_of_acts(g_l, W, pre.dtype, ws)  # [B, F]
    g_n = _penalty_grads(a, n, h, B, ga, ws).sum(0) if h.loss.coef > 0 else None
    K = rectangle((pre - theta) / eps)  # [B, F]
    torch.sum(K.mul_(ga), 0, out=g_theta).mul_(-theta / eps)
    d_pre = ga.mul_(pre > theta)
    if _pre_act_on(clt, h):
        c = h.loss.pre_act_coef / B
        below = (pre < theta).to(pre.dtype)  # relu'(theta - pre)
        d_pre.addcmul_(below, n, value=-c)
        g_theta.add_(below.sum(0) * n * c)
        gap = torch.sub(theta, pre, out=ws.get("t", pre.shape)).clamp_min_(0).sum(0) * c
        g_n = gap if g_n is None else g_n + gap
    return d_pre, g_n


def _dense_grad_of_acts(g_l: Tensor, W: Tensor, low: torch.dtype, ws: Workspace) -> Tensor:
    """g_l W^T [B, F] for g_l [B, m, d], W [F, m, d]: a GEMM in `low` (in ws's "ga")."""
    g_l, W = g_l.reshape(g_l.shape[0], -1), flat_decoder(W)
    out = ws.get("ga", (g_l.shape[0], W.shape[0]), low)
    return torch.mm(low_copy(ws, "g_low", g_l, low), low_copy(ws, "W_low", W, low).t(), out=out)


def _encoder_step(clt, adam, i, x, d_pre, codes, order, g_b_enc, h: Hyper, ws) -> None:
    """W_enc[i]'s gradient x^T d pre, stepped; b_enc[i]'s into g_b_enc [F]."""
    if d_pre.dim() == 1:  # at the sparse entries
        gW_t = codes.transposed_product(d_pre, x, order)  # [F, d]
        gW = ws.transposed("gW_enc", gW_t, clt.W_enc.dtype)  # [d, F] as W_enc[i], for Adam
        g_b_enc.zero_().index_add_(0, codes.col, d_pre)
    else:
        low = d_pre.dtype
        out = ws.flat("grad", (x.shape[1], d_pre.shape[1]), low)
        gW = torch.mm(ws.cast("x_low", x, low).t(), d_pre, out=out)
        g_b_enc.copy_(column_sums(d_pre))
    _adam(adam, "W_enc", clt.W_enc, gW, h, ws, index=i)
