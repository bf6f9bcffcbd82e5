"""The trainer on synthetic data with known sparse structure.

x = sparse codes @ a random unit-row dictionary + an offset; y = x A + an offset (a fixed
linear map). Batch i is drawn from a generator seeded with i, so `batches(i)` can restart
anywhere, as the activation cache reader does.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.spec import SAESpec, SkipTranscoderSpec, TranscoderSpec
from tcspec.training import (
    CHECKPOINT,
    Member,
    MemberRun,
    Workspace,
    l1_factor,
    loss_and_grads,
    lr_factor,
    read_checkpoint,
    reference_loss,
    remove_parallel_grad,
    train_group,
)
from tcspec.vocab import WEIGHTS_FILE, d_sae_of, is_dead, never_fires

torch.set_num_threads(1)

D_IN, D_OUT, N_TRUE, B = 16, 12, 48, 128
IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
SPECS = {"transcoder": TranscoderSpec, "skip_transcoder": SkipTranscoderSpec, "sae": SAESpec}


def make_batches(bad_step: int | None = None, fail_at: int | None = None, sleep: float = 0.0):
    g = torch.Generator().manual_seed(123)
    D = torch.randn(N_TRUE, D_IN, generator=g)
    D /= D.norm(dim=1, keepdim=True)  # [N_TRUE, D_IN] true dictionary
    A = torch.randn(D_IN, D_OUT, generator=g) / D_IN**0.5  # [D_IN, D_OUT]
    x0, y0 = torch.randn(D_IN, generator=g), torch.randn(D_OUT, generator=g)

    def batches(start: int):
        for i in count(start):
            if i == fail_at:
                raise RuntimeError(f"simulated crash at batch {i}")
            gi = torch.Generator().manual_seed(10_000 + i)
            on = torch.rand(B, N_TRUE, generator=gi) < 0.06
            codes = on * torch.rand(B, N_TRUE, generator=gi) * 2  # [B, N_TRUE], ~3 active
            x = codes @ D + x0  # [B, D_IN]
            y = x @ A + y0  # [B, D_OUT]
            if i == bad_step:
                x[3, 2] = float("inf")
            if sleep:
                time.sleep(sleep)
            yield {IN: x, OUT: y}

    return batches


def member(tmp: Path, name: str, kind: str = "transcoder", seed: int = 0, **opts) -> Member:
    o = dict(kind=kind, d_sae=64, lr=3e-3, lr_warmup_steps=10, batch_size=B, checkpoint_every=10**6)
    o |= opts
    spec = SPECS[kind](**o)
    d_out = D_IN if kind == "sae" else D_OUT
    cfg = CoderConfig(
        kind=kind, d_in=D_IN, d_out=d_out, d_sae=spec.d_sae, activation=spec.activation, k=spec.k
    )
    out = IN if kind == "sae" else OUT
    return Member(name, spec, cfg, IN, out, tmp / name, seed)


def weights(m: Member) -> dict[str, torch.Tensor]:
    return load_file(str(m.out_dir / WEIGHTS_FILE))


def run(members, steps, tmp, **kw):
    return train_group(
        members, make_batches(**kw), steps, tmp / "ckpt", progress=False, log=lambda s: None
    )


# ---------------------------------------------------------------- gradients and schedules
CASES = [
    ("transcoder", {}, "squared_error", "none"),
    ("transcoder", {}, "normalized_mse", "ghost_grads"),
    ("transcoder", {}, "squared_error", "ghost_grads"),
    ("sae", {}, "normalized_mse", "ghost_grads"),
    ("sae", {}, "squared_error", "none"),
    ("skip_transcoder", {}, "normalized_mse", "none"),
    ("transcoder", {"activation": "topk", "k": 3}, "squared_error", "aux_k"),
    ("transcoder", {"activation": "topk", "k": 3}, "normalized_mse", "aux_k"),
]


@pytest.mark.parametrize("kind, act, loss, dead_mode", CASES)
def test_hand_written_gradients_match_autograd(kind, act, loss, dead_mode):
    """The hot path's gradients equal autograd's on the documented loss (float64)."""
    g = torch.Generator().manual_seed(0)
    S, d_out = 12, D_IN if kind == "sae" else 5
    aux = {"aux_k": 4} if dead_mode == "aux_k" else {}
    opts = SPECS[kind](kind=kind, d_sae=S, loss=loss, dead_features=dead_mode, **aux, **act)
    cfg = CoderConfig(kind, D_IN, d_out, S, act.get("activation", "relu"), act.get("k"))
    c = Coder(cfg, seed=0).double()
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(16, D_IN, generator=g, dtype=torch.float64)
    y = x if kind == "sae" else torch.randn(16, d_out, generator=g, dtype=torch.float64)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[1, 4, 7, 9, 10]] = True
    dead = dead if dead_mode != "none" else None
    ref = reference_loss(c, x, y, opts, 0.02, dead)
    ref["loss"].backward()
    ws = Workspace("cpu", torch.float64)
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    grads, terms, _, _ = loss_and_grads(c, x, y, opts, 0.02, idx, ws)
    for k in ("loss", "rec", "l1", "aux"):
        assert torch.allclose(terms[k], ref[k].detach(), rtol=1e-12, atol=1e-12), k
    if dead_mode != "none":
        assert terms["aux"] > 0
    for name, p in c.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-9, atol=1e-12), name


def _ghost_by_hand(c: Coder, x, y, dead, r_side: str):
    """The released code's ghost-grad term on the dead features, its residual r from the
    transcoder's input (x - y_hat) or output (y - y_hat): gradients of W_dec's dead rows."""
    pre = (x - c.b_dec) @ c.W_enc + c.b_enc  # [B, S]
    y_hat = torch.relu(pre) @ c.W_dec + c.b_dec_out  # [B, d_out]
    rec_elem = ((y_hat - y) ** 2 / y.norm(dim=1, keepdim=True)).detach()
    r = ((x if r_side == "input" else y) - y_hat).detach()
    W = c.W_dec[dead].detach().requires_grad_()
    g = torch.exp(pre[:, dead].detach()) @ W
    g = g * (r.norm(dim=1) / (1e-6 + 2 * g.norm(dim=1)))[:, None].detach()
    q = (g - r) ** 2 / r.norm(dim=1, keepdim=True)
    (grad,) = torch.autograd.grad(((rec_elem / (q + 1e-6)).detach() * q).mean(), W)
    return grad  # [n_dead, d_out]


@pytest.mark.parametrize("side", ["output", "input"])
def test_ghost_residual_is_the_chosen_side(side):
    """`ghost_residual: input` fits the dead features' ghost output to x - y_hat (the
    paper's code), `output` to y - y_hat: the dead decoder rows' gradients are those of
    each definition, and the two differ."""
    from tcspec.training.dead import ghost_residual

    g = torch.Generator().manual_seed(3)
    S, d = 10, 6
    opts = TranscoderSpec(kind="transcoder", d_sae=S, dead_features="ghost_grads",
                          ghost_residual=side)  # fmt: skip
    c = Coder(CoderConfig("transcoder", d, d, S), seed=0).double()
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(8, d, generator=g, dtype=torch.float64)
    y = 2 * torch.randn(8, d, generator=g, dtype=torch.float64)
    y_hat = c(x)[0].detach()
    side_of = {"input": x, "output": y}
    assert torch.allclose(ghost_residual(side, x, y, y_hat - y), side_of[side] - y_hat)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[0, 3, 8]] = True
    idx = dead.nonzero().squeeze(1)
    with_ghost = loss_and_grads(c, x, y, opts, 0.0, idx, Workspace("cpu", torch.float64))
    plain = opts.model_copy(update={"dead_features": "none", "ghost_residual": "output"})
    without = loss_and_grads(c, x, y, plain, 0.0, None, Workspace("cpu", torch.float64))
    ghost = with_ghost[0]["W_dec"][idx] - without[0]["W_dec"][idx]  # the ghost term's part
    other = "output" if side == "input" else "input"
    assert torch.allclose(ghost, _ghost_by_hand(c, x, y, dead, side), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ghost, _ghost_by_hand(c, x, y, dead, other), rtol=1e-3)


@pytest.mark.parametrize("dead_rows", [[1, 4, 9, 12, 15, 17, 20, 22], [2, 5]])
def test_aux_k_term_equals_sparsify(dead_rows):
    """The aux-k term is sparsify's (`SparseCoder.forward`'s `auxk_loss`, its own code run
    here): k_aux = d_out // 2, scaled by min(n_dead / k_aux, 1), over the target's total
    variance. With b_dec = 0 (sparsify decodes the aux latents with the bias; see
    `aux_k_term`), many dead features and few."""
    sparsify = pytest.importorskip("sparsify")
    from tcspec.training.dead import aux_k_term

    torch.manual_seed(0)
    d, S, B = 8, 24, 32
    sc = sparsify.SparseCoder(d, sparsify.SparseCoderConfig(num_latents=S, k=3, transcode=True))
    with torch.no_grad():
        sc.W_dec.normal_()
        sc.encoder.bias.normal_()
    x, y = torch.randn(B, d), 3 * torch.randn(B, d)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[dead_rows] = True
    out = sc(x, y, dead_mask=dead)
    pre = x @ sc.encoder.weight.T + sc.encoder.bias  # [B, S]
    with torch.no_grad():
        ours = aux_k_term(pre[:, dead], sc.W_dec[dead], y, out.sae_out - y, d // 2)
    assert ours.item() == pytest.approx(out.auxk_loss.item(), rel=1e-5)


def test_loss_forms_by_hand():
    """squared_error = mean_b sum_j e^2; normalized_mse = mean_bj e^2 / ||y_b||."""
    opts_se = TranscoderSpec(kind="transcoder", d_sae=3, loss="squared_error")
    opts_n = TranscoderSpec(kind="transcoder", d_sae=3, loss="normalized_mse")
    c = Coder(CoderConfig("transcoder", 2, 2, 3))
    with torch.no_grad():
        c.W_enc.zero_()  # z = 0, so y_hat = b_dec_out = 0
    x = torch.zeros(2, 2)
    y = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    assert reference_loss(c, x, y, opts_se, 0.0, None)["rec"].item() == pytest.approx(13.0)
    # (9/5 + 16/5 + 0 + 1/1) / 4 = 1.5
    assert reference_loss(c, x, y, opts_n, 0.0, None)["rec"].item() == pytest.approx(1.5)


def test_schedules():
    assert lr_factor(0, 100, 10, "none", 0.8) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "none", 0.8) == 1.0
    assert lr_factor(99, 100, 0, "none", 0.8) == 1.0
    assert lr_factor(79, 100, 0, "linear", 0.8) == 1.0
    assert lr_factor(90, 100, 0, "linear", 0.8) == pytest.approx(0.5)
    assert lr_factor(90, 100, 0, "cosine", 0.8) == pytest.approx(0.5)
    assert lr_factor(85, 100, 0, "cosine", 0.8) == pytest.approx(0.5 * (1 + 2**-0.5))
    assert l1_factor(4, 10) == pytest.approx(0.5) and l1_factor(50, 10) == 1.0


def test_adam_matches_torch_optim(tmp_path):
    m = member(tmp_path, "a", adam_betas=(0.8, 0.95))
    r = MemberRun(m, steps=10, batch_size=B, device="cpu")
    ref = {k: p.clone().requires_grad_() for k, p in r.params.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=1e-2, betas=(0.8, 0.95), fused=True)
    for t in range(1, 6):
        grads = {k: torch.randn_like(p) for k, p in r.params.items()}
        for k, p in ref.items():
            p.grad = grads[k].clone()
        opt.step()
        r.adam.step(r.params, grads, t, 1e-2, (0.8, 0.95))
    for k, p in r.params.items():
        assert torch.equal(p, ref[k]), k


def test_remove_parallel_grad():
    W = torch.randn(10, 6)
    g = torch.randn(10, 6)
    remove_parallel_grad(g, W, Workspace("cpu"))
    assert (g * W).sum(1).abs().max() < 1e-5


# ------------------------------------------------------------------------------ training
def test_loss_falls_and_l0_falls_as_l1_rises(tmp_path):
    ms = [member(tmp_path, f"l1-{l1}", l1=l1, loss="squared_error") for l1 in (1e-3, 1e-2, 1e-1)]
    res = run(ms, 150, tmp_path)
    for r in res:
        assert r["final"]["rec"] < 0.05 * r["curve"][0]["rec"], r["name"]
        assert r["tokens"] == 150 * B and r["tokens_per_s"] > 0
    l0 = [r["final"]["l0"] for r in res]
    assert l0[0] > l0[1] > l0[2], l0
    for m in ms:
        assert (m.out_dir / "training.json").exists() and (
            m.out_dir / "density.safetensors"
        ).exists()
        c = coders.load(m.out_dir)
        assert c.cfg == m.config
        assert torch.allclose(c.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert not (tmp_path / "ckpt" / CHECKPOINT).exists()  # removed once outputs are written


OPTION_SETS = [
    dict(loss="normalized_mse", l1=1.0, dead_features="ghost_grads", dead_window=1, d_sae=256),
    dict(loss="squared_error", l1=1.0, dead_features="resample", dead_window=2, d_sae=256),
    dict(activation="topk", k=4, dead_features="aux_k", dead_window=1, aux_k=8, d_sae=256),
    dict(kind="skip_transcoder", l1=1e-2, lr_decay="linear", lr_decay_start=0.5),
    dict(kind="sae", l1=1e-2, lr_decay="cosine", l1_warmup_steps=20, loss="squared_error"),
    dict(normalize_decoder=False, remove_parallel_grad=False, init_bias_from_mean=False),
]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_every_option_trains(tmp_path, opts):
    m = member(tmp_path, "m", **opts)
    (res,) = run([m], 60, tmp_path)
    first, last = res["curve"][0], res["final"]
    assert last["rec"] < 0.5 * first["rec"]
    # the logged learning rate follows the schedule
    for row in res["curve"]:
        want = m.opts.lr * lr_factor(
            row["step"] - 1, 60, 10, m.opts.lr_decay, m.opts.lr_decay_start
        )
        assert row["lr"] == pytest.approx(want)
    W_dec = coders.load(m.out_dir).W_dec
    unit = torch.allclose(W_dec.norm(dim=1), torch.ones(W_dec.shape[0]), atol=1e-5)
    assert unit == m.opts.normalize_decoder
    if opts.get("dead_features") == "resample":
        assert res["resampled"] > 0
    if opts.get("dead_features") in ("ghost_grads", "aux_k"):
        assert max(row["dead"] for row in res["curve"]) > 0  # the dead-feature term engaged
    if opts.get("activation") == "topk":
        assert all(row["l0"] <= 4 for row in res["curve"])
    if "l1_warmup_steps" in opts:
        assert res["curve"][0]["l1"] < 0.2 * res["curve"][5]["l1"]


def test_init_biases_from_first_batch_means(tmp_path):
    batch = next(make_batches()(0))
    r = MemberRun(member(tmp_path, "m"), 10, B, "cpu")
    r.init_biases(batch[IN], batch[OUT])
    assert torch.allclose(r.coder.b_dec, batch[IN].mean(0))
    assert torch.allclose(r.coder.b_dec_out, batch[OUT].mean(0))
    r = MemberRun(member(tmp_path, "n", init_bias_from_mean=False), 10, B, "cpu")
    r.init_biases(batch[IN], batch[OUT])
    assert torch.equal(r.coder.b_dec, torch.zeros(D_IN))


def test_encoder_starts_as_the_decoders_transpose_where_the_spec_resolves_it(tmp_path):
    """A TopK SAE (d_in = d_out) starts with W_enc = W_dec^T; a ReLU one, and a TopK
    transcoder from 16 to 12 dims, keep the coder's kaiming draw."""
    runs = {name: MemberRun(member(tmp_path, name, kind, **o), 10, B, "cpu").coder
            for name, kind, o in (("topk", "sae", {"activation": "topk", "k": 4}),
                                  ("relu", "sae", {}),
                                  ("topk_tc", "transcoder", {"activation": "topk", "k": 4}))}  # fmt: skip
    assert torch.equal(runs["topk"].W_enc, runs["topk"].W_dec.t())
    for name in ("relu", "topk_tc"):
        c = runs[name]
        assert torch.equal(c.W_enc, Coder(c.cfg, seed=0).W_enc), name


