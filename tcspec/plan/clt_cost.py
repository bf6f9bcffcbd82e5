"""What training a CLT costs: parameters, memory and FLOPs, for the planner.

With L layers, d = d_model, F = d_sae per layer, B tokens a batch, k active features a
layer (TopK), the decoders hold F d L (L + 1) / 2 weights (layer l's features write to
L - l layers), so they grow with L^2 / 2 while the encoders grow with L:

    params      = L d F (encoders) + F d L (L + 1) / 2 (decoders) + L F + L d (biases)
                  (+ L d^2 skip) (+ L F thresholds)
    flops/step  = 6 B F d (L + P)                 P = L (L + 1) / 2 decoder blocks; ReLU,
                                                  JumpReLU: per block the decoder forward,
                                                  d a and d W_dec (2 + 2 + 2); per layer the
                                                  encoder forward, again in the backward
                                                  (not held), and d W_enc (2 + 2 + 2)
                = 2 B d (F L + s k (L + 3 P))     TopK: the dense encoder forward; the rest
                                                  over the k active features, each FLOP of
                                                  those gathers counted s = SPARSE_COST times
                                                  (the FLOPs a time estimate needs)
    train bytes = 4 bytes x (3 params              weights and two Adam moments (fp32)
                  + 2 F L d                         one gradient at a time (the largest is
                                                    W_dec[0]'s) and Adam's scratch
                  + 6 L B d                         the batch as read and stacked, y_hat /
                                                    its gradient and one temporary
                  + A B F)                          one layer's activations at a time:
                                                    A = 3 ReLU, 6 JumpReLU, 2 TopK (sparse)
                  (bf16: + 4 F L d + 4 L B d bytes: bfloat16 copies of a decoder and of g)

`tcspec.training.clt_step` holds no [L, B, F] tensor: dense layers' activations are computed again
in the backward, sparse ones are kept as (index, value) pairs (L B k of them for TopK).
Measured (`bench/clt.py`, peak RSS above the process's, fp32, CPU) at L 12, d 768, F 1024,
B 512: ReLU 999 MB (this estimate 997), TopK k 8 1,042 MB (995); bench/RESULTS.md has the
gpt2-like shape.

Per-layer transcoders of the same width for comparison (`per_layer_flops_per_step`):
6 B F d 2 L (each writes one layer): the CLT's step costs (L + L (L + 1) / 2) / (2 L) =
(L + 3) / 4 times as much (3.75x at L = 12).
"""

from __future__ import annotations

from dataclasses import dataclass

from tcspec.dictionaries.clt import CLTConfig

FP32 = 4
ACTIVATION_BUFFERS = {"relu": 3, "jumprelu": 6, "topk": 2}
"""[B, F] work buffers a layer's forward and backward hold at once, by activation."""
SPARSE_COST = 32
"""Dense-GEMM FLOPs that one FLOP of the sparse products costs in time (they gather rows
and are bound by memory). Measured on 2 Zen 4 cores: 17 per CPU-second for one decoder at
B 1,024, F 8,192, k 64 (embedding_bag, sampled_addmm and the transposed embedding_bag
against torch.mm); ~60 over a whole TopK step at L 12, F 1,024, B 512 under load 10,
where its many small ops wait on the busy cores."""


@dataclass(frozen=True)
class CLTCost:
    """Size and work of training one CLT."""

    params: int
    """Trainable parameters."""
    decoder_params: int
    """Of which decoder weights (F d L (L + 1) / 2)."""
    flops_per_step: int
    """Matmul FLOPs of one training step (forward + backward), the sparse products' counted
    at `SPARSE_COST` (what a time estimate at the device's GEMM rate needs)."""
    flops: int
    """flops_per_step x steps."""
    train_bytes: int
    """Memory of a training step: fp32 weights and Adam moments, one gradient at a time,
    the batch and one layer's activations (see the module docstring)."""

    @property
    def mem_mb(self) -> int:
        return int(self.train_bytes / 2**20) + 1


def decoder_params(cfg: CLTConfig) -> int:
    """F d L (L + 1) / 2: every layer's features write to it and every later layer."""
    L = cfg.n_layers
    return cfg.d_sae * cfg.d_model * L * (L + 1) // 2


def param_count(cfg: CLTConfig) -> int:
    L, d, F = cfg.n_layers, cfg.d_model, cfg.d_sae
    n = L * d * F + decoder_params(cfg) + L * F + L * d
    n += L * d * d if cfg.skip else 0
    n += L * F if cfg.family.thresholded else 0  # log_threshold
    return n


def clt_cost(cfg: CLTConfig, batch_size: int, steps: int, precision: str = "fp32") -> CLTCost:
    """Parameters, FLOPs and training memory of `steps` steps of `batch_size` tokens in
    `precision` (fp32, tf32 or bf16)."""
    if batch_size <= 0 or steps < 0:
        raise ValueError(f"need batch_size > 0 and steps >= 0, got {batch_size}, {steps}")
    L, d, F, B = cfg.n_layers, cfg.d_model, cfg.d_sae, batch_size
    pairs = L * (L + 1) // 2  # (source, target) layer pairs
    if cfg.family.takes_k:  # TopK: sparse decoder products
        flops_step = 2 * B * d * (F * L + SPARSE_COST * cfg.k * (L + 3 * pairs))
    else:
        flops_step = 6 * B * F * d * (L + pairs)
    flops_step += 6 * B * d * d * L if cfg.skip else 0
    params = param_count(cfg)
    work = 2 * F * L * d + 6 * L * B * d + ACTIVATION_BUFFERS[cfg.activation] * B * F
    work += (F * L * d + L * B * d) if precision == "bf16" else 0
    return CLTCost(
        params=params,
        decoder_params=decoder_params(cfg),
        flops_per_step=flops_step,
        flops=flops_step * steps,
        train_bytes=FP32 * (3 * params + work),
    )


def per_layer_flops_per_step(cfg: CLTConfig, batch_size: int) -> int:
    """FLOPs of one step of n_layers per-layer transcoders of the same width: 6 B F d 2 L."""
    return 6 * batch_size * cfg.d_sae * cfg.d_model * 2 * cfg.n_layers
