"""JumpReLU dictionaries (Rajamanoharan et al. 2024; SAELens, Gemma Scope).

    z_bi  = pre_bi * H(pre_bi - theta_i)        theta = exp(log_threshold), trained
    L0    = l0_coef * (1/B) sum_b sum_i H(pre_bi - theta_i)             (`penalty: step`)
          | l0_coef * (1/B) sum_b sum_i tanh(c z_bi n_i)                (`penalty: tanh`)
    P     = pre_act_coef * (1/B) sum_b sum_{i dead} relu(theta_i - pre_bi) n_i   (optional)

with n_i = ||W_dec,i|| and c = `tanh_scale` (SAELens `JumpReLUTrainingSAE.calculate_aux_loss`,
`calculate_pre_act_loss`). H has no gradient; the threshold gets the rectangle-kernel
pseudo-derivatives with bandwidth eps, K(u) = 1[-1/2 < u < 1/2] (SAELens `JumpReLU`, `Step`):

    d z_bi / d theta_i = -(theta_i / eps) K((pre_bi - theta_i) / eps),  d z_bi / d pre_bi = H
    d L0 / d theta_i   = l0_coef * (1/B) sum_b -(1/eps) K((pre_bi - theta_i) / eps)   (step)

The tanh form is a function of z (and n), so its gradient goes where z's does, as SAELens's
autograd takes it through `JumpReLU`: d L0 / d z_bi = (l0_coef / B) c n_i (1 - tanh^2(c z_bi
n_i)) joins the reconstruction's d / d z, reaching pre through H and theta through -(theta /
eps) K (also where z = 0 inside the kernel, where the slope is (l0_coef / B) c n_i); and
d L0 / d n_i = (l0_coef / B) c sum_b z_bi (1 - tanh^2) reaches W_dec,i along W_dec,i / n_i.

P (SAELens: "only for latents that are actually dead"; dead: not fired for more than
`dead_window` steps) reads pre and theta directly, with no pseudo-derivative:
d P / d pre_bi = -(pre_act_coef / B) n_i [theta_i > pre_bi], d P / d theta_i = (pre_act_coef
/ B) n_i sum_b [theta_i > pre_bi], d P / d n_i = (pre_act_coef / B) sum_b relu(theta_i -
pre_bi), on the dead features i (none else).

d / d log_threshold = theta * d / d theta. Adam steps log_threshold at its own rate
(`jumprelu_threshold_lr`, by default the larger of `lr` and 8 / steps): it moves about that
much per step whatever the gradient's size, so the rate bounds how far the threshold can
travel in a run.

Units: the decoder rows have unit norm, so z_i is the norm of feature i's contribution to
the (unnormalised) target, and the threshold, bandwidth and tanh's 1 / c are in those
units. SAELens and Anthropic (Jan 2025) train on activations scaled to per-dimension RMS 1
with free decoder norms n_i: their threshold on f_i is tcspec's theta_i / (s n_i), their
bandwidth eps / (s n_i) and their c is tcspec's c s, with s the target's per-dimension RMS. `JumpReLUFn` and `StepFn` are these
definitions as autograd functions, for the reference loss the tests hold this module to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace, column_sums, total
from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families import relu
from tcspec.dictionaries.families.relu import decode, encoder_grads

state, update = relu.state, relu.update


@dataclass
class Tanh:
    """The tanh penalty's pieces, for its value and its gradient."""

    t: Tensor  # [B, S] tanh(c z n)
    norms: Tensor  # [S] n = ||W_dec,i||
    scale: float  # c


