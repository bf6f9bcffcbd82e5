"""The synthetic source and its ground-truth scores: the source fires as specified, the
metric is 1 on the truth, high for a dictionary that found the planted features and at
chance for random directions (so it can fail), and a real Snakemake run trains and scores
dictionaries on the source (a stream; the cache reads back the source's draws)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.evaluation.ground_truth import mcc, score, uniqueness
from tcspec.models.synthetic import HOOKS, SyntheticStream, build_truth, iter_rows, sample
from tcspec.spec import SAESpec
from tcspec.spec.sources import SyntheticModelSpec
from tcspec.training import Member, train_group

# 128 features in 64 dims (2x superposition), ~2 firing per sample
SMALL = SyntheticModelSpec(
    kind="synthetic", n_features=128, d_model=64, min_prob=0.01, max_prob=0.1
)


@pytest.fixture(scope="module")
def truth():
    return build_truth(SMALL, seed=0)


def test_firing_follows_the_spec(truth):
    """Each feature fires at its Zipfian probability (the copula keeps the marginals; rows
    where nothing fires are dropped, which raises every rate by 1 / P(any fires)), features
    co-fire as the copula's correlations say, magnitudes are as set."""
    a = sample(truth, 40_000, torch.Generator().manual_seed(1))  # [n, F]
    p = truth.probs.double()
    p_any = 1 - torch.prod(1 - p)  # close to the independent value at this strength
    rate = (a > 0).double().mean(0)
    assert torch.allclose(rate, p / p_any, atol=0.012)
    assert torch.all(truth.probs[:-1] >= truth.probs[1:])  # power law, descending
    fired = a[a > 0]
    assert abs(fired.mean().item() - 1.0) < 0.02 and abs(fired.std().item() - 0.25) < 0.02
    # co-firing follows the copula's correlations: s F^T F off the diagonal
    top = (a[:, :16] > 0).double()  # the most frequent features
    excess = torch.cov(top.T).flatten()  # E[f_i f_j] - E[f_i] E[f_j]
    copula = (SMALL.correlation_strength * truth.factors.T @ truth.factors)[:16, :16]
    off = ~torch.eye(16, dtype=torch.bool).flatten()
    copula = copula.double().flatten()[off]
    agreement = torch.corrcoef(torch.stack([excess[off], copula]))
    assert agreement[0, 1] > 0.5  # monotone, not linear: a covariance scales with p_i p_j
    independent = build_truth(SMALL.model_copy(update={"correlation_strength": 0.0}), 0)
    b = (sample(independent, 40_000, torch.Generator().manual_seed(1))[:, :16] > 0).double()
    chance = torch.corrcoef(torch.stack([torch.cov(b.T).flatten()[off], copula]))
    assert abs(chance[0, 1]) < 0.3  # without the copula, co-firing ignores those loadings


def test_draws_are_reproducible_and_streams_differ(truth):
    a1 = torch.cat([a for a, _ in iter_rows(truth, "train", 5000, chunk=1000)])
    a2 = torch.cat([a for a, _ in iter_rows(truth, "train", 5000, chunk=1000)])
    e = torch.cat([a for a, _ in iter_rows(truth, "eval", 5000, chunk=1000)])
    assert torch.equal(a1, a2) and not torch.equal(a1, e)
    stream = SyntheticStream(truth, list(HOOKS), 64)
    later = next(stream.iter_batches(3))
    it = stream.iter_batches(0)
    third = [next(it) for _ in range(4)][3]
    assert all(torch.equal(later[h], third[h]) for h in HOOKS)  # a resume needs no state


def test_mcc_is_one_on_the_truth_whatever_order_and_sign(truth):
    perm = torch.randperm(truth.n_features, generator=torch.Generator().manual_seed(0))
    signs = torch.where(torch.rand(truth.n_features) > 0.5, 1.0, -1.0)[:, None]
    shuffled = truth.directions[perm] * signs * 3.0
    assert mcc(shuffled, truth.directions) == pytest.approx(1.0, abs=1e-9)
    assert uniqueness(shuffled, truth.directions) == 1.0


