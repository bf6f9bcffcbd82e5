"""Adam's moments for one dictionary, and the step, as torch.optim.Adam computes it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace

ADAM_EPS = 1e-8


@dataclass
class AdamState:
    """First and second moments by parameter name (each shaped as its parameter)."""

    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]

    @classmethod
    def zeros(cls, params: dict[str, Tensor]) -> AdamState:
        return cls(
            exp_avg={k: torch.zeros_like(p) for k, p in params.items()},
            exp_avg_sq={k: torch.zeros_like(p) for k, p in params.items()},
        )

    @torch.no_grad()
    def step(
        self,
        params: dict[str, Tensor],
        grads: dict[str, Tensor],
        t: int,
        lr: float,
        betas: tuple[float, float],
        ws: Workspace,
        lr_of: dict[str, float] | None = None,
    ) -> None:
        """Adam step `t` (1-based) as torch.optim.Adam (no weight decay, eps 1e-8), in place;
        `lr_of` gives some parameters their own learning rate (a parameter group)."""
        for k, p in params.items():
            rate = (lr_of or {}).get(k, lr)
            adam_update(p, grads[k], self.exp_avg[k], self.exp_avg_sq[k], t, rate, betas, ws)

    @torch.no_grad()
    def reset_features(self, idx: Tensor) -> None:
        """Zero both moments of features `idx` (long [n]) in W_enc, b_enc and W_dec."""
        for state in (self.exp_avg, self.exp_avg_sq):
            state["W_enc"][:, idx] = 0.0
            state["b_enc"][idx] = 0.0
            state["W_dec"][idx] = 0.0


@torch.no_grad()
def adam_update(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, lr: float, betas: tuple, ws: Workspace
) -> None:
    """Adam step `t` (1-based) of one tensor p from its gradient g, moments m, v in place,
    as torch.optim.Adam's single-tensor path (no weight decay, eps 1e-8); its temporary is
    `ws`'s flat "denom" buffer, one for every shape."""
    b1, b2 = betas
    bc1, bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = torch.sqrt(v, out=ws.flat("denom", v.shape)).div_(bc2_sqrt).add_(ADAM_EPS)
    p.addcdiv_(m, denom, value=-lr / bc1)
