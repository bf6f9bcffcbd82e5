"""JumpReLU and BatchTopK dictionaries: the pseudo-derivatives by hand, the hand-written
gradients against autograd on the definitions, and training on the synthetic data of
test_train (held-out BatchTopK L0 near k; JumpReLU's L0 falling as l0_coef rises)."""

from __future__ import annotations

import pytest
import torch
from test_train import D_IN, IN, SPECS, make_batches, member, run

from tcspec import coders
from tcspec.coders import Coder, CoderConfig
from tcspec.train import Workspace, loss_and_grads, reference_loss

torch.set_num_threads(1)


# ------------------------------------------------------------------ JumpReLU, BatchTopK
def test_jumprelu_pseudo_derivatives_by_hand():
    """K(u) = 1[-1/2 < u < 1/2]; d z/d theta = -(theta/eps) K, d H/d theta = -(1/eps) K."""
    from tcspec.train.jumprelu import JumpReLUFn, StepFn

    pre = torch.tensor([[0.5, 1.0], [0.95, 0.2]], dtype=torch.float64)
    theta = torch.tensor([1.0, 0.25], dtype=torch.float64, requires_grad=True)
    z = JumpReLUFn.apply(pre, theta, 0.2)
    assert z.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    z.sum().backward()
    # u = (pre - theta)/eps = [[-2.5, 3.75], [-0.25, -0.25]], K(u) = [[0, 0], [1, 1]]:
    # -(theta/eps) * column sums of K = [-5, -1.25]
    assert theta.grad.tolist() == pytest.approx([-5.0, -1.25])
    theta.grad = None
    StepFn.apply(pre, theta, 0.2).sum().backward()
    assert theta.grad.tolist() == pytest.approx([-5.0, -5.0])  # -(1/eps) * column sums


@pytest.mark.parametrize(
    "kind, loss, dead_mode",
    [("transcoder", "normalized_mse", "none"), ("sae", "squared_error", "ghost_grads"),
     ("skip_transcoder", "squared_error", "none")],
)  # fmt: skip
def test_jumprelu_gradients_match_autograd_on_the_definitions(kind, loss, dead_mode):
    g = torch.Generator().manual_seed(1)
    S, d_out = 12, D_IN if kind == "sae" else 5
    opts = SPECS[kind](
        kind=kind, d_sae=S, activation="jumprelu", loss=loss, dead_features=dead_mode,
        l0_coef=0.3, jumprelu_bandwidth=0.8,
    )  # fmt: skip
    c = Coder(CoderConfig(kind, D_IN, d_out, S, "jumprelu"), seed=0).double()
    lt = (torch.rand(S, generator=g, dtype=torch.float64) * 0.6 + 0.1).log().requires_grad_()
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        c.threshold.copy_(lt.exp())
    x = torch.randn(16, D_IN, generator=g, dtype=torch.float64)
    y = x if kind == "sae" else torch.randn(16, d_out, generator=g, dtype=torch.float64)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[1, 4, 7]] = True
    dead = dead if dead_mode != "none" else None
    ref = reference_loss(c, x, y, opts, 0.02, dead, log_threshold=lt)
    ref["loss"].backward()
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    grads, terms, _, _ = loss_and_grads(c, x, y, opts, 0.02, idx, Workspace("cpu", torch.float64))
    for k in ("loss", "rec", "l1", "aux", "l0_loss"):
        assert torch.allclose(terms[k], ref[k].detach(), rtol=1e-12, atol=1e-12), k
    assert ref["l0_loss"] > 0 and (lt.grad != 0).sum() > 3  # the kernel engaged
    for name, p in c.named_parameters():
        if name != "threshold":
            assert torch.allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12), name
    assert torch.allclose(grads["log_threshold"], lt.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind, dead_mode", [("transcoder", "aux_k"), ("sae", "none")])
def test_batchtopk_gradients_match_autograd(kind, dead_mode):
    g = torch.Generator().manual_seed(2)
    S, d_out = 12, D_IN if kind == "sae" else 5
    opts = SPECS[kind](
        kind=kind, d_sae=S, activation="batchtopk", k=3, dead_features=dead_mode, aux_k=4
    )
    c = Coder(CoderConfig(kind, D_IN, d_out, S, "batchtopk", 3), seed=0).double()
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(16, D_IN, generator=g, dtype=torch.float64)
    y = x if kind == "sae" else torch.randn(16, d_out, generator=g, dtype=torch.float64)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[1, 4, 7, 9]] = True
    dead = dead if dead_mode != "none" else None
    ref = reference_loss(c, x, y, opts, 0.0, dead)
    ref["loss"].backward()
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    grads, terms, codes, _ = loss_and_grads(
        c, x, y, opts, 0.0, idx, Workspace("cpu", torch.float64)
    )
    assert int((codes.z > 0).sum()) == 3 * 16  # k * B over the batch
    for k in ("loss", "rec", "aux"):
        assert torch.allclose(terms[k], ref[k].detach(), rtol=1e-12, atol=1e-12), k
    for name, p in c.named_parameters():
        if name != "threshold":
            assert torch.allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12), name


def test_jumprelu_l0_falls_as_l0_coef_rises(tmp_path):
    ms = [
        member(tmp_path, f"c{c}", activation="jumprelu", l0_coef=c, jumprelu_bandwidth=0.1,
               lr=1e-2, loss="squared_error")
        for c in (1e-3, 1e-1)
    ]  # fmt: skip
    res = run(ms, 150, tmp_path)
    for r in res:
        assert r["final"]["rec"] < 0.2 * r["curve"][0]["rec"], r["name"]
    assert res[0]["final"]["l0"] > 1.3 * res[1]["final"]["l0"], [r["final"]["l0"] for r in res]
    c = coders.load(ms[1].out_dir)
    assert c.cfg.activation == "jumprelu" and (c.threshold > 0).all()
    assert not torch.equal(c.threshold, torch.full_like(c.threshold, 0.01))  # it trained


