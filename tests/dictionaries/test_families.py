"""JumpReLU, BatchTopK and Matryoshka dictionaries: the pseudo-derivatives by hand, the
hand-written gradients against autograd on the definitions (JumpReLU's step and tanh L0
penalties and its pre-activation loss, the last also against finite differences), and
training on the synthetic data of test_train (held-out BatchTopK L0 near k; JumpReLU's L0
falling as l0_coef rises; Matryoshka prefix FVUs not increasing with width)."""

from __future__ import annotations

import pytest
import torch

from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.training import Workspace, loss_and_grads, reference_loss
from tests.training.test_train import D_IN, IN, SPECS, make_batches, member, run

torch.set_num_threads(1)


# ------------------------------------------------------------------ JumpReLU, BatchTopK
def test_jumprelu_pseudo_derivatives_by_hand():
    """K(u) = 1[-1/2 < u < 1/2]; d z/d theta = -(theta/eps) K, d H/d theta = -(1/eps) K."""
    from tcspec.dictionaries.families.jumprelu import JumpReLUFn, StepFn

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


def _jumprelu_case(kind: str, seed: int = 1, **opts):
    """A float64 JumpReLU coder with perturbed weights, thresholds exp(lt) in [0.1, 0.7],
    a batch of 16 and a dead mask over features 1, 4, 7: (coder, opts, lt, x, y, dead)."""
    g = torch.Generator().manual_seed(seed)
    S, d_out = 12, D_IN if kind == "sae" else 5
    o = dict(kind=kind, d_sae=S, activation="jumprelu", l0_coef=0.3, jumprelu_bandwidth=0.8)
    spec = SPECS[kind](**(o | opts))
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
    return c, spec, lt, x, y, dead


@pytest.mark.parametrize(
    "kind, loss, dead_mode, extra",
    [("transcoder", "normalized_mse", "none", {}), ("sae", "squared_error", "ghost_grads", {}),
     ("skip_transcoder", "squared_error", "none", {}),
     ("transcoder", "normalized_mse", "none", {"penalty": "tanh", "tanh_scale": 2.5}),
     ("sae", "squared_error", "ghost_grads", {"penalty": "tanh", "pre_act_coef": 0.7}),
     ("skip_transcoder", "squared_error", "none", {"pre_act_coef": 0.7})],
)  # fmt: skip
def test_jumprelu_gradients_match_autograd_on_the_definitions(kind, loss, dead_mode, extra):
    c, opts, lt, x, y, dead = _jumprelu_case(kind, loss=loss, dead_features=dead_mode, **extra)
    dead = dead if dead_mode != "none" or "pre_act_coef" in extra else None
    ref = reference_loss(c, x, y, opts, 0.02, dead, log_threshold=lt)
    ref["loss"].backward()
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    grads, terms, _, _ = loss_and_grads(c, x, y, opts, 0.02, idx, Workspace("cpu", torch.float64))
    names = ("loss", "rec", "l1", "aux", "l0_loss") + ("pre_act_loss",) * ("pre_act_coef" in extra)
    assert set(terms) == set(names)
    for k in names:
        assert torch.allclose(terms[k], ref[k].detach(), rtol=1e-12, atol=1e-12), k
        assert ref[k] > 0 or k == "aux" and dead_mode == "none", k  # every term engaged
    assert (lt.grad != 0).sum() > 3  # the kernel engaged
    for name, p in c.named_parameters():
        if name != "threshold":
            assert torch.allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12), name
    assert torch.allclose(grads["log_threshold"], lt.grad, rtol=1e-9, atol=1e-12)


def _term_grads(c, opts, x, y, idx, **change) -> dict[str, torch.Tensor]:
    """The gradients of the loss terms that `change` switches on (their grads with the
    change less those without): the hand-written gradients are additive over terms."""
    ws = Workspace("cpu", torch.float64)
    on, _, _, _ = loss_and_grads(c, x, y, opts.model_copy(update=change), 0.0, idx, ws)
    on = {k: v.clone() for k, v in on.items()}
    off, _, _, _ = loss_and_grads(c, x, y, opts, 0.0, idx, ws)
    return {k: on[k] - off[k] for k in on}


