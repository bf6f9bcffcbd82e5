"""A synthetic source with a known ground truth: sparse features in superposition.

The truth (built once from a seed, saved in the model task's folder):

    directions  D [n_features, d_model]   unit rows, random: x = a @ D
    out_map     M [n_features, d_model]   unit rows: y = a @ M, where M_i is the normalised
                                          sum of `out_fan` output directions E_j (weights
                                          w_ij > 0): the known sparse map input -> output
    probs       p [n_features]            Zipfian firing probabilities (descending)
    factors     F [rank, n_features]      Gaussian copula loadings, unit columns

A sample's feature activations a [n_features]: g = sqrt(1 - s) e + sqrt(s) (u @ F) with
e ~ N(0, I), u ~ N(0, I_rank), so each g_i ~ N(0, 1); feature i fires when
g_i > Phi^-1(1 - p_i) (its marginal probability is p_i exactly; SAELens's Gaussian copula),
and then a_i = max(0, mean + std * N(0, 1)). The activations of the hooks a dictionary
reads are `HOOKS`: x at the MLP's input hook, y at its output hook.

Every draw is a function of (the truth's seed, a stream name, an index), so the training
cache, the stream (batch s) and the evaluation set are reproducible and independent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tcspec.atomic import atomic_write, read_json, write_json
from tcspec.models.hooks import SYNTHETIC_HOOKS, full_name
from tcspec.vocab import MODEL_JSON

TRUTH_FILE = "truth.safetensors"
HOOKS = tuple(full_name(0, h) for h in SYNTHETIC_HOOKS)
"""The synthetic source's hooks: x (input features) and y (their image under the map)."""
LAYERS = 1
STREAMS = {"train": 1, "eval": 2, "stream": 3}
"""Draws of the cache, the evaluation set and the stream's batches use disjoint seeds."""


@dataclass(frozen=True)
class Truth:
    """The planted features and how they fire (see the module doc)."""

    directions: Tensor  # [n_features, d_model]
    out_map: Tensor  # [n_features, d_model]
    probs: Tensor  # [n_features]
    factors: Tensor  # [rank, n_features]
    strength: float
    magnitude_mean: float
    magnitude_std: float
    seed: int

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    @property
    def d_model(self) -> int:
        return self.directions.shape[1]

    def features_at(self, hook: str) -> Tensor:
        """The true dictionary of a hook: D at the input hook, M at the output hook
        ([n_features, d_model]); a transcoder's decoder is scored against M."""
        if hook not in HOOKS:
            raise ValueError(f"the synthetic source has no hook {hook!r}; it has {list(HOOKS)}")
        return self.directions if hook == HOOKS[0] else self.out_map


def zipf_probs(n: int, exponent: float, max_prob: float, min_prob: float) -> Tensor:
    """p_r = min + (max - min) (r^-e - n^-e) / (1 - n^-e), r = 1..n: descending from max_prob
    to min_prob (SAELens's `zipfian_firing_probabilities`)."""
    raw = torch.arange(1, n + 1, dtype=torch.float64) ** -exponent  # [n]
    if n == 1:
        return torch.tensor([max_prob], dtype=torch.float32)
    scaled = (raw - raw.min()) / (raw.max() - raw.min())
    return (min_prob + (max_prob - min_prob) * scaled).float()


def _unit_rows(t: Tensor) -> Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def build_truth(spec, seed: int) -> Truth:
    """The truth of a `SyntheticModelSpec` (`tcspec.spec.sources`) for `seed`."""
    g = torch.Generator().manual_seed(seed)
    n, d = spec.n_features, spec.d_model
    n_out = spec.n_out_features or n
    directions = _unit_rows(torch.randn(n, d, generator=g))  # [n, d]
    outputs = _unit_rows(torch.randn(n_out, d, generator=g))  # [n_out, d]
    targets = torch.rand(n, n_out, generator=g).argsort(dim=1)[:, : spec.out_fan]  # [n, fan]
    weights = 0.5 + torch.rand(n, spec.out_fan, generator=g)  # [n, fan] in [0.5, 1.5)
    out_map = _unit_rows((weights[..., None] * outputs[targets]).sum(1))  # [n, d]
    rank = spec.correlation_rank if spec.correlation_strength > 0 else 0
    factors = _unit_rows(torch.randn(n, rank, generator=g)).T.contiguous()  # [rank, n]
    probs = zipf_probs(n, spec.firing_exponent, spec.max_prob, spec.min_prob)
    return Truth(
        directions, out_map, probs, factors, float(spec.correlation_strength),
        float(spec.magnitude_mean), float(spec.magnitude_std), seed,
    )  # fmt: skip


