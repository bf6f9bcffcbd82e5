"""ReLU dictionaries: z = relu(pre); dense decoder and gradients (every feature may fire)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.coders import Coder
from tcspec.train.workspace import Workspace


@dataclass
class Codes:
    z: Tensor  # [B, S] activations (the pre-activation buffer, rectified in place)

    def l1_sum(self) -> Tensor:
        """sum_b sum_i z_bi (z >= 0, so this is sum |z|)."""
        return self.z.sum()

    def extra_terms(self) -> dict[str, Tensor]:
        return {}

    def fired(self, ws: Workspace) -> Tensor:
        """Tokens each feature fired on (z > 0), float [S]; in the free `dz` buffer."""
        return torch.sign(self.z, out=ws.get("dz", self.z.shape)).sum(0)

    def dense(self, ws: Workspace) -> Tensor:
        """The activations z [B, S] (already dense)."""
        return self.z


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts=None):
    """pre [B, S] (overwritten) -> (codes, z W_dec + b_out [B, d_out])."""
    z = pre.clamp_min_(0)  # [B, S]
    y_hat = torch.addmm(coder.b_out, z, coder.W_dec, out=ws.get("y_hat", out_shape))
    return Codes(z), y_hat


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec from g = d rec / d y_hat [B, d_out].

    d pre = (g W_dec^T + l1/B) * [z > 0]  [B, S], plus the dead-feature term's gradient
    `dead` = (dead_idx [n], d term / d pre_dead [B, n]) when there is one.
    """
    z = codes.z
    dz = ws.get("dz", z.shape)
    bias = torch.tensor(l1_b, dtype=z.dtype, device=z.device)
    torch.addmm(bias, g, coder.W_dec.t(), out=dz)  # [B, S]
    torch.ops.aten.threshold_backward.grad_input(dz, z, 0.0, grad_input=dz)
    return encoder_grads(coder, xc, dz, dead, ws) | {
        "W_dec": torch.mm(z.t(), g, out=ws.get("gW_dec", coder.W_dec.shape)),  # [S, d_out]
    }


def encoder_grads(coder: Coder, xc: Tensor, dz: Tensor, dead, ws: Workspace) -> dict:
    """W_enc and b_enc gradients from d pre [B, S] (the dead-feature term added in place);
    xc [B, d_in] is the centred input."""
    if dead is not None:
        dz.index_add_(1, dead[0], dead[1])
    return {
        "W_enc": torch.mm(xc.t(), dz, out=ws.get("gW_enc", coder.W_enc.shape)),  # [d_in, S]
        "b_enc": torch.sum(dz, 0, out=ws.get("gb_enc", coder.b_enc.shape)),  # [S]
    }
