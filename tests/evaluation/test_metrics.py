"""Every metric against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from tcspec.evaluation.metrics import (
    DENSE_THRESHOLD,
    METRICS,
    Accumulator,
    all_logprobs,
    ce_from_logprobs,
    kl_from_logprobs,
    next_token_ce,
)

# Two tokens, d_out = 2, d_sae = 3.
Y = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
Y_HAT = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
Z = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])


def _fidelity() -> dict[str, float]:
    acc = Accumulator()
    acc.update(Y, Y_HAT, Z)
    return acc.compute()


def test_registry_has_every_metric_with_a_formula():
    expected = {
        "l0", "l1", "mse", "fvu", "explained_variance", "cosine_sim", "dead_fraction",
        "dense_fraction", "ce_loss_original", "ce_loss_replaced", "ce_loss_zero_ablated",
        "ce_loss_mean_ablated", "ce_recovered", "ce_recovered_mean_ablation", "kl", "ce_delta",
        "kl_zero_ablated", "kl_div_score",
    }  # fmt: skip
    assert expected <= set(METRICS)
    for m in METRICS.values():
        assert "=" in m.formula or "as L_orig" in m.formula, m.name


def test_sparsity_by_hand():
    m = _fidelity()
    # active: token0 {1, 2}, token1 {2} -> (2 + 1) / 2
    assert m["l0"] == pytest.approx(1.5)
    # |z| sums: token0 2 + 1 = 3, token1 3 -> (3 + 3) / 2
    assert m["l1"] == pytest.approx(3.0)
    # feature 0 never fires
    assert m["dead_fraction"] == pytest.approx(1 / 3)
    # feature 1 fires on 1/2, feature 2 on 2/2 of tokens: both > 0.1
    assert m["dense_fraction"] == pytest.approx(2 / 3)


def test_fidelity_by_hand():
    m = _fidelity()
    # squared errors: token0 (0)^2 + (-1)^2 = 1, token1 (2)^2 + 0 = 4 -> 5 over 2 x 2 entries
    assert m["mse"] == pytest.approx(5 / 4)
    # mean(y) = (2, 0); deviations (-1, 0), (1, 0) -> total variance 2; fvu = 5 / 2
    assert m["fvu"] == pytest.approx(2.5)
    assert m["explained_variance"] == pytest.approx(-1.5)
    # cos: token0 <(1,0),(1,1)> / (1 * sqrt 2) = 1/sqrt2, token1 3 / (3 * 1) = 1
    assert m["cosine_sim"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_dense_threshold_is_strict():
    assert DENSE_THRESHOLD == 0.1
    z = torch.zeros(20, 3)
    z[:2, 0] = 1.0  # 2/20 = 0.10: not dense
    z[:3, 1] = 1.0  # 3/20 = 0.15: dense
    acc = Accumulator()
    acc.update(torch.zeros(20, 1), torch.zeros(20, 1), z)
    m = acc.compute()
    assert m["dense_fraction"] == pytest.approx(1 / 3)
    assert m["dead_fraction"] == pytest.approx(1 / 3)
    assert m["l0"] == pytest.approx(5 / 20)


def test_fvu_uses_the_mean_over_the_whole_eval_set():
    # batch 1 holds y = 1, 1; batch 2 holds y = 3, 3 (d_out = 1). Per-batch variance is 0,
    # but about the eval-set mean 2 every token deviates by 1: total variance 4.
    acc = Accumulator()
    z = torch.ones(2, 1)
    acc.update(torch.tensor([[1.0], [1.0]]), torch.tensor([[2.0], [1.0]]), z)  # sq err 1
    acc.update(torch.tensor([[3.0], [3.0]]), torch.tensor([[3.0], [1.0]]), z)  # sq err 4
    m = acc.compute()
    assert m["fvu"] == pytest.approx(5 / 4)
    assert m["mse"] == pytest.approx(5 / 4)


def test_ce_metrics_by_hand():
    acc = Accumulator()
    # 4 CE positions; mean losses: orig 2, replaced 3, zero 6, mean-ablated 4
    # 6 KL positions (KL covers the last position of each context too): kl 0.5, zero 2
    acc.update_ce(
        original=torch.tensor([[1.0, 3.0]]),
        replaced=torch.tensor([[2.0, 4.0]]),
        zero_ablated=torch.tensor([[6.0, 6.0]]),
        mean_ablated=torch.tensor([[5.0, 3.0]]),
    )
    acc.update_kl(kl=torch.tensor([[0.25, 0.75, 0.5]]), kl_zero_ablated=torch.full((1, 3), 2.0))
    acc.update_ce(
        original=torch.tensor([[2.0, 2.0]]),
        replaced=torch.tensor([[3.0, 3.0]]),
        zero_ablated=torch.tensor([[6.0, 6.0]]),
        mean_ablated=torch.tensor([[4.0, 4.0]]),
    )
    acc.update_kl(
        kl=torch.tensor([[0.5, 0.5, 0.5]]), kl_zero_ablated=torch.tensor([[1.0, 3.0, 2.0]])
    )
    m = acc.compute()
    assert m["ce_loss_original"] == pytest.approx(2.0)
    assert m["ce_loss_replaced"] == pytest.approx(3.0)
    assert m["ce_loss_zero_ablated"] == pytest.approx(6.0)
    assert m["ce_loss_mean_ablated"] == pytest.approx(4.0)
    assert m["ce_delta"] == pytest.approx(1.0)
    assert m["ce_recovered"] == pytest.approx((6 - 3) / (6 - 2))
    assert m["ce_recovered_mean_ablation"] == pytest.approx((4 - 3) / (4 - 2))
    assert m["kl"] == pytest.approx(0.5)
    assert m["kl_zero_ablated"] == pytest.approx(2.0)
    assert m["kl_div_score"] == pytest.approx((2.0 - 0.5) / 2.0)
    assert "fvu" not in m  # no fidelity statistics were given


def test_next_token_ce_and_kl_by_hand():
    # vocab 2; position 0 uniform, position 1 (ln 3, 0) -> p = (3/4, 1/4); position 2 is last
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [9.0, 9.0]]])
    tokens = torch.tensor([[0, 1, 0]])
    ce = next_token_ce(logits, tokens)
    assert ce.shape == (1, 2)
    # position 0 predicts token 1 with p 1/2, position 1 predicts token 0 with p 3/4
    assert ce[0, 0].item() == pytest.approx(math.log(2))
    assert ce[0, 1].item() == pytest.approx(math.log(4 / 3))
    ce2 = ce_from_logprobs(all_logprobs(logits)[:, :-1], tokens)  # as evaluation computes it
    assert ce2[0].tolist() == pytest.approx([math.log(2), math.log(4 / 3)])
    # KL((1/2, 1/2) || (3/4, 1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); KL(p || p) = 0
    p = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    q = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    kl = kl_from_logprobs(all_logprobs(p), all_logprobs(q))  # per position, as evaluation
    assert kl.shape == (1, 2)
    assert kl[0, 0].item() == pytest.approx(0.5 * math.log(4 / 3))
    assert kl[0, 1].item() == pytest.approx(0.0, abs=1e-7)
    assert kl_from_logprobs(all_logprobs(q), all_logprobs(q)).abs().max().item() < 1e-7


def test_ce_recovered_is_nan_when_ablation_costs_nothing():
    acc = Accumulator()
    one = torch.ones(3)
    acc.update_ce(original=one, replaced=one, zero_ablated=one)
    assert math.isnan(acc.compute()["ce_recovered"])


def test_batches_accumulate_to_the_whole():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, 4, generator=g) + 3.0
    y_hat = y + 0.3 * torch.randn(50, 4, generator=g)
    z = torch.relu(torch.randn(50, 8, generator=g) - 0.5)
    whole = Accumulator()
    whole.update(y, y_hat, z)
    parts = Accumulator()
    for i in range(0, 50, 7):
        parts.update(y[i : i + 7], y_hat[i : i + 7], z[i : i + 7])
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12), k


def test_errors_for_people():
    acc = Accumulator()
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="unknown loss kinds"):
        acc.update_ce(origin=torch.zeros(2))
    acc.update_ce(original=torch.zeros(2))
    with pytest.raises(ValueError, match="earlier"):
        acc.update_ce(original=torch.zeros(2), replaced=torch.zeros(2))
    with pytest.raises(ValueError, match="lack statistics"):
        acc.compute(["fvu"])
    with pytest.raises(ValueError, match="unknown metrics"):
        acc.compute(["nope"])


def test_sanity_flags_name_what_looks_wrong():
    from tcspec.evaluation.metrics import sanity_flags

    assert sanity_flags({"ce_recovered": 0.9, "fvu": 0.2, "dead_fraction": 0.1}) == []
    assert sanity_flags({"fvu": float("nan")}) == []
    flags = sanity_flags({"ce_recovered": -0.25, "fvu": 1.5, "dead_fraction": 0.75})
    assert [f.split()[0] for f in flags] == ["CE", "FVU", "75%"]
    assert "-25.0% < 0" in flags[0] and "1.5 > 1" in flags[1]