def sample(truth: Truth, n: int, g: torch.Generator) -> Tensor:
    """Feature activations a [n, n_features] (float32, >= 0) drawn with generator `g`, every
    row with at least one firing feature: rows where none fires are dropped and drawn again
    (SAELens's evaluation drops them too; an all-zero row has no direction to learn and
    would make a norm-normalised loss infinite)."""
    rows, have = [], 0
    while have < n:
        a = _draw(truth, n - have + 16, g)
        a = a[(a > 0).any(dim=1)][: n - have]
        rows.append(a)
        have += len(a)
    return torch.cat(rows)


def _draw(truth: Truth, n: int, g: torch.Generator) -> Tensor:
    """n rows of the copula (see the module doc), some possibly all zero: [n, n_features]."""
    e = torch.randn(n, truth.n_features, generator=g)  # [n, F]
    if truth.factors.shape[0]:
        u = torch.randn(n, truth.factors.shape[0], generator=g)  # [n, rank]
        s = truth.strength
        e = math.sqrt(1 - s) * e + math.sqrt(s) * (u @ truth.factors)
    threshold = torch.special.ndtri(1 - truth.probs.double()).float()  # [F]
    fires = e > threshold  # [n, F]
    noise = torch.randn(n, truth.n_features, generator=g)  # [n, F]
    mags = truth.magnitude_mean + truth.magnitude_std * noise
    return torch.where(fires, mags.clamp_min(0), torch.zeros(()))  # [n, F]


def hook_acts(truth: Truth, a: Tensor) -> dict[str, Tensor]:
    """The hooks' activations of feature activations a [n, F]: {hook: [n, d_model]}."""
    return {HOOKS[0]: a @ truth.directions, HOOKS[1]: a @ truth.out_map}


def generator(truth: Truth, stream: str, index: int = 0) -> torch.Generator:
    """The generator of draw `index` of `stream` (one of `STREAMS`)."""
    parts = [truth.seed, STREAMS[stream], index]  # mixed, so nearby tuples differ
    seed = int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def iter_rows(truth: Truth, stream: str, rows: int, chunk: int = 8192) -> Iterator[tuple]:
    """(a [m, F], {hook: [m, d_model]}) in chunks of `chunk` rows, `rows` in all: the
    deterministic draws of `stream` (the cache's `train`, the evaluation's `eval`)."""
    for i, start in enumerate(range(0, rows, chunk)):
        a = sample(truth, min(chunk, rows - start), generator(truth, stream, i))
        yield a, hook_acts(truth, a)


class SyntheticStream:
    """Training batches drawn on the fly: batch s is a function of (seed, s) alone, so a
    resumed pass needs no state (a `tcspec.training.loop.BatchSource`)."""

    def __init__(self, truth: Truth, keys: list[str], batch_size: int, device="cpu"):
        self.truth, self.keys, self.batch_size, self.device = truth, list(keys), batch_size, device

    def iter_batches(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        step = start_step
        while True:
            a = sample(self.truth, self.batch_size, generator(self.truth, "stream", step))
            acts = hook_acts(self.truth, a)
            yield {k: acts[k].to(self.device) for k in self.keys}
            step += 1


# ---------------------------------------------------------------------------------- files
def save_truth(truth: Truth, out_dir: Path, describe: dict) -> dict:
    """`truth.safetensors` and `model.json` (kind, dims, hooks, the scalars) in `out_dir`."""
    tensors = {
        "directions": truth.directions, "out_map": truth.out_map,
        "probs": truth.probs, "factors": truth.factors,
    }  # fmt: skip
    atomic_write(Path(out_dir) / TRUTH_FILE, lambda p: save_file(tensors, str(p)))
    meta = {
        "kind": "synthetic",
        "cfg": {"n_layers": LAYERS, "d_model": truth.d_model, "n_features": truth.n_features},
        "hooks": list(HOOKS),
        "strength": truth.strength,
        "magnitude_mean": truth.magnitude_mean,
        "magnitude_std": truth.magnitude_std,
        "seed": truth.seed,
        "expected_l0": float(truth.probs.sum()),
    } | describe
    write_json(Path(out_dir) / MODEL_JSON, meta)
    return meta


def load_truth(model_dir: Path) -> Truth:
    """The truth a synthetic model task saved in `model_dir`."""
    meta = read_json(Path(model_dir) / MODEL_JSON)
    t = load_file(str(Path(model_dir) / TRUTH_FILE))
    return Truth(
        t["directions"], t["out_map"], t["probs"], t["factors"], meta["strength"],
        meta["magnitude_mean"], meta["magnitude_std"], meta["seed"],
    )  # fmt: skip