def test_jumprelu_tanh_threshold_gradient_is_the_pseudo_derivative_formula():
    """d L0 / d theta_i = -(theta_i / eps) sum_b K((pre_bi - theta_i) / eps) (l0_coef / B)
    c n_i (1 - tanh^2(c z_bi n_i)), the tanh's slope carried through JumpReLU's kernel."""
    c, opts, lt, x, y, _ = _jumprelu_case("transcoder", penalty="tanh", tanh_scale=2.5)
    gr = _term_grads(c, opts.model_copy(update={"l0_coef": 0.0}), x, y, None, l0_coef=0.3)
    theta, eps, B, coef, scale = lt.detach().exp(), 0.8, x.shape[0], 0.3, 2.5
    pre = c.pre_acts(x).detach()  # [B, S]
    z, n = pre * (pre > theta), c.W_dec.detach().norm(dim=1)
    K = ((pre - theta) / eps).abs().lt(0.5).double()  # [B, S]
    slope = coef / B * scale * n * (1 - torch.tanh(scale * z * n) ** 2)  # d L0 / d z
    d_theta = -(theta / eps) * (K * slope).sum(0)  # [S]
    assert (K.sum(0) > 0).sum() > 3 and (d_theta != 0).sum() > 3
    assert torch.allclose(gr["log_threshold"], d_theta * theta, rtol=1e-10, atol=1e-14)
    # and W_dec gets d L0 / d n_i along W_dec,i / n_i
    d_n = coef / B * scale * (z * (1 - torch.tanh(scale * z * n) ** 2)).sum(0)  # [S]
    d_W = c.W_dec.detach() * (d_n / n).unsqueeze(1)  # [S, d_out]
    assert torch.allclose(gr["W_dec"], d_W, rtol=1e-10, atol=1e-14)


def test_jumprelu_pre_act_gradients_match_finite_differences():
    """The pre-activation loss is a plain (piecewise-linear) function of pre and theta:
    its hand-written gradients equal central differences, only on the dead features."""
    c, opts, lt, x, y, dead = _jumprelu_case("skip_transcoder", seed=4)
    idx, coef, h = dead.nonzero().squeeze(1), 0.7, 1e-6
    gr = _term_grads(c, opts, x, y, idx, pre_act_coef=coef)
    o = opts.model_copy(update={"pre_act_coef": coef})
    ws = Workspace("cpu", torch.float64)

    def term() -> float:
        return float(loss_and_grads(c, x, y, o, 0.0, idx, ws)[1]["pre_act_loss"])

    assert term() > 0
    tensors = dict(c.named_parameters()) | {"log_threshold": lt}
    for name in ("W_enc", "b_enc", "b_dec", "W_dec", "log_threshold"):
        t, fd = tensors[name], torch.zeros_like(tensors[name])
        for i in range(t.numel()):
            with torch.no_grad():
                for sign in (1, -1):
                    t.view(-1)[i] += sign * h
                    c.threshold.copy_(lt.exp())
                    fd.view(-1)[i] += sign * term() / (2 * h)
                    t.view(-1)[i] -= sign * h
                c.threshold.copy_(lt.exp())
        assert torch.allclose(gr[name], fd, rtol=1e-6, atol=1e-8), name
    live = ~dead
    assert (gr["log_threshold"][live] == 0).all() and (gr["W_dec"][live] == 0).all()
    assert (gr["W_enc"][:, live] == 0).all() and (gr["b_enc"][live] == 0).all()
    assert (gr["log_threshold"][dead] > 0).all()  # it pushes dead thresholds down