def test_jumprelu_threshold_lr_lets_l0_follow_l0_coef(tmp_path):
    """At the shared lr, Adam caps log(threshold)'s climb at ~lr per step: every l0_coef
    saturates at that cap and ends at one L0. Its own rate lets L0 fall with l0_coef."""
    coefs, steps, lr = (1e-4, 1e-3, 1e-2), 150, 3e-3
    ms = [
        member(tmp_path, f"c{c}-{t}", activation="jumprelu", l0_coef=c, lr=lr,
               jumprelu_threshold_lr=t, loss="normalized_mse")
        for t in (None, 3e-2) for c in coefs
    ]  # fmt: skip
    res = run(ms, steps, tmp_path)
    shared, own = [r["final"]["l0"] for r in res[:3]], [r["final"]["l0"] for r in res[3:]]
    assert max(shared) < 1.02 * min(shared), shared  # saturated: l0_coef makes no difference
    cap = 0.01 * torch.exp(torch.tensor(2 * steps * lr))  # Adam's step stays near lr
    theta, theta_own = (coders.load(ms[i].out_dir).threshold for i in (2, 5))
    assert theta.max() < cap < theta_own.median(), (theta.max(), theta_own.median())
    assert own[0] > 2 * own[1] > 4 * own[2], own
    assert own[0] > 0.7 * shared[0]  # the weakest penalty keeps most features
    for r in res[3:5]:
        assert r["final"]["rec"] < 0.2 * r["curve"][0]["rec"], r["name"]


def test_jumprelu_resumes_bitwise(tmp_path):
    def members(root):
        return [member(root, "j", activation="jumprelu", l0_coef=1e-3, jumprelu_threshold_lr=3e-2,
                       lr_decay="cosine", checkpoint_every=4)]  # fmt: skip

    run(members(tmp_path / "clean"), 20, tmp_path / "clean")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(members(tmp_path / "killed"), 20, tmp_path / "killed", fail_at=11)
    run(members(tmp_path / "killed"), 20, tmp_path / "killed")
    a = coders.load(tmp_path / "clean" / "j").state_dict()
    b = coders.load(tmp_path / "killed" / "j").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batchtopk_inference_l0_is_near_k_on_held_out_data(tmp_path):
    m = member(tmp_path, "b", activation="batchtopk", k=4, dead_features="aux_k", dead_window=5)
    (res,) = run([m], 200, tmp_path)
    assert all(row["l0"] == pytest.approx(4.0) for row in res["curve"])  # k * B in training
    c = coders.load(m.out_dir)
    assert (c.threshold > 0).all() and len(set(c.threshold.tolist())) == 1
    held_out = torch.cat([next(make_batches()(50_000 + i))[IN] for i in range(4)])
    l0 = float((c.encode(held_out) > 0).sum(1).float().mean())
    assert abs(l0 - 4) < 0.25 * 4, l0
    y_hat, _ = c(held_out)
    assert torch.isfinite(y_hat).all()


@pytest.mark.parametrize(
    "kind, loss", [("sae", "squared_error"), ("skip_transcoder", "normalized_mse")]
)
def test_matryoshka_gradients_match_autograd(kind, loss):
    g = torch.Generator().manual_seed(3)
    S, d_out = 12, D_IN if kind == "sae" else 5
    opts = SPECS[kind](
        kind=kind, d_sae=S, activation="batchtopk", k=4, loss=loss, matryoshka=[3, 7],
        dead_features="aux_k" if kind == "sae" else "none", aux_k=4,
    )  # fmt: skip
    c = Coder(CoderConfig(kind, D_IN, d_out, S, "batchtopk", 4), seed=0).double()
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(16, D_IN, generator=g, dtype=torch.float64)
    y = x if kind == "sae" else torch.randn(16, d_out, generator=g, dtype=torch.float64)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[1, 8, 10]] = True
    dead = dead if kind == "sae" else None
    ref = reference_loss(c, x, y, opts, 0.0, dead)
    ref["loss"].backward()
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    grads, terms, _, _ = loss_and_grads(c, x, y, opts, 0.0, idx, Workspace("cpu", torch.float64))
    assert terms["matryoshka"] > 0  # the two inner prefixes
    for k in ("loss", "rec", "aux", "matryoshka"):
        assert torch.allclose(terms[k], ref[k].detach(), rtol=1e-12, atol=1e-12), k
    for name, p in c.named_parameters():
        if name != "threshold":
            assert torch.allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12), name


def test_matryoshka_prefix_fvu_does_not_increase_with_width(tmp_path):
    m = member(tmp_path, "m", kind="sae", activation="batchtopk", k=4, matryoshka=[8, 16, 32])
    run([m], 200, tmp_path)
    c = coders.load(m.out_dir)
    x = torch.cat([next(make_batches()(60_000 + i))[IN] for i in range(4)])
    with torch.no_grad():
        z = c.encode(x)
        var = (x - x.mean(0)).square().sum()
        fvu = [float((c.decode(z * (torch.arange(64) < w)) - x).square().sum() / var)
               for w in (8, 16, 32, 64)]  # fmt: skip
    assert all(b <= a for a, b in zip(fvu, fvu[1:])), fvu
    assert fvu[-1] < 0.5 and fvu[0] < 1.0, fvu  # 200 steps: it learned at every width
