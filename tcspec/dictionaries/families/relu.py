"""ReLU dictionaries: z = relu(pre); dense decoder and gradients (every feature may fire).

The family's row in `tcspec.dictionaries.families.FAMILIES`; this module is its maths (the
functions listed there), and the trainer's no-op state hooks the families without a
trained threshold share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace, column_sums, total
from tcspec.dictionaries.coders import Coder


def activate(pre: Tensor, k=None, threshold=None, bandwidth=None) -> Tensor:
    """z = relu(pre) [..., S]."""
    return torch.relu(pre)


def reference(coder: Coder, pre: Tensor, opts, dead, log_threshold=None):
    """(z [B, S], no extra terms) through autograd."""
    return coder.activate(pre), {}


@dataclass
class Codes:
    z: Tensor  # [B, S] activations (the pre-activation buffer, rectified in place)

    def l1_sum(self) -> Tensor:
        """sum_b sum_i z_bi (z >= 0, so this is sum |z|)."""
        return total(self.z)

    def extra_terms(self) -> dict[str, Tensor]:
        return {}

    def fired(self, ws: Workspace) -> Tensor:
        """Tokens each feature fired on (z > 0), float [S]; in the free `dz` buffer."""
        return column_sums(torch.sign(self.z, out=ws.get("dz", self.z.shape, self.z.dtype)))

    def dense(self, ws: Workspace) -> Tensor:
        """The activations z [B, S] (already dense)."""
        return self.z


def forward(coder: Coder, pre: Tensor, out_shape: tuple, ws: Workspace, opts=None):
    """pre [B, S] (overwritten) -> (codes, z W_dec + b_out [B, d_out])."""
    z = pre.clamp_min_(0)  # [B, S]
    return Codes(z), decode(coder, z, out_shape, ws)


def decode(coder: Coder, z: Tensor, out_shape: tuple, ws: Workspace) -> Tensor:
    """y_hat = z W_dec + b_out [B, d_out], a GEMM in z's dtype (bfloat16 in bf16)."""
    low = z.dtype
    b_out, W_dec = ws.cast("b_out_low", coder.b_out, low), ws.cast("W_dec_low", coder.W_dec, low)
    return torch.addmm(b_out, z, W_dec, out=ws.get("y_hat", out_shape, low))


def backward(
    coder: Coder, codes: Codes, g: Tensor, l1_b: float, xc: Tensor, dead, ws: Workspace
) -> dict[str, Tensor]:
    """Gradients of W_enc, b_enc, W_dec from g = d rec / d y_hat [B, d_out].

    d pre = (g W_dec^T + l1/B) * [z > 0]  [B, S], plus the dead-feature term's gradient
    `dead` = (dead_idx [n], d term / d pre_dead [B, n]) when there is one.
    """
    z, low = codes.z, codes.z.dtype
    dz = ws.get("dz", z.shape, low)
    bias = torch.tensor(l1_b, dtype=low, device=z.device)
    g_low, W_dec = ws.cast("g_low", g, low), ws.cast("W_dec_low", coder.W_dec, low)
    torch.addmm(bias, g_low, W_dec.t(), out=dz)  # [B, S]
    torch.ops.aten.threshold_backward.grad_input(dz, z, 0.0, grad_input=dz)
    return encoder_grads(coder, xc, dz, dead, ws) | {
        "W_dec": torch.mm(z.t(), g_low, out=ws.get("gW_dec", coder.W_dec.shape, low)),
    }  # W_dec: [S, d_out]


def encoder_grads(coder: Coder, xc: Tensor, dz: Tensor, dead, ws: Workspace) -> dict:
    """W_enc and b_enc gradients from d pre [B, S] (the dead-feature term added in place);
    xc [B, d_in] is the centred input."""
    low = dz.dtype
    if dead is not None:
        dz.index_add_(1, dead[0], dead[1].to(low))
    xc_low = ws.cast("xc_low", xc, low)
    return {
        "W_enc": torch.mm(xc_low.t(), dz, out=ws.get("gW_enc", coder.W_enc.shape, low)),
        "b_enc": column_sums(dz),  # [S]
    }  # W_enc: [d_in, S]


# ------------------------------------------------------------- the trainer's state hooks
def trained(coder: Coder, opts) -> dict[str, Tensor]:
    """Tensors Adam steps beside the coder's parameters: none."""
    return {}


def rates(opts, factor: float) -> dict[str, float]:
    """Learning rates of those: none."""
    return {}


def state() -> dict[str, Tensor]:
    """Estimates kept in training: none."""
    return {}


def update(state: dict[str, Tensor], codes, opts) -> None:
    """Nothing to estimate."""


def sync(coder: Coder, params: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """No threshold."""