def scaled_batches(fail_at: int | None = None):
    """Batch i: x [B, D_IN] and an output y = relu(x) A about twice x's scale (seeded)."""
    A = 4 * torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(7)) / D_IN**0.5

    def batches(start: int):
        for i in count(start):
            if i == fail_at:
                raise RuntimeError(f"simulated crash at batch {i}")
            x = torch.randn(B, D_IN, generator=torch.Generator().manual_seed(30_000 + i))
            yield {IN: x, OUT: torch.relu(x) @ A}

    return batches


def topk_transcoder(tmp: Path, name: str) -> Member:
    """A TopK transcoder from D_IN to D_IN dims, every option but the schedule unset."""
    spec = TranscoderSpec(kind="transcoder", d_sae=32, activation="topk", k=4, lr=3e-3,
                          lr_warmup_steps=0, batch_size=B, checkpoint_every=4)  # fmt: skip
    cfg = CoderConfig(kind="transcoder", d_in=D_IN, d_out=D_IN, d_sae=32, activation="topk", k=4)
    return Member(name, spec, cfg, IN, OUT, tmp / name, 0)


def test_a_transcoder_starts_at_the_transpose_in_the_outputs_units(tmp_path):
    """A TopK transcoder with d_in = d_out resolves `transpose_scaled`: after the first batch
    W_enc = s W_dec^T, s the output's rms spread over the input's (about 2 here), and Adam
    steps its encoder at s x lr (a first Adam step moves each entry by its rate)."""
    r = MemberRun(topk_transcoder(tmp_path, "tc"), 10, B, "cpu")
    assert r.member.opts.encoder_init == "transpose_scaled"
    batch = next(scaled_batches()(0))
    x, y = batch[IN], batch[OUT]
    r.begin(batch)
    s = float((y - y.mean(0)).norm(dim=1).square().mean().sqrt())
    s /= float((x - x.mean(0)).norm(dim=1).square().mean().sqrt())
    assert 1.5 < s < 3
    assert torch.allclose(r.coder.W_enc, s * r.coder.W_dec.t(), rtol=1e-5)
    before = {k: r.coder.get_parameter(k).clone() for k in ("W_enc", "b_enc")}
    r.update(0, batch, Workspace("cpu"))
    for k, v in before.items():
        step = (r.coder.get_parameter(k) - v).abs().max()
        assert float(step) == pytest.approx(s * 3e-3, rel=1e-4), k


