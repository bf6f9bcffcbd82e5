"""BatchTopK dictionaries (Bussmann et al. 2024): in training, the k * B largest ReLU'd
pre-activations over the whole batch of B tokens are kept; at inference, the threshold form
z = pre * [pre > theta] with one theta for all features.

theta is estimated in training as SAELens does (`update_topk_threshold`): each step,
theta <- (1 - r) theta + r * m, m the smallest positive kept activation of the batch, r =
`batchtopk_threshold_lr` (0.01); unlike SAELens (which starts at 0) the first step sets
theta = m, as dictionary_learning's estimate does, so short runs are not biased toward 0.
The gradient is ReLU's with z's mask, so `relu.backward` serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace
from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families import relu

backward, trained, rates = relu.backward, relu.trained, relu.rates


def activate(pre: Tensor, k=None, threshold: Tensor | None = None, bandwidth=None) -> Tensor:
    """The inference form z = pre * [pre > threshold]: [..., S]."""
    return pre * (pre > threshold)


def reference(coder: Coder, pre: Tensor, opts, dead, log_threshold=None):
    """(z [B, S], no extra terms) through autograd: the k * B largest ReLU'd
    pre-activations of the batch."""
    vals, idx = torch.relu(pre).reshape(-1).topk(coder.cfg.k * pre.shape[0])
    return torch.zeros_like(pre).reshape(-1).scatter(0, idx, vals).view_as(pre), {}


@dataclass
class Codes(relu.Codes):
    min_kept: Tensor  # 0-d: the smallest positive kept activation (nan if none)


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts):
    """pre [B, S] (overwritten) -> (codes, z W_dec + b_out [B, d_out])."""
    B = pre.shape[0]
    vals, idx = pre.view(-1).topk(coder.cfg.k * B)  # [k B] over the whole batch
    vals.clamp_min_(0)
    z = pre.zero_()
    z.view(-1).scatter_(0, idx, vals)  # [B, S]
    pos = vals[vals > 0]
    min_kept = pos.min() if pos.numel() else torch.tensor(float("nan"))
    return Codes(z, min_kept), relu.decode(coder, z, out_shape, ws)


# ------------------------------------------------------------- the trainer's state hooks
def state() -> dict[str, Tensor]:
    """The running estimate of the inference threshold (0-d float64, nan until the first
    step)."""
    return {"topk_threshold": torch.tensor(float("nan"), dtype=torch.float64)}


def update(state: dict[str, Tensor], codes: Codes, opts) -> None:
    """The estimate after a step (`update_threshold`, at `batchtopk_threshold_lr`)."""
    update_threshold(state["topk_threshold"], codes, opts.batchtopk_threshold_lr)


@torch.no_grad()
def sync(coder: Coder, params: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """coder.threshold <- the estimate (0 before the first step)."""
    theta = state["topk_threshold"]
    coder.threshold.fill_(0.0 if torch.isnan(theta) else float(theta))


@torch.no_grad()
def update_threshold(theta: Tensor, codes: Codes, rate: float) -> None:
    """theta (0-d float64, nan before the first step) toward the batch's smallest kept
    activation, in place."""
    m = codes.min_kept.double()
    if torch.isnan(m):
        return
    if torch.isnan(theta):
        theta.copy_(m)
    else:
        theta.mul_(1 - rate).add_(m * rate)