@pytest.mark.parametrize("kind, dead_mode", [("transcoder", "aux_k"), ("sae", "none")])
def test_batchtopk_gradients_match_autograd(kind, dead_mode):
    g = torch.Generator().manual_seed(2)
    S, d_out = 12, D_IN if kind == "sae" else 5
    aux = {"aux_k": 4} if dead_mode == "aux_k" else {}
    opts = SPECS[kind](
        kind=kind, d_sae=S, activation="batchtopk", k=3, dead_features=dead_mode, **aux
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


@pytest.mark.parametrize("penalty", ["step", "tanh"])
def test_jumprelu_l0_falls_as_l0_coef_rises(tmp_path, penalty):
    ms = [
        member(tmp_path, f"c{c}", activation="jumprelu", l0_coef=c, jumprelu_bandwidth=0.1,
               lr=1e-2, loss="squared_error", penalty=penalty)
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
    saturates at that cap and ends at one L0. Its own rate (by default 8 / steps, here
    0.053) lets L0 fall with l0_coef."""
    coefs, steps, lr = (1e-4, 1e-3, 1e-2), 150, 3e-3
    ms = [
        member(tmp_path, f"c{c}-{t}", activation="jumprelu", l0_coef=c, lr=lr,
               jumprelu_threshold_lr=t, loss="normalized_mse")
        for t in (lr, None) for c in coefs
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


PRE_ACT = {
    "penalty": "tanh",
    "pre_act_coef": 1e-2,
    "dead_window": 2,
    "jumprelu_init_threshold": 1.0,
}
"""Tanh penalty and the pre-activation loss, with thresholds high enough that features die
(and the loss acts) within a few steps."""


@pytest.mark.parametrize("extra", [{}, PRE_ACT], ids=["step", "tanh_pre_act"])
def test_jumprelu_resumes_bitwise(tmp_path, extra):
    def members(root):
        return [member(root, "j", activation="jumprelu", l0_coef=1e-3, jumprelu_threshold_lr=3e-2,
                       lr_decay="cosine", checkpoint_every=4, **extra)]  # fmt: skip

    (res,) = run(members(tmp_path / "clean"), 20, tmp_path / "clean")
    if extra:
        assert sum(row["pre_act_loss"] > 0 for row in res["curve"]) > 10  # it acted
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(members(tmp_path / "killed"), 20, tmp_path / "killed", fail_at=11)
    run(members(tmp_path / "killed"), 20, tmp_path / "killed")
    a = coders.load(tmp_path / "clean" / "j").state_dict()
    b = coders.load(tmp_path / "killed" / "j").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_jumprelu_pre_act_loss_keeps_fewer_features_dead(tmp_path):
    """Thresholds start above most pre-activations, so many features die; the loss pulls the
    dead thresholds and pre-activations together, and fewer stay dead."""
    ms = [
        member(tmp_path, f"p{c}", activation="jumprelu", l0_coef=1e-3, lr=1e-2,
               jumprelu_threshold_lr=3e-2, jumprelu_init_threshold=1.0, dead_window=5,
               loss="squared_error", pre_act_coef=c)
        for c in (None, 1e-1)
    ]  # fmt: skip
    off, on = (r["curve"][75:] for r in run(ms, 150, tmp_path))
    dead_off, dead_on = (sum(row["dead"] for row in c) / len(c) for c in (off, on))
    assert dead_off > 40 and dead_on < 0.5 * dead_off, (dead_off, dead_on)
    assert "pre_act_loss" not in off[0] and on[0]["pre_act_loss"] > 0


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
    "kind, loss, activation",
    [("sae", "squared_error", "batchtopk"), ("skip_transcoder", "normalized_mse", "batchtopk"),
     ("sae", "normalized_mse", "topk"), ("transcoder", "squared_error", "topk")],
)  # fmt: skip
def test_matryoshka_gradients_match_autograd(kind, loss, activation):
    g = torch.Generator().manual_seed(3)
    S, d_out = 12, D_IN if kind == "sae" else 5
    opts = SPECS[kind](
        kind=kind, d_sae=S, activation=activation, k=4, loss=loss, matryoshka=[3, 7],
        **({"dead_features": "aux_k", "aux_k": 4} if kind == "sae" else {}),
    )  # fmt: skip
    c = Coder(CoderConfig(kind, D_IN, d_out, S, activation, 4), seed=0).double()
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


@pytest.mark.parametrize("activation", ["batchtopk", "topk"])
def test_matryoshka_prefix_fvu_does_not_increase_with_width(tmp_path, activation):
    m = member(tmp_path, "m", kind="sae", activation=activation, k=4, matryoshka=[8, 16, 32])
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