def test_a_scaled_transpose_pass_resumes_bitwise(tmp_path):
    """Stopped after its step-8 checkpoint and resumed (the scale s is in the checkpoint:
    the first batch is not seen again), a `transpose_scaled` transcoder ends bitwise equal
    to an uninterrupted pass."""
    quiet = dict(progress=False, log=lambda s: None)
    whole = topk_transcoder(tmp_path / "whole", "tc")
    train_group([whole], scaled_batches(), 12, tmp_path / "ck-whole", **quiet)
    m = topk_transcoder(tmp_path / "r", "tc")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_group([m], scaled_batches(10), 12, tmp_path / "ck", **quiet)
    train_group([m], scaled_batches(), 12, tmp_path / "ck", **quiet)
    a, b = weights(whole), weights(m)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sparse_map(seed: int, n: int):
    """n tokens of a transcoder's data: 96 sparse features read along unit x-directions and
    written along unit y-directions at 5 times the scale (x [n, 32], y [n, 32])."""
    g = torch.Generator().manual_seed(0)
    dx, dy = torch.randn(2, 96, 32, generator=g).unbind(0)
    dx, dy = dx / dx.norm(dim=1, keepdim=True), dy / dy.norm(dim=1, keepdim=True)
    x0, y0 = torch.randn(2, 32, generator=g).unbind(0)
    gi = torch.Generator().manual_seed(seed)
    codes = (torch.rand(n, 96, generator=gi) < 0.05) * torch.rand(n, 96, generator=gi)
    return codes @ dx + x0, 5 * (codes @ dy + y0)