@dataclass
class Codes:
    z: Tensor  # [B, S] activations
    pre: Tensor  # [B, S] pre-activations
    l0_coef: float
    bandwidth: float
    tanh: Tanh | None = None  # set for `penalty: tanh`

    def l1_sum(self) -> Tensor:
        return total(self.z)  # z >= 0: the threshold is positive

    def fired(self, ws: Workspace) -> Tensor:
        return column_sums(torch.sign(self.z, out=ws.get("dz", self.z.shape, self.z.dtype)))

    def extra_terms(self) -> dict[str, Tensor]:
        """{"l0_loss": l0_coef * mean_b sum_i H(pre - theta) or tanh(c z n)}."""
        count = self.fired_count() if self.tanh is None else self.tanh.t.sum()
        return {"l0_loss": count * (self.l0_coef / self.z.shape[0])}

    def fired_count(self) -> Tensor:
        return (self.z > 0).sum().to(self.term_dtype())

    def term_dtype(self) -> torch.dtype:
        """The dtype of the loss terms: z's, float32 for a bfloat16 z."""
        return torch.float32 if self.z.dtype == torch.bfloat16 else self.z.dtype


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 for -1/2 < u < 1/2, else 0 (same dtype as u)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def activate(pre: Tensor, k=None, threshold: Tensor | None = None, bandwidth=None) -> Tensor:
    """z = pre * H(pre - theta), pre [..., S], theta = `threshold` [S]; with a `bandwidth`,
    through `JumpReLUFn` (theta's pseudo-derivative under autograd: a CLT's forward)."""
    if bandwidth is None:
        return pre * (pre > threshold)
    return JumpReLUFn.apply(pre, threshold, bandwidth)


