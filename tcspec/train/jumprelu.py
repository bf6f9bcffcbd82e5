"""JumpReLU dictionaries (Rajamanoharan et al. 2024; SAELens, Gemma Scope).

    z_bi  = pre_bi * H(pre_bi - theta_i)        theta = exp(log_threshold), trained
    L0    = l0_coef * (1/B) sum_b sum_i H(pre_bi - theta_i)       (the "step" form)

H has no gradient; the threshold gets the rectangle-kernel pseudo-derivatives with
bandwidth eps, K(u) = 1[-1/2 < u < 1/2] (SAELens `JumpReLU`, `Step`):

    d z_bi / d theta_i = -(theta_i / eps) K((pre_bi - theta_i) / eps),  d z_bi / d pre_bi = H
    d L0 / d theta_i   = l0_coef * (1/B) sum_b -(1/eps) K((pre_bi - theta_i) / eps)

and d / d log_threshold = theta * d / d theta. Adam steps log_threshold at its own rate
(`jumprelu_threshold_lr`, default `lr`): it moves about that much per step whatever the
gradient's size, so the rate bounds how far the threshold can travel in a run. `JumpReLUFn` and `StepFn` are these
definitions as autograd functions, for the reference loss the tests hold this module to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.coders import Coder
from tcspec.train.relu import encoder_grads
from tcspec.train.workspace import Workspace


@dataclass
class Codes:
    z: Tensor  # [B, S] activations
    pre: Tensor  # [B, S] pre-activations
    l0_coef: float
    bandwidth: float

    def l1_sum(self) -> Tensor:
        return self.z.sum()  # z >= 0: the threshold is positive

    def fired(self, ws: Workspace) -> Tensor:
        return torch.sign(self.z, out=ws.get("dz", self.z.shape)).sum(0)

    def extra_terms(self) -> dict[str, Tensor]:
        """{"l0_loss": l0_coef * mean_b sum_i H(pre - theta)}."""
        return {"l0_loss": self.fired_count() * (self.l0_coef / self.z.shape[0])}

    def fired_count(self) -> Tensor:
        return (self.z > 0).sum().to(self.z.dtype)


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 for -1/2 < u < 1/2, else 0 (same dtype as u)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts):
    """pre [B, S] -> (codes, z W_dec + b_out [B, d_out]); theta is `coder.threshold`."""
    z = torch.mul(pre, pre > coder.threshold, out=ws.get("zj", pre.shape))  # [B, S]
    y_hat = torch.addmm(coder.b_out, z, coder.W_dec, out=ws.get("y_hat", out_shape))
    return Codes(z, pre, opts.l0_coef, opts.jumprelu_bandwidth), y_hat


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec and log_threshold from g = d rec / d y_hat."""
    z, pre, theta, eps = codes.z, codes.pre, coder.threshold, codes.bandwidth
    B = z.shape[0]
    on = (pre > theta).to(z.dtype)  # [B, S] H(pre - theta)
    dz = torch.mm(g, coder.W_dec.t(), out=ws.get("dz", z.shape))  # [B, S] d rec / d z
    dz.add_(on, alpha=l1_b)  # + d L1 / d z = l1/B sign(z)
    K = rectangle((pre - theta) / eps)  # [B, S]
    g_theta = (dz * K).sum(0).mul_(-theta / eps)  # [S] from the reconstruction and L1
    g_theta -= K.sum(0) * (codes.l0_coef / (B * eps))  # from the L0 penalty
    dz.mul_(on)  # d pre
    return encoder_grads(coder, xc, dz, dead, ws) | {
        "W_dec": torch.mm(z.t(), g, out=ws.get("gW_dec", coder.W_dec.shape)),  # [S, d_out]
        "log_threshold": g_theta * theta,  # [S]
    }


class JumpReLUFn(torch.autograd.Function):
    """z = pre * H(pre - theta) with the pseudo-derivative for theta (reference only)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        K = rectangle((pre - theta) / ctx.eps)
        return grad * (pre > theta), (-(theta / ctx.eps) * K * grad).sum(0), None


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