def test_a_topk_transcoder_whose_output_is_larger_keeps_its_features_alive(tmp_path):
    """Writing 5 times its input's scale, a TopK transcoder at the defaults (aux-k, the
    scaled transpose) ends with under 10% of its 256 features never firing on 20k held-out
    tokens after 600 steps; from the plain transpose, whose activations start 5 times too
    small, over 40% die (the quickstart's layer 0: 50% against 4.6%, README)."""
    ms = [Member(init, TranscoderSpec(kind="transcoder", d_sae=256, activation="topk", k=8,
                                      lr=1e-3, lr_warmup_steps=50, batch_size=B, **o),
                 CoderConfig("transcoder", 32, 32, 256, "topk", 8), IN, OUT,
                 tmp_path / init, 0)
          for init, o in (("default", {}), ("transpose", {"encoder_init": "transpose"}))]  # fmt: skip

    def batches(start: int):
        for i in count(start):
            x, y = sparse_map(1000 + i, B)
            yield {IN: x, OUT: y}

    train_group(ms, batches, 600, tmp_path / "ck", progress=False, log=lambda s: None)
    x, _ = sparse_map(7, 20_000)
    dead = {}
    for m in ms:
        with torch.no_grad():
            fired = (coders.load(m.out_dir).encode(x) > 0).sum(0)  # [256] tokens each fired on
        dead[m.name] = float(never_fires(fired).float().mean())
    assert dead["default"] < 0.1 and dead["transpose"] > 0.4, dead


