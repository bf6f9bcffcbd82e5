"""The cross-layer transcoder (CLT): an encoder at each of its layers, and decoders from each
layer's features to the MLP output of that layer and of every later one.

With L layers, d = d_model, F = d_sae features per layer, x_l the input hook of layer l
(``ln2.hook_normalized``, or ``hook_resid_mid``) and y_l its MLP output (``hook_mlp_out``):

    a_l     = act(x_l W_enc[l] + b_enc[l])                              [B, F]
    y_hat_m = sum_{l <= m} a_l W_dec[l][:, m - l] + b_dec[m] (+ x_m W_skip[m])   [B, d]

    W_enc [L, d, F], b_enc [L, F], W_dec[l] [F, L - l, d] (one tensor per source layer),
    b_dec [L, d] (indexed by output layer), W_skip [L, d, d] (optional, zero-initialised),
    log_threshold [L, F] (JumpReLU only; threshold = exp(log_threshold)).

There is no input pre-bias (as in circuit-tracer's CrossLayerTranscoder, so its files load
without conversion). act is ReLU; TopK (the k largest pre-activations of each layer per
token, ReLU'd: k active features per layer); or JumpReLU a = z H(z - theta), trained through
the rectangle-kernel pseudo-derivative (SAELens / circuit-tracer / CLT-Forge form).

Loss of a batch (`clt_loss`), `n_l` = the norm of feature i's decoders concatenated over every
output layer it writes, `||W_dec[l][i]||` over the (L - l) x d entries:

    mse     = sum_l (1/B) sum_b ||y_hat_l - y_l||^2
    penalty = coef * sum_l (1/B) sum_b sum_i s(a_lbi n_li)     s(u) = tanh(c u) | u   (tanh | l1)
    pre_act = pre_act_coef * sum_l (1/B) sum_b sum_i relu(theta_li - z_lbi) n_li   (JumpReLU)
    loss    = mse + penalty + pre_act
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from tcspec.dictionaries.families import Family, family
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT, full_name
from tcspec.vocab import CLT as CLT_KIND
from tcspec.vocab import CLT_ACTIVATIONS, CLT_IN_HOOKS, CLT_OUT_HOOKS, CLT_PENALTIES


@dataclass(frozen=True)
class CLTConfig:
    """Shape and type of a cross-layer transcoder (what rebuilds it from its weights)."""

    kind: ClassVar[str] = CLT_KIND
    """Its kind, as a per-layer `CoderConfig.kind` says its own (not a field: no argument)."""
    n_layers: int
    """Number of layers the CLT spans (L): one encoder per layer."""
    d_model: int
    """Width of the input and output hooks."""
    d_sae: int
    """Features per layer (F); the CLT has n_layers * d_sae features in all."""
    activation: Literal[CLT_ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    """ReLU, per-layer TopK, or JumpReLU with a learned per-feature threshold."""
    k: int | None = None
    """Active features per layer per token for `topk`."""
    in_hook: Literal[CLT_IN_HOOKS] = TRANSCODER_IN  # type: ignore[valid-type]
    """Input hook, relative to a block."""
    out_hook: Literal[CLT_OUT_HOOKS] = TRANSCODER_OUT  # type: ignore[valid-type]
    """Output hook, relative to a block."""
    skip: bool = False
    """Affine skip connection x_m W_skip[m] at every output layer."""
    layers: tuple[int, ...] | None = None
    """Model blocks of the CLT's layers 0..n_layers-1, increasing; None: blocks 0..n_layers-1."""

    def __post_init__(self):
        for f in ("n_layers", "d_model", "d_sae"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{f} must be a positive int, got {v!r}")
        if self.activation not in CLT_ACTIVATIONS:
            raise ValueError(f"activation `{self.activation}` is not one of {CLT_ACTIVATIONS}")
        if self.family.takes_k:
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(
                    f"{self.activation} needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}"
                )
        elif self.k is not None:
            topk = " or ".join(f"`{n}`" for n in CLT_ACTIVATIONS if family(n).takes_k)
            raise ValueError(f"k only applies to activation {topk}")
        if self.in_hook not in CLT_IN_HOOKS:
            raise ValueError(f"in_hook `{self.in_hook}` is not one of {CLT_IN_HOOKS}")
        if self.out_hook not in CLT_OUT_HOOKS:
            raise ValueError(f"out_hook `{self.out_hook}` is not one of {CLT_OUT_HOOKS}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(b) for b in self.layers))
            b = self.layers
            if len(b) != self.n_layers or any(x >= y for x, y in zip(b, b[1:])) or b[0] < 0:
                raise ValueError(
                    f"layers must be {self.n_layers} increasing block indices, got {list(b)}"
                )

    @property
    def family(self) -> Family:
        """Its activation family (`tcspec.dictionaries.families`)."""
        return family(self.activation)

    @property
    def blocks(self) -> tuple[int, ...]:
        """The model block of each CLT layer."""
        return self.layers if self.layers is not None else tuple(range(self.n_layers))

    @property
    def in_names(self) -> list[str]:
        """Full TransformerLens names of the input hooks, one per layer."""
        return [full_name(b, self.in_hook) for b in self.blocks]

    @property
    def out_names(self) -> list[str]:
        """Full TransformerLens names of the output hooks, one per layer."""
        return [full_name(b, self.out_hook) for b in self.blocks]


# ---------------------------------------------------------------------------- the module
class CLT(nn.Module):
    """A cross-layer transcoder (see the module docstring for the maths)."""

    def __init__(self, cfg: CLTConfig, seed: int | torch.Generator = 0, threshold: float = 0.03):
        super().__init__()
        self.cfg = cfg
        L, d, F = cfg.n_layers, cfg.d_model, cfg.d_sae
        g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        enc, dec = F**-0.5, (L * d) ** -0.5  # U(+-1/sqrt(F)), U(+-1/sqrt(L d)) as CLT-Forge

        def uniform(shape, bound):
            return (torch.rand(shape, generator=g) * 2 - 1) * bound

        self.W_enc = nn.Parameter(uniform((L, d, F), enc))  # [L, d, F]
        self.b_enc = nn.Parameter(torch.zeros(L, F))  # [L, F]
        self.W_dec = nn.ParameterList(
            [nn.Parameter(uniform((F, L - i, d), dec)) for i in range(L)]
        )  # W_dec[l] [F, L - l, d]
        self.b_dec = nn.Parameter(torch.zeros(L, d))  # [L, d]
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(L, d, d))  # [L, d, d]
        if cfg.family.thresholded:
            self.log_threshold = nn.Parameter(torch.full((L, F), float(threshold)).log())

    @property
    def threshold(self) -> Tensor:
        """JumpReLU thresholds exp(log_threshold): [L, F]."""
        return self.log_threshold.exp()

    def pre_acts(self, x: Tensor, layer: int) -> Tensor:
        """x_l W_enc[l] + b_enc[l]: [..., d] -> [..., F]."""
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def activate(self, pre: Tensor, layer: int, bandwidth: float = 1.0) -> Tensor:
        """The activation of layer `layer`'s features: [..., F] -> [..., F] (the family's
        `activate`; JumpReLU's through the rectangle-kernel pseudo-derivative for theta)."""
        fam = self.cfg.family
        theta = self.threshold[layer] if fam.thresholded else None
        return fam.ops.activate(pre, self.cfg.k, theta, bandwidth)

    def encode_layer(self, x: Tensor, layer: int) -> Tensor:
        """Features of one layer: x_l [..., d] -> a_l [..., F]."""
        return self.activate(self.pre_acts(x, layer), layer)

    def decode_layer(self, a: Tensor, layer: int) -> Tensor:
        """What layer l's features write to layers l..L-1: a_l [..., F] -> [..., L - l, d]."""
        W = self.W_dec[layer]  # [F, L - l, d]
        out = a @ W.reshape(W.shape[0], -1)  # [..., (L - l) d]
        return out.reshape(*a.shape[:-1], *W.shape[1:])

    def output_bias(self, x: Tensor, layer: int) -> Tensor:
        """b_dec[m] (+ x_m W_skip[m]): the part of y_hat_m that is not features: [..., d]."""
        if self.cfg.skip:
            return x @ self.W_skip[layer] + self.b_dec[layer]
        return self.b_dec[layer].expand_as(x)

    def forward(self, xs: Tensor, bandwidth: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """xs [L, ..., d] -> (y_hat [L, ..., d], acts [L, ..., F], pre-activations [L, ..., F]).
        `bandwidth` is the JumpReLU pseudo-derivative's (it changes gradients only)."""
        L = self.cfg.n_layers
        if xs.shape[0] != L:
            raise ValueError(f"expected inputs of {L} layers, got {xs.shape[0]}")
        pre = torch.stack([self.pre_acts(xs[i], i) for i in range(L)])  # [L, ..., F]
        acts = torch.stack([self.activate(pre[i], i, bandwidth) for i in range(L)])
        outs = [self.output_bias(xs[m], m) for m in range(L)]  # L x [..., d]
        for i in range(L):
            written = self.decode_layer(acts[i], i)  # [..., L - i, d]
            for j in range(L - i):
                outs[i + j] = outs[i + j] + written[..., j, :]
        return torch.stack(outs), acts, pre

    def decoder_norms(self) -> Tensor:
        """||W_dec[l][i]|| over all the layers feature (l, i) writes to: [L, F]."""
        return torch.stack([torch.linalg.vector_norm(W, dim=(1, 2)) for W in self.W_dec])

    def per_layer_decoder_norms(self) -> list[Tensor]:
        """Where each feature writes: [F, L - l] norms of W_dec[l][i, m - l] for each l."""
        return [W.norm(dim=-1) for W in self.W_dec]


# ---------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class CLTLoss:
    """The training objective's sparsity terms (see the module docstring)."""

    penalty: Literal[CLT_PENALTIES] = "tanh"  # type: ignore[valid-type]
    """tanh(c a ||W_dec||) (Anthropic, CLT-Forge) or the L1 form a ||W_dec||."""
    coef: float = 1e-3
    """Coefficient of the sparsity penalty (before its warm-up)."""
    tanh_scale: float = 4.0
    """c in tanh(c a ||W_dec||)."""
    pre_act_coef: float = 0.0
    """JumpReLU only: coefficient of relu(theta - z) ||W_dec|| (keeps features from dying)."""
    bandwidth: float = 1.0
    """JumpReLU pseudo-derivative bandwidth eps."""

    def __post_init__(self):
        if self.penalty not in CLT_PENALTIES:
            raise ValueError(f"penalty `{self.penalty}` is not one of {CLT_PENALTIES}")
        for f in ("coef", "tanh_scale", "pre_act_coef"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        if self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth}")


def clt_loss(
    clt: CLT, xs: Tensor, ys: Tensor, loss: CLTLoss, coef_factor: float = 1.0
) -> dict[str, Tensor]:
    """The loss terms on a batch xs, ys [L, B, d] (0-d tensors): loss, mse, penalty, pre_act,
    plus acts [L, B, F] and y_hat [L, B, d]. `coef_factor` scales the penalty (warm-up)."""
    y_hat, acts, pre = clt(xs, loss.bandwidth)
    B = xs.shape[1]
    mse = (y_hat - ys).square().sum() / B
    coef = loss.coef * coef_factor
    jump = clt.cfg.family.thresholded and loss.pre_act_coef > 0
    zero = torch.zeros((), dtype=xs.dtype, device=xs.device)
    penalty, pre_act = zero, zero
    if coef > 0 or jump:
        norms = clt.decoder_norms()[:, None, :]  # [L, 1, F]
    if coef > 0:
        scaled = acts * norms  # [L, B, F]
        s = torch.tanh(loss.tanh_scale * scaled) if loss.penalty == "tanh" else scaled
        penalty = coef * s.sum() / B
    if jump:
        gap = torch.relu(clt.threshold[:, None, :] - pre) * norms  # [L, B, F]
        pre_act = loss.pre_act_coef * gap.sum() / B
    return {
        "loss": mse + penalty + pre_act,
        "mse": mse,
        "penalty": penalty,
        "pre_act": pre_act,
        "acts": acts,
        "y_hat": y_hat,
    }