def reference(coder: Coder, pre: Tensor, opts, dead: Tensor | None, log_threshold=None):
    """(z [B, S], {l0_loss (step or tanh), pre_act_loss}) through autograd, as SAELens's
    `calculate_aux_loss` writes them, through the pseudo-derivatives of `JumpReLUFn` and
    `StepFn`; theta = exp(`log_threshold`), default the coder's threshold."""
    lt = log_threshold if log_threshold is not None else coder.threshold.log()
    theta = lt.exp()
    B, eps, extra = pre.shape[0], opts.jumprelu_bandwidth, {}
    z = JumpReLUFn.apply(pre, theta, eps)
    norms = coder.W_dec.norm(dim=1)  # [S]
    if opts.penalty == "tanh":
        extra["l0_loss"] = opts.l0_coef * torch.tanh(opts.tanh_scale * z * norms).sum() / B
    else:
        extra["l0_loss"] = opts.l0_coef * StepFn.apply(pre, theta, eps).sum() / B
    if opts.pre_act_coef is not None:
        on = dead if dead is not None else torch.zeros_like(theta, dtype=torch.bool)
        gap = torch.relu(theta - pre) * on * norms  # [B, S]
        extra["pre_act_loss"] = opts.pre_act_coef * gap.sum() / B
    return z, extra


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts):
    """pre [B, S] -> (codes, z W_dec + b_out [B, d_out]); theta is `coder.threshold`."""
    z = torch.mul(pre, pre > coder.threshold, out=ws.get("zj", pre.shape, pre.dtype))  # [B, S]
    y_hat = decode(coder, z, out_shape, ws)
    tanh = None
    if opts.penalty == "tanh":
        norms = coder.W_dec.norm(dim=1)  # [S]
        t = torch.mul(z, norms * opts.tanh_scale, out=ws.get("tanh", pre.shape)).tanh_()
        tanh = Tanh(t, norms, opts.tanh_scale)
    return Codes(z, pre, opts.l0_coef, opts.jumprelu_bandwidth, tanh), y_hat


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec and log_threshold from g = d rec / d y_hat."""
    z, pre, theta, eps = codes.z, codes.pre, coder.threshold, codes.bandwidth
    B = z.shape[0]
    on = (pre > theta).to(z.dtype)  # [B, S] H(pre - theta)
    g_low, W_dec = ws.cast("g_low", g, z.dtype), ws.cast("W_dec_low", coder.W_dec, z.dtype)
    dz = torch.mm(g_low, W_dec.t(), out=ws.get("dz", z.shape, z.dtype))  # [B, S] d rec / d z
    dz.add_(on, alpha=l1_b)  # + d L1 / d z = l1/B sign(z)
    sech2 = None
    if codes.tanh is not None:  # + d L0 / d z = (l0_coef/B) c n (1 - t^2)
        sech2 = torch.mul(codes.tanh.t, codes.tanh.t, out=ws.get("sech2", z.shape))
        sech2.neg_().add_(1.0)  # [B, S]
        dz.addcmul_(sech2, codes.tanh.norms * (codes.l0_coef * codes.tanh.scale / B))
    K = rectangle((pre - theta) / eps)  # [B, S]
    g_theta = (dz * K).sum(0).mul_(-theta / eps)  # [S] from the reconstruction, L1 (, tanh)
    if codes.tanh is None:
        g_theta -= K.sum(0) * (codes.l0_coef / (B * eps))  # from the step L0 penalty
    dz.mul_(on)  # d pre
    gW_dec = torch.mm(z.t(), g_low, out=ws.get("gW_dec", coder.W_dec.shape, z.dtype))
    if sech2 is not None:  # + d L0 / d n_i along W_dec,i / n_i
        g_n = (z * sech2).sum(0).mul_(codes.l0_coef * codes.tanh.scale / B)  # [S]
        gW_dec.addcmul_(coder.W_dec, (g_n / codes.tanh.norms).unsqueeze(1))
    return encoder_grads(coder, xc, dz, dead, ws) | {
        "W_dec": gW_dec,
        "log_threshold": g_theta * theta,  # [S]
    }


@dataclass
class PreAct:
    """The pre-activation loss P on the dead features `idx` and its gradients there."""

    loss: Tensor  # 0-d
    idx: Tensor  # long [n] the dead features
    g_pre: Tensor  # [B, n] d P / d pre
    g_theta: Tensor  # [n] d P / d theta
    g_W_dec: Tensor  # [n, d_out] d P / d W_dec

    def add_grads(self, grads: dict[str, Tensor], theta: Tensor) -> None:
        """Add d P / d log_threshold and d P / d W_dec into `grads` (d pre goes with the
        dead-feature terms' into the encoder)."""
        grads["log_threshold"].index_add_(0, self.idx, self.g_theta * theta[self.idx])
        grads["W_dec"].index_add_(0, self.idx, self.g_W_dec)


def pre_act(coder: Coder, pre_dead: Tensor | None, idx: Tensor | None, coef: float) -> PreAct:
    """P = coef * mean_b sum_{i in idx} relu(theta_i - pre_bi) n_i; pre_dead [B, n] the dead
    features' pre-activations (None or n = 0: P = 0)."""
    W = coder.W_dec
    if pre_dead is None or idx is None or len(idx) == 0:
        none = torch.zeros(0, dtype=torch.long, device=W.device)
        zero = torch.zeros((), dtype=W.dtype, device=W.device)
        return PreAct(zero, none, W.new_zeros(0, 0), W.new_zeros(0), W.new_zeros(0, W.shape[1]))
    a = coef / pre_dead.shape[0]
    W_dead = W.index_select(0, idx)  # [n, d_out]
    n = W_dead.norm(dim=1)  # [n]
    gap = coder.threshold.index_select(0, idx) - pre_dead  # [B, n] theta - pre
    below = (gap > 0).to(gap.dtype)  # relu'(gap), 0 at 0 as torch's
    gap.clamp_min_(0)
    loss = (gap.sum(0) * n).sum() * a
    g_W_dec = W_dead * (gap.sum(0) * a / n).unsqueeze(1)  # d n / d w = w / n
    return PreAct(loss, idx, below * (-a * n), below.sum(0) * n * a, g_W_dec)


# ------------------------------------------------------------- the trainer's state hooks
def trained(coder: Coder, opts) -> dict[str, Tensor]:
    """log(threshold) [S], from `jumprelu_init_threshold`: Adam steps it in place of the
    threshold."""
    return {"log_threshold": torch.full_like(coder.b_enc, math.log(opts.jumprelu_init_threshold))}


def rates(opts, factor: float) -> dict[str, float]:
    """log_threshold's learning rate: `jumprelu_threshold_lr` on the schedule of `lr`."""
    return {"log_threshold": opts.jumprelu_threshold_lr * factor}


@torch.no_grad()
def sync(coder: Coder, params: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """coder.threshold <- exp(log_threshold)."""
    torch.exp(params["log_threshold"], out=coder.threshold)


class JumpReLUFn(torch.autograd.Function):
    """z = pre * H(pre - theta) with the pseudo-derivative for theta, pre [..., S], theta
    [S]: the per-layer trainer's reference loss and a CLT's autograd forward (`activate`)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        K = rectangle((pre - theta) / ctx.eps)
        g_theta = (-(theta / ctx.eps) * K * grad).reshape(-1, theta.shape[-1]).sum(0)
        return grad * (pre > theta), g_theta, None


class StepFn(torch.autograd.Function):
    """H(pre - theta) with the pseudo-derivative for theta, none for pre (reference only)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        K = rectangle((pre - theta) / ctx.eps)
        return None, (-(1.0 / ctx.eps) * K * grad).sum(0), None