def test_resample_reinitializes_only_dead_features(tmp_path):
    m = member(tmp_path, "m", dead_features="resample", dead_window=5)
    r = MemberRun(m, 10, B, "cpu")
    batch = next(make_batches()(0))
    x, y = batch[IN], batch[OUT]
    for st in (r.adam.exp_avg, r.adam.exp_avg_sq):
        for v in st.values():
            v.fill_(1.0)
    before = {k: v.clone() for k, v in r.params.items()}
    r.firing.since_fired[:] = 0
    r.firing.since_fired[[2, 7, 30]] = 6  # dead: more than dead_window steps
    r.firing.since_fired[11] = 5  # not yet dead
    e = r.coder(x)[0] - y
    r.resample(x, y, e)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[2, 7, 30]] = True
    c = r.coder
    assert torch.equal(c.W_enc[:, ~dead], before["W_enc"][:, ~dead])
    assert not torch.equal(c.W_enc[:, dead], before["W_enc"][:, dead])
    assert torch.allclose(c.W_dec[dead].norm(dim=1), torch.ones(3))
    assert torch.equal(c.b_enc[dead], torch.zeros(3))
    adam = r.adam
    assert (adam.exp_avg["W_dec"][dead] == 0).all() and (
        adam.exp_avg_sq["W_enc"][:, dead] == 0
    ).all()
    assert (adam.exp_avg["W_dec"][~dead] == 1).all()
    assert r.log.resampled == 3 and (r.firing.since_fired[dead] == 0).all()
    assert r.firing.since_fired[11] == 5