def test_an_exact_encoder_scores_perfect_precision_and_recall():
    """Without superposition (64 features in 96 dims) the pseudo-inverse reads every input
    feature back exactly from x: each latent fires exactly when its feature does."""
    spec = SMALL.model_copy(update={"n_features": 64, "d_model": 96})
    truth = build_truth(spec, seed=0)
    cfg = CoderConfig(kind="sae", d_in=96, d_out=96, d_sae=64, activation="jumprelu",
                      in_hook=HOOKS[0], out_hook=HOOKS[0])  # fmt: skip
    oracle = Coder(cfg)
    with torch.no_grad():
        oracle.W_dec.copy_(truth.directions)
        oracle.W_enc.copy_(torch.linalg.pinv(truth.directions))
        oracle.b_dec.zero_(), oracle.b_enc.zero_(), oracle.threshold.fill_(1e-3)
    m = score(oracle, truth, 4096)
    assert m["mcc"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    assert m["fvu"] < 1e-6 and m["l0"] == pytest.approx(m["true_l0"])


def _train_topk(truth, out_dir: Path, steps: int = 600) -> Coder:
    hook = HOOKS[1]
    opts = SAESpec(
        kind="sae", hook="hook_mlp_out", d_sae=truth.n_features, activation="topk", k=2,
        dead_features="aux_k", dead_window=50, loss="normalized_mse", lr=1e-2,
        lr_warmup_steps=10, batch_size=256, checkpoint_every=10_000, seed=0,
    )  # fmt: skip
    cfg = CoderConfig(kind="sae", d_in=truth.d_model, d_out=truth.d_model,
                      d_sae=truth.n_features, activation="topk", k=2, in_hook=hook,
                      out_hook=hook, layer=0)  # fmt: skip
    member = Member("topk", opts, cfg, hook, hook, out_dir / "topk", 0)
    stream = SyntheticStream(truth, [hook], opts.batch_size)
    train_group([member], stream, steps, out_dir / "ckpt", progress=False, log=lambda s: None)
    return coders.load(member.out_dir)


def test_a_trained_sae_recovers_the_features_and_random_directions_do_not(truth, tmp_path):
    """The acceptance check. Chance level: two random unit vectors in 64 dims have |cos|
    ~ sqrt(2 / (pi 64)) = 0.10, and the best one-to-one matching of 128 random latents
    lifts that to ~0.3; a feature its latent has found has |cos| > 0.9. MCC > 0.75 thus
    needs most features found; random directions stay below 0.4 and their latents detect
    nothing (F1 ~ 0)."""
    trained = score(_train_topk(truth, tmp_path), truth, 8192)
    cfg = CoderConfig(kind="sae", d_in=64, d_out=64, d_sae=128, activation="topk", k=2,
                      in_hook=HOOKS[1], out_hook=HOOKS[1])  # fmt: skip
    random = score(Coder(cfg, seed=1), truth, 8192)  # kaiming directions, never trained
    assert trained["mcc"] > 0.75 and trained["f1"] > 0.4
    assert random["mcc"] < 0.4 and random["f1"] < 0.05
    assert trained["mcc"] - random["mcc"] > 0.4
    assert abs(random["mcc"] - trained["mcc_random"]) < 0.05  # the chance level it reports
    assert trained["fvu"] < 0.35 and trained["l0"] == pytest.approx(2.0, abs=0.05)


MICRO = """
experiment: micro-synthetic
seed: 0
model: {{kind: synthetic, n_features: 64, d_model: 32}}
data: {{kind: synthetic, train_tokens: 40_000, eval_tokens: 4_096}}
layers: [0]
acts: {{source: {source}}}
dictionaries:
  sae:
    kind: sae
    hook: hook_mlp_out
    d_sae: 64
    activation: topk
    k: [2, 4]
    loss: normalized_mse
    lr: 3.0e-3
    lr_warmup_steps: 10
    batch_size: 256
  tc:
    kind: transcoder
    in_hook: ln2.hook_normalized
    out_hook: hook_mlp_out
    d_sae: 64
    l1: 1.0e-3
    lr: 3.0e-3
    lr_warmup_steps: 10
    batch_size: 256
tables: {{include: [sparsity_fidelity, ground_truth]}}
"""


def test_the_cache_holds_the_train_draws(truth, tmp_path):
    """The acts stage's cache of a synthetic source reads back (shuffled, through the same
    reader as a model's cache) as exactly the source's `train` draws."""
    from tcspec.data.cache import ActivationReader
    from tcspec.data.cache_writer import cache_rows

    rows, widths = 3000, {h: truth.d_model for h in HOOKS}
    draws = (acts for _, acts in iter_rows(truth, "train", rows, chunk=1000))
    cache_rows(draws, rows, widths, tmp_path / "cache", shard_tokens=1024, progress=False)
    reader = ActivationReader(tmp_path / "cache", list(HOOKS), batch_size=rows, seed=0)
    got = next(reader.iter_batches())  # every row, shuffled
    want = {h: torch.cat([acts[h] for _, acts in iter_rows(truth, "train", rows, 1000)])
            for h in HOOKS}  # fmt: skip
    g, w = torch.argsort(got[HOOKS[0]][:, 0]), torch.argsort(want[HOOKS[0]][:, 0])
    assert all(torch.equal(got[h][g], want[h][w]) for h in HOOKS)


@pytest.mark.slow
def test_synthetic_spec_streams_end_to_end(tmp_path):
    from tests.workflow.test_workflow import snakemake

    spec = tmp_path / "micro.yaml"
    spec.write_text(MICRO.format(source="stream"))
    out = snakemake(tmp_path / "results", spec=spec)
    assert out.returncode == 0, out.stderr[-4000:]
    results = tmp_path / "results"
    assert not (results / "tasks" / "tokens").exists()  # no text, no tokens
    assert not (results / "tasks" / "acts").exists()  # one stream pass trains all three
    records = [
        json.loads(f.read_text()) for f in (results / "tasks" / "evaluate").glob("*/metrics.json")
    ]
    assert len(records) == 3
    for r in records:
        m = r["metrics"]
        assert r["eval_tokens"] == 4096 and "ce_loss_original" not in m
        assert 0 < m["mcc"] <= 1 and 0 <= m["f1"] <= 1 and 0 < m["l0"] and 0 <= m["fvu"] < 1
        assert not math.isnan(m["true_l0"])
    tables = results / "micro-synthetic" / "tables"
    text = (tables / "ground_truth.md").read_text()
    assert "MCC" in text and text.count("| sae ") == 2 and text.count("| tc ") == 1
    assert (tables / "ground_truth.png").stat().st_size > 10_000
