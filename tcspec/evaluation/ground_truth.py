"""Scores of a dictionary against the planted features of a synthetic source.

Definitions follow SAELens's SynthSAEBench (`sae_lens/synthetic/evals.py`):

- |cos| [d_sae, n_features]: absolute cosine of each decoder row with each true feature
  direction (the true dictionary of the dictionary's output hook: `Truth.features_at`).
- `mcc`: mean |cos| over a one-to-one matching of latents to true features that maximises
  the sum (the Hungarian algorithm, `scipy.optimize.linear_sum_assignment`); min(d_sae,
  n_features) pairs. 1 when every true feature has its own latent pointing its way.
- `uniqueness`: distinct true features among the latents' best matches (argmax |cos|),
  divided by d_sae.
- `precision`, `recall`, `f1`: each latent is a detector of its best-matching true feature
  (argmax |cos|, not one-to-one): it predicts "fires" when z_i > 0; against the truth
  a_j > 0 over the evaluation samples, per latent TP / (TP + FP), TP / (TP + FN) and their
  harmonic mean (0 where undefined), then the mean over all latents (dead ones count 0).
- `true_l0`: mean number of firing true features per sample.
- `mcc_random`: the MCC of d_sae random Gaussian directions (seeded) against the same truth:
  the chance level of `mcc` at this shape (the best one-to-one matching of random rows in a
  few dozen dimensions is far from 0), the reference a learned dictionary must beat.

The matching is threshold-free. Where this differs from SynthSAEBench: a transcoder (and an
SAE on the output hook) is scored by its decoder against the map's output directions
`out_map` with the input features' firing (SynthSAEBench has SAEs only). The fidelity
metrics (L0, FVU, dead fraction, ...) are `tcspec.evaluation.metrics`'s, on the same samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.evaluation.metrics import Accumulator
from tcspec.models.synthetic import Truth, iter_rows

TRUTH_METRICS = ("mcc", "mcc_random", "uniqueness", "precision", "recall", "f1", "true_l0")
"""The metrics this module adds to a synthetic evaluation's `metrics.json`."""


def abs_cosines(learned: Tensor, true: Tensor) -> Tensor:
    """|cos| of every learned row with every true row: [n_learned, n_true] (float64)."""
    a = learned.double() / learned.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = true.double() / true.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).abs()


def mcc(learned: Tensor, true: Tensor) -> float:
    """Mean |cos| of the Hungarian matching of `learned` [n, d] to `true` [m, d] rows."""
    from scipy.optimize import linear_sum_assignment

    cos = abs_cosines(learned, true).cpu().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


def uniqueness(learned: Tensor, true: Tensor) -> float:
    """Distinct best-matching true features over the number of learned rows."""
    return len(abs_cosines(learned, true).argmax(dim=1).unique()) / learned.shape[0]


class Detection:
    """Per-latent firing counts against each latent's best-matching true feature."""

    def __init__(self, decoder: Tensor, true: Tensor):
        self.match = abs_cosines(decoder, true).argmax(dim=1)  # [d_sae]
        n = decoder.shape[0]
        self.tp, self.fp, self.fn = (torch.zeros(n, dtype=torch.float64) for _ in range(3))

    def update(self, z: Tensor, a: Tensor) -> None:
        """z [n, d_sae] latent activations, a [n, n_features] true feature activations."""
        fires, truth = z > 0, a[:, self.match] > 0  # [n, d_sae] each
        self.tp += (fires & truth).sum(0)
        self.fp += (fires & ~truth).sum(0)
        self.fn += (~fires & truth).sum(0)

    def compute(self) -> dict[str, float]:
        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))

        p, r = ratio(self.tp, self.tp + self.fp), ratio(self.tp, self.tp + self.fn)
        f1 = ratio(2 * p * r, p + r)
        return {"precision": p.mean().item(), "recall": r.mean().item(), "f1": f1.mean().item()}


@torch.inference_mode()
def score(coder, truth: Truth, samples: int, device="cpu") -> dict[str, float]:
    """Every `tcspec.evaluation.metrics` metric a dictionary's own hooks give (L0, FVU, dead, ...) and
    `TRUTH_METRICS`, over `samples` evaluation draws of the source (`iter_rows(..., "eval")`).
    `coder` is a `tcspec.dictionaries.coders.Coder` reading and writing the source's hooks."""
    true = truth.features_at(coder.cfg.out_hook)  # [n_features, d_out]
    decoder = coder.W_dec.detach().cpu()  # [d_sae, d_out]
    detection, acc, true_active = Detection(decoder, true), Accumulator(), 0.0
    for a, acts in iter_rows(truth, "eval", samples):
        x, y = acts[coder.cfg.in_hook].to(device), acts[coder.cfg.out_hook].to(device)
        y_hat, z = coder(x)  # [n, d_out], [n, d_sae]
        acc.update(y, y_hat, z)
        detection.update(z.cpu(), a)
        true_active += (a > 0).sum().item()
    g = torch.Generator().manual_seed(0)
    random = torch.randn(decoder.shape, generator=g, dtype=torch.float64)  # [d_sae, d_out]
    return acc.compute() | {
        "mcc": mcc(decoder, true),
        "mcc_random": mcc(random, true),
        "uniqueness": uniqueness(decoder, true),
        **detection.compute(),
        "true_l0": true_active / samples,
    }