def test_density_over_last_window(tmp_path):
    """With a negligible lr the weights stay put, so the density is recomputable: 7 steps,
    window 3 -> the last full window (steps 3-5) joined by the partial one (step 6)."""
    m = member(tmp_path, "m", lr=1e-12, density_window=3, live_threshold=0.05)
    (res,) = run([m], 7, tmp_path)
    c = coders.load(m.out_dir)
    gen = make_batches()(3)
    fired = sum((c.encode(next(gen)[IN]) > 0).sum(0) for _ in range(4)).float()  # steps 3..6
    density = load_file(str(m.out_dir / "density.safetensors"))["density"]
    assert torch.allclose(density, fired / (4 * B))
    assert res["live_fraction"] == pytest.approx(float((density > 0.05).float().mean()))
    assert json.loads((m.out_dir / "training.json").read_text())["steps"] == 7


def test_group_equals_members_trained_alone(tmp_path):
    def group(d):
        return [
            member(d, "a", l1=1e-2, lr=3e-3, seed=1, dead_features="ghost_grads", dead_window=5),
            member(d, "b", l1=3e-2, lr=1e-3, d_sae=96, seed=2),
            member(d, "c", activation="topk", k=4, seed=3, dead_features="aux_k", dead_window=5),
            member(d, "d", l1=1e-3, lr=2e-3, seed=4),  # same shape as "a": shares buffers
        ]

    together = group(tmp_path / "together")
    run(together, 40, tmp_path / "together")
    for m in group(tmp_path / "alone"):
        run([m], 40, tmp_path / "alone" / m.name)
        ref = weights(next(t for t in together if t.name == m.name))
        for k, v in weights(m).items():
            assert torch.equal(v, ref[k]), (m.name, k)


def test_nan_loss_stops_with_step_and_member(tmp_path):
    ms = [
        member(tmp_path, "ok", checkpoint_every=5),
        member(tmp_path, "sweep-b", checkpoint_every=5),
    ]
    with pytest.raises(FloatingPointError, match=r"step 7: member `ok`"):
        run(ms, 20, tmp_path, bad_step=7)
    state = read_checkpoint(tmp_path / "ckpt" / CHECKPOINT)
    assert state["step"] == 5  # the last good checkpoint is kept
    for r in state["runs"]:
        assert all(torch.isfinite(v).all() for v in r["params"].values())
    assert not (tmp_path / "ok" / WEIGHTS_FILE).exists()


def test_crash_resumes_from_checkpoint(tmp_path):
    ms = [member(tmp_path, "m", checkpoint_every=4)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(ms, 20, tmp_path, fail_at=11)
    assert read_checkpoint(tmp_path / "ckpt" / CHECKPOINT)["step"] == 8
    logs = []
    train_group(ms, make_batches(), 20, tmp_path / "ckpt", progress=False, log=logs.append)
    assert "resuming" in logs[0] and "step 8/20" in logs[0]


def clt_and_member(tmp: Path, steps: int) -> list:
    """A CLT over blocks 0-1 and a per-layer transcoder at block 1, both d = D_IN."""
    from tcspec.dictionaries.clt import CLTConfig
    from tcspec.spec import CLTSpec
    from tcspec.training.clt import CLTRun

    shape = CLTConfig(n_layers=2, d_model=D_IN, d_sae=24, activation="jumprelu", skip=True)
    opts = CLTSpec(kind="clt", d_sae=24, activation="jumprelu", skip=True, l1=1e-2,
                   pre_act_coef=1e-3, lr=3e-3, batch_size=B, checkpoint_every=4, seed=1)  # fmt: skip
    spec = TranscoderSpec(kind="transcoder", d_sae=32, lr=3e-3, batch_size=B, checkpoint_every=4)
    cfg = CoderConfig(kind="transcoder", d_in=D_IN, d_out=D_IN, d_sae=32)
    m = Member("tc", spec, cfg, shape.in_names[1], shape.out_names[1], tmp / "tc", 0)
    return [CLTRun("clt", opts, shape, steps, tmp / "clt", "cpu"), MemberRun(m, steps, B, "cpu")]


def two_layer_batches(fail_at: int | None = None):
    """Batch i: every hook of blocks 0-1, x sparse-ish, y = x A_l (seeded by i)."""
    from tcspec.models.hooks import full_name

    A = torch.randn(2, D_IN, D_IN, generator=torch.Generator().manual_seed(5)) / D_IN**0.5

    def batches(start: int):
        for i in count(start):
            if i == fail_at:
                raise RuntimeError(f"simulated crash at batch {i}")
            g = torch.Generator().manual_seed(20_000 + i)
            x = torch.relu(torch.randn(2, B, D_IN, generator=g) - 0.5) + 0.1  # [2, B, D_IN]
            batch = {}
            for b in (0, 1):
                batch[full_name(b, "ln2.hook_normalized")] = x[b]
                batch[full_name(b, "hook_mlp_out")] = x[b] @ A[b]
            yield batch

    return batches


def test_a_clt_and_a_member_train_in_one_pass_and_resume_bitwise(tmp_path):
    """The one loop drives a CLT and a per-layer transcoder together; a pass stopped after
    its step-8 checkpoint and resumed ends bitwise equal to an uninterrupted pass, for both
    (weights, curves), and writes each one's files."""
    from tcspec.dictionaries import clt_io
    from tcspec.training import train

    quiet = dict(progress=False, log=lambda s: None, log_every=1)
    whole = clt_and_member(tmp_path / "whole", 12)
    train(whole, two_layer_batches(), 12, tmp_path / "ck-whole", **quiet)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            clt_and_member(tmp_path / "r", 12), two_layer_batches(10), 12, tmp_path / "ck", **quiet
        )
    assert read_checkpoint(tmp_path / "ck" / CHECKPOINT)["step"] == 8
    logs = []
    resumed = clt_and_member(tmp_path / "r", 12)
    train(resumed, two_layer_batches(), 12, tmp_path / "ck", **quiet | dict(log=logs.append))
    assert "resuming" in logs[0] and "step 8/12" in logs[0]
    a, b = whole[0].clt.state_dict(), clt_io.load(tmp_path / "r" / "clt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole[0].curve == resumed[0].curve and len(whole[0].curve) == 12
    ref, got = weights(whole[1].member), weights(resumed[1].member)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert whole[1].log.curve == resumed[1].log.curve
    assert not (tmp_path / "ck" / CHECKPOINT).exists()


def test_progress_bar_shows_throughput_and_members(tmp_path, capsys):
    ms = [member(tmp_path, "l1-0.001", l1=1e-3), member(tmp_path, "l1-0.01", l1=1e-2)]
    train_group(ms, make_batches(), 12, tmp_path / "ck", progress=True, log=print, log_every=4)
    cap = capsys.readouterr()
    assert "tok/s" in cap.err and "l1-0.001" in cap.err and "l1-0.01" in cap.err
    assert "12/12" in cap.err
    assert "l1-0.01: loss" in cap.out  # the closing summary goes to `log`


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(ValueError, match="sweep list"):
        run([member(tmp_path, "m", l1=[1e-3, 1e-2])], 5, tmp_path)
    with pytest.raises(ValueError, match="names repeat"):
        run([member(tmp_path, "m"), member(tmp_path, "m")], 5, tmp_path)
    m = member(tmp_path, "m")
    m.in_key = "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="lacks hooks"):
        run([m], 5, tmp_path)
    with pytest.raises(ValueError, match="want"):
        run([member(tmp_path, "m", batch_size=64)], 5, tmp_path)


# ------------------------------------------------------------------ resume after SIGKILL
def resume_job(root: str, sleep: float) -> None:
    """The job the SIGKILL test runs in subprocesses (deterministic, every state used)."""
    torch.set_num_threads(1)
    d = Path(root)
    ms = [
        member(
            d,
            "ghost",
            l1=1.0,
            dead_features="ghost_grads",
            dead_window=1,
            d_sae=256,
            checkpoint_every=7,
            l1_warmup_steps=10,
            lr_decay="cosine",
            density_window=6,
        ),
        member(
            d,
            "resample",
            l1=1.0,
            dead_features="resample",
            dead_window=2,
            d_sae=256,
            checkpoint_every=7,
            seed=5,
        ),
        member(
            d,
            "topk",
            activation="topk",
            k=3,
            dead_features="aux_k",
            dead_window=3,
            checkpoint_every=7,
            seed=9,
        ),
    ]
    train_group(ms, make_batches(sleep=sleep), 60, d / "ckpt", progress=False)


def _job(root: Path, sleep: float) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_train; test_train.resume_job({str(root)!r}, {sleep})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    killed = _job(tmp_path / "killed", 0.03)
    resume_job(str(tmp_path / "clean"), 0.0)  # the uninterrupted run, meanwhile
    ckpt = tmp_path / "killed" / "ckpt" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists():
        assert killed.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.4))  # die at a random step after the first checkpoint
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "topk" / WEIGHTS_FILE).exists()
    step = read_checkpoint(ckpt)["step"]
    assert 0 < step < 60
    resume_job(str(tmp_path / "killed"), 0.0)  # the rerun: a fresh call that finds the checkpoint
    for name in ("ghost", "resample", "topk"):
        a = load_file(str(tmp_path / "clean" / name / WEIGHTS_FILE))
        b = load_file(str(tmp_path / "killed" / name / WEIGHTS_FILE))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k, step)
        ja = json.loads((tmp_path / "clean" / name / "training.json").read_text())
        jb = json.loads((tmp_path / "killed" / name / "training.json").read_text())
        assert ja["curve"] == jb["curve"] and ja["resampled"] == jb["resampled"]
        da = load_file(str(tmp_path / "clean" / name / "density.safetensors"))["density"]
        db = load_file(str(tmp_path / "killed" / name / "density.safetensors"))["density"]
        assert torch.equal(da, db)


# ------------------------------------------------------------ a data source with a state
class CountingSource:
    """A `BatchSource` whose state (the batches it handed out, as a tensor) goes into the
    trainer's checkpoint; it fails at `fail_at` to simulate a crash."""

    def __init__(self, fail_at: int | None = None):
        self.served = torch.zeros((), dtype=torch.long)
        self.loaded: list[int] = []
        self.fail_at = fail_at

    def iter_batches(self, start_step: int):
        for b in make_batches(fail_at=self.fail_at)(start_step):
            self.served += 1
            yield b

    def state_dict(self) -> dict:
        return {"served": self.served.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.served = state["served"].clone()
        self.loaded.append(int(self.served))


def test_source_state_is_checkpointed_and_restored(tmp_path):
    ms = [member(tmp_path / "a", "m", checkpoint_every=4)]
    src = CountingSource(fail_at=11)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_group(ms, src, 20, tmp_path / "ckpt", progress=False, log=lambda s: None)
    state = read_checkpoint(tmp_path / "ckpt" / CHECKPOINT)
    assert state["step"] == 8 and int(state["source"]["served"]) == 8
    resumed = CountingSource()
    train_group(ms, resumed, 20, tmp_path / "ckpt", progress=False, log=lambda s: None)
    assert resumed.loaded == [8] and int(resumed.served) == 20
    clean = [member(tmp_path / "b", "m", checkpoint_every=4)]
    train_group(clean, CountingSource(), 20, tmp_path / "ck2", progress=False, log=lambda s: None)
    for k, v in weights(clean[0]).items():
        assert torch.equal(v, weights(ms[0])[k]), k


def test_source_state_needs_a_source_that_loads_it(tmp_path):
    ms = [member(tmp_path, "m", checkpoint_every=4)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_group(ms, CountingSource(fail_at=6), 20, tmp_path / "ckpt", progress=False)
    with pytest.raises(ValueError, match="cannot load it"):
        run(ms, 20, tmp_path)  # a plain callable cannot take the saved state back


def test_width_and_dead_definitions():
    assert d_sae_of(16, None, 4) == 64 and d_sae_of(16, 24, None) == 24
    with pytest.raises(ValueError, match="width"):
        d_sae_of(16, None, None)
    since = torch.tensor([0, 5, 6, 100])
    assert is_dead(since, 5).tolist() == [False, False, True, True]
