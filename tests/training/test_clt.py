"""Cross-layer transcoders on tiny TransformerLens models built here: maths, training on real
activations, bitwise resume, spliced evaluation against per-layer transcoders, files."""

import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tcspec.compute.workspace import Workspace
from tcspec.data.cache import ActivationReader, cache_activations
from tcspec.dictionaries import clt_io
from tcspec.dictionaries.clt import CLT, CLTConfig, CLTLoss, clt_loss
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.families import jumprelu
from tcspec.evaluation.clt import evaluate_clt
from tcspec.evaluation.spliced import evaluate_coders
from tcspec.plan.cost import clt_cost, per_layer_flops_per_step
from tcspec.spec import CLTSpec
from tcspec.training import CHECKPOINT, clt_layout, train
from tcspec.training.adam import AdamState
from tcspec.training.clt import CLTRun
from tcspec.training.clt_codes import Sparse
from tcspec.training.clt_step import Hyper, train_step

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

torch.set_num_threads(1)
D, CTX, VOCAB = 32, 16, 50


def tiny_model(n_layers: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=D, d_mlp=64, n_heads=2, d_head=16, n_ctx=CTX,
        d_vocab=VOCAB, act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def model2() -> HookedTransformer:
    return tiny_model(2)


@pytest.fixture(scope="module")
def model3() -> HookedTransformer:
    return tiny_model(3)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, CTX), generator=torch.Generator().manual_seed(1))


def randomized(clt: CLT, seed: int = 3) -> CLT:
    """Every parameter redrawn (biases and skip included), so no term is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "W_" in name else 0.1))
        if clt.cfg.activation == "jumprelu":
            clt.log_threshold.copy_(torch.rand(clt.log_threshold.shape, generator=g).log() - 1)
    return clt


# ------------------------------------------------------------------------------- maths
def test_forward_is_the_sum_of_decoders_reaching_each_layer():
    cfg = CLTConfig(n_layers=3, d_model=8, d_sae=16, skip=True)
    clt = randomized(CLT(cfg))
    xs = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))  # [L, B, d]
    y_hat, acts, pre = clt(xs)
    for m in range(3):
        want = clt.b_dec[m] + xs[m] @ clt.W_skip[m]
        for i in range(m + 1):
            a = torch.relu(xs[i] @ clt.W_enc[i] + clt.b_enc[i])
            want = want + a @ clt.W_dec[i][:, m - i]
        torch.testing.assert_close(y_hat[m], want, rtol=1e-5, atol=1e-5)
    assert acts.shape == pre.shape == (3, 5, 16) and (acts >= 0).all()


def test_penalties_use_the_norm_of_the_concatenated_decoders():
    cfg = CLTConfig(n_layers=3, d_model=8, d_sae=16)
    clt = randomized(CLT(cfg))
    xs, ys = torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(0))
    norms = clt.decoder_norms()  # [L, F]
    for i in range(3):
        flat = clt.W_dec[i].reshape(16, -1)  # feature i's decoders to every later layer
        torch.testing.assert_close(norms[i], flat.norm(dim=1))
    _, acts, _ = clt(xs)
    tanh = clt_loss(clt, xs, ys, CLTLoss("tanh", coef=0.5, tanh_scale=4.0))
    want = 0.5 * torch.tanh(4.0 * acts * norms[:, None]).sum() / 4
    torch.testing.assert_close(tanh["penalty"], want)
    l1 = clt_loss(clt, xs, ys, CLTLoss("l1", coef=0.5), coef_factor=0.25)
    torch.testing.assert_close(l1["penalty"], 0.125 * (acts * norms[:, None]).sum() / 4)
    torch.testing.assert_close(tanh["mse"], (clt(xs)[0] - ys).square().sum() / 4)


def test_penalty_gradient_matches_finite_differences():
    cfg = CLTConfig(n_layers=2, d_model=4, d_sae=6, skip=True)
    clt = randomized(CLT(cfg)).double()
    xs, ys = torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(0)).double()

    def f(W_dec0, W_enc):
        with torch.no_grad():
            clt.W_dec[0].copy_(W_dec0)
            clt.W_enc.copy_(W_enc)
        return clt_loss(clt, xs, ys, CLTLoss("tanh", coef=0.3))["loss"]

    W0, We = clt.W_dec[0].detach().clone(), clt.W_enc.detach().clone()
    loss = clt_loss(clt, xs, ys, CLTLoss("tanh", coef=0.3))["loss"]
    g_dec, g_enc = torch.autograd.grad(loss, [clt.W_dec[0], clt.W_enc])
    h = 1e-6
    for idx in [(0, 0, 1), (3, 1, 2), (5, 0, 3)]:
        E = torch.zeros_like(W0)
        E[idx] = h
        num = (f(W0 + E, We) - f(W0 - E, We)) / (2 * h)
        assert abs(num.item() - g_dec[idx].item()) < 1e-6
    for idx in [(0, 1, 2), (1, 3, 5)]:
        E = torch.zeros_like(We)
        E[idx] = h
        num = (f(W0, We + E) - f(W0, We - E)) / (2 * h)
        assert abs(num.item() - g_enc[idx].item()) < 1e-6


def test_jumprelu_pseudo_derivative():
    z = torch.tensor([[0.10, 0.55, 0.95], [0.45, 0.2, 1.2]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 1.0], requires_grad=True)
    out = jumprelu.activate(z, None, theta, bandwidth=0.2)  # a CLT's autograd form
    assert out.tolist() == [[0.0, pytest.approx(0.55), 0.0], [0.0, 0.0, pytest.approx(1.2)]]
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out.backward(g)
    # dz = H(z - theta) g; dtheta = sum_b -(theta/eps) 1[|z - theta| < eps/2] g
    assert z.grad.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 6.0]]
    # |z - theta| < eps/2 at (0, 1), (1, 0), (0, 2); (0, 2) is below theta, (1, 0) too
    want = [-(0.5 / 0.2) * 4.0, -(0.5 / 0.2) * 2.0, -(1.0 / 0.2) * 3.0]
    torch.testing.assert_close(theta.grad, torch.tensor(want))


def test_topk_keeps_k_per_layer_and_config_checks():
    clt = randomized(CLT(CLTConfig(n_layers=2, d_model=8, d_sae=16, activation="topk", k=3)))
    _, acts, _ = clt(torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0)))
    assert ((acts != 0).sum(-1) <= 3).all() and (acts != 0).sum() > 40
    with pytest.raises(ValueError, match="topk needs"):
        CLTConfig(n_layers=2, d_model=8, d_sae=16, activation="topk")
    with pytest.raises(ValueError, match="increasing"):
        CLTConfig(n_layers=2, d_model=8, d_sae=16, layers=(1, 1))
    assert CLTConfig(2, 8, 16, layers=[3, 5]).in_names == [
        "blocks.3.ln2.hook_normalized", "blocks.5.ln2.hook_normalized",
    ]  # fmt: skip


def test_cost_counts_triangular_decoders():
    cfg = CLTConfig(n_layers=12, d_model=768, d_sae=8192)
    c = clt_cost(cfg, batch_size=4096, steps=10)
    assert c.decoder_params == 8192 * 768 * 78
    assert c.params == 12 * 768 * 8192 + 8192 * 768 * 78 + 12 * 8192 + 12 * 768
    small = CLTConfig(3, 8, 16, activation="jumprelu", skip=True)
    assert clt_cost(small, 1, 1).params == sum(p.numel() for p in CLT(small).parameters())
    assert c.flops == 10 * c.flops_per_step == 10 * 6 * 4096 * 8192 * 768 * 90
    assert c.flops_per_step / per_layer_flops_per_step(cfg, 4096) == pytest.approx(90 / 24)


# ------------------------------------------------------------- the hand-written step
STEPS = {  # (config, loss): every penalty, activation and gradient term at least once
    "relu-tanh-skip": (CLTConfig(3, 8, 16, skip=True), CLTLoss("tanh", coef=0.3)),
    "relu-l1": (CLTConfig(3, 8, 16), CLTLoss("l1", coef=0.2)),
    "topk-tanh": (CLTConfig(3, 8, 16, activation="topk", k=3), CLTLoss("tanh", coef=0.3)),
    "jumprelu-tanh-pre": (
        CLTConfig(3, 8, 16, activation="jumprelu", skip=True),
        CLTLoss("tanh", coef=0.3, pre_act_coef=0.2, bandwidth=0.5),
    ),
    "jumprelu-l1": (CLTConfig(2, 8, 16, activation="jumprelu"), CLTLoss("l1", coef=0.1)),
}


def one_step(clt: CLT, loss: CLTLoss, sparse_below: float, xs, ys) -> AdamState:
    """One hand-written step at t = 1 (Adam's first moment is then 0.1 x the gradient)."""
    adam = AdamState.zeros(dict(clt.named_parameters()))
    h = Hyper(loss, coef_factor=0.5, t=1, lr=1e-3, betas=(0.9, 0.999), sparse_below=sparse_below)
    train_step(clt, adam, xs, ys, h, Workspace("cpu", torch.float64))
    return adam


@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", list(STEPS))
def test_hand_written_step_matches_autograd(case, sparse_below):
    cfg, loss = STEPS[case]
    clt = randomized(CLT(cfg)).double()
    xs, ys = torch.randn(2, cfg.n_layers, 6, 8, generator=torch.Generator().manual_seed(1))
    xs, ys = xs.double(), ys.double()
    terms = clt_loss(clt, xs, ys, loss, coef_factor=0.5)
    params = dict(clt.named_parameters())
    want = dict(zip(params, torch.autograd.grad(terms["loss"], list(params.values()))))
    before = {k: v.detach().clone() for k, v in params.items()}
    adam = one_step(clt, loss, sparse_below, xs, ys)
    assert terms["acts"].count_nonzero() > 10 and want["W_dec.0"].abs().max() > 1e-3
    for k, g in want.items():
        torch.testing.assert_close(adam.exp_avg[k] / 0.1, g, rtol=1e-9, atol=1e-12, msg=k)
        assert not torch.equal(params[k], before[k]) or not g.any(), k  # it was stepped


@pytest.mark.parametrize("case", ["relu-tanh-skip", "topk-tanh", "jumprelu-tanh-pre"])
def test_bf16_step_is_close_to_fp32(case):
    """precision bf16: the dense GEMMs on bfloat16 operands; gradients within bf16's
    rounding of the float32 step's (relative to their largest entry; TopK's and JumpReLU's
    wider: a feature whose bfloat16 pre-activation crosses the k-th largest or its threshold
    switches on or off)."""
    cfg, loss = STEPS[case]
    xs, ys = torch.randn(2, cfg.n_layers, 32, 8, generator=torch.Generator().manual_seed(4))
    got = {}
    for gemm in (torch.float32, torch.bfloat16):
        clt = randomized(CLT(cfg)).requires_grad_(False)
        adam = AdamState.zeros(dict(clt.named_parameters()))
        h = Hyper(loss, 1.0, 1, 1e-3, (0.9, 0.999), gemm=gemm)
        train_step(clt, adam, xs, ys, h, Workspace("cpu"))
        got[gemm] = adam.exp_avg
    for k, g in got[torch.float32].items():
        err = (got[torch.bfloat16][k] - g).abs().max() / g.abs().max()
        assert 0 < err < (0.03 if cfg.activation == "relu" else 0.1), (k, err)


@pytest.mark.parametrize("part_bytes", [1 << 20, 16 * 8 * 2, 1], ids=["whole", "2-col", "1-col"])
def test_sparse_products_by_column_parts_equal_dense_ones(part_bytes):
    """A sparse layer's decoder products, taken a column part of each output layer's block
    at a time (parts of 8, 2 and 1 of its 8 columns), equal the dense products; with the
    decoder held part-major they are bitwise the same, the gradient held as the decoder."""
    g = torch.Generator().manual_seed(5)
    B, F, m, d = 6, 16, 3, 8
    pre = torch.randn(B, F, generator=g, dtype=torch.float64)
    vals, idx = pre.topk(4, dim=1)
    codes = Sparse.from_topk(idx, vals, F)
    codes.part_bytes = part_bytes
    a = codes.dense(torch.empty(B, F, dtype=torch.float64))  # [B, F]
    W, gy = (torch.randn(n, m, d, generator=g, dtype=torch.float64) for n in (F, B))
    n = {1 << 20: 1, 16 * 8 * 2: 4, 1: 8}[part_bytes]
    assert codes.parts_of(W).shape == (m, n, F, d // n)
    P = clt_layout.to_part_major(W, d // n)  # [m, n, F, w], contiguous
    assert P.is_contiguous() and torch.equal(clt_layout.to_canonical(P), W)
    order, rows = codes.by_feature(), codes.rows()
    for held in (W, P):
        y = torch.zeros(B, m, d, dtype=torch.float64)
        codes.decode_into(y, held, ws=None)
        torch.testing.assert_close(y, (a @ W.view(F, -1)).view(B, m, d), rtol=1e-12, atol=1e-12)
        want = (gy.view(B, -1) @ W.view(F, -1).t())[rows, codes.col]  # [nnz], token order
        torch.testing.assert_close(codes.at_active(gy, held, order), want, rtol=1e-12, atol=1e-12)
        gW = codes.decoder_grad(gy, Workspace("cpu", torch.float64), order, held)  # as held
        assert gW.shape == held.shape
        gW = gW if held is W else clt_layout.to_canonical(gW)
        torch.testing.assert_close(gW.view(F, -1), a.t() @ gy.view(B, -1), rtol=1e-12, atol=1e-12)
        got = (y, codes.at_active(gy, held, order), gW.clone())
        if held is W:
            canonical = got
    assert all(torch.equal(x, c) for x, c in zip(got, canonical))


@pytest.mark.parametrize("coef", [0.0, 0.3])
@pytest.mark.parametrize("width", [8, 4, 1])
def test_topk_steps_with_decoders_held_part_major(width, coef, monkeypatch):
    """A TopK CLT's steps with its decoders and their moments held part-major at the
    trainer's part width (d 8 in parts of 8, 4, 1 columns, by the part size) are bitwise
    those of the [F, m, d] layout without a sparsity penalty; with one, the decoder norms
    sum in another order (close)."""
    cfg = CLTConfig(3, 8, 16, activation="topk", k=3)
    monkeypatch.setattr(clt_layout, "PART_BYTES", 16 * width * 4)
    assert clt_layout.train_width(cfg) == width
    xs, ys = torch.randn(2, 3, 32, 8, generator=torch.Generator().manual_seed(6))
    held = []
    for to in (None, clt_layout.train_width(cfg)):
        clt = randomized(CLT(cfg)).requires_grad_(False)
        adam = AdamState.zeros(dict(clt.named_parameters()))
        clt_layout.hold(clt, adam, None, to)
        assert all(W.dim() == (4 if to else 3) and W.is_contiguous() for W in clt.W_dec)
        for t in range(1, 4):
            h = Hyper(CLTLoss("tanh", coef=coef), 1.0, t, 1e-2, (0.9, 0.999))
            train_step(clt, adam, xs, ys, h, Workspace("cpu"))
        clt_layout.hold(clt, adam, to, None)
        held.append((clt.state_dict(), adam.exp_avg_sq))
    (a, va), (b, vb) = held
    for k in a:
        if coef == 0:
            assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert all(torch.equal(va[k], vb[k]) or coef for k in va)


@pytest.mark.parametrize("case", ["relu-tanh-skip", "topk-tanh", "jumprelu-tanh-pre"])
def test_sparse_and_dense_steps_agree(case):
    cfg, loss = STEPS[case]
    xs, ys = torch.randn(2, cfg.n_layers, 32, 8, generator=torch.Generator().manual_seed(2))
    clts = [randomized(CLT(cfg)).requires_grad_(False) for _ in range(2)]
    for clt, sparse_below in zip(clts, (0.0, 1.0)):
        adam = AdamState.zeros(dict(clt.named_parameters()))
        for t in range(1, 4):
            h = Hyper(loss, 1.0, t, 1e-2, (0.9, 0.999), sparse_below)
            train_step(clt, adam, xs, ys, h, Workspace("cpu"))
    a, b = clts[0].state_dict(), clts[1].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------- training
def cache(model, tmp_path, cfg: CLTConfig, n_rows: int = 48):
    tokens = torch.randint(0, VOCAB, (n_rows, CTX), generator=torch.Generator().manual_seed(2))
    out = tmp_path / "acts"
    hooks = cfg.in_names + cfg.out_names
    cache_activations(model, tokens.numpy(), hooks, out, shard_tokens=256, progress=False)
    return out


def clt_run(folder, cfg: CLTConfig, steps: int, **opts) -> CLTRun:
    """A CLTRun of `cfg` trained with the spec's options `opts` (seed 0)."""
    width = dict(d_sae=cfg.d_sae, activation=cfg.activation, k=cfg.k, skip=cfg.skip)
    spec = CLTSpec(kind="clt", seed=0, **width, **opts)
    return CLTRun("clt", spec, cfg, steps, folder, "cpu")


def test_training_on_real_activations_reduces_fvu(model3, tmp_path):
    cfg = CLTConfig(n_layers=3, d_model=D, d_sae=64)
    reader = ActivationReader(cache(model3, tmp_path, cfg), cfg.in_names + cfg.out_names, 64, 0)
    run = clt_run(
        tmp_path / "clt", cfg, 300, batch_size=64, lr=3e-3, lr_warmup_steps=20,
        penalty="tanh", l1=1e-3, l1_warmup_steps=100,
    )  # fmt: skip
    train([run], reader.iter_batches, 300, tmp_path / "ck", progress=False, log=lambda s: None,
          log_every=10)  # fmt: skip
    first, last = run.curve[0], run.curve[-1]
    assert first["fvu"] > 0.5 and last["fvu"] < 0.25, (first, last)
    assert last["step"] == 300 and len(run.curve) == 30 and last["l0"] > 0
    assert clt_io.load(tmp_path / "clt").cfg == cfg


@pytest.mark.parametrize(
    "precision, activation",
    [("fp32", "jumprelu"), ("bf16", "jumprelu"), ("bf16", "topk"), ("fp32", "topk")],
)
def test_resume_is_bitwise_identical(model2, tmp_path, precision, activation, monkeypatch):
    """A TopK CLT's decoders are held part-major, in parts of 8 of d 32 (through the
    checkpoint too)."""
    topk = dict(activation="topk", k=4) if activation == "topk" else dict(activation=activation)
    cfg = CLTConfig(n_layers=2, d_model=D, d_sae=32, skip=True, **topk)
    monkeypatch.setattr(clt_layout, "PART_BYTES", 32 * 8 * 4)
    assert clt_layout.train_width(cfg) == (8 if activation == "topk" else None)
    keys = cfg.in_names + cfg.out_names
    reader = ActivationReader(cache(model2, tmp_path, cfg, n_rows=16), keys, 32, 0)
    opts = dict(
        batch_size=32, lr=1e-3, lr_warmup_steps=3, lr_decay="cosine", lr_decay_start=0.5,
        penalty="tanh", l1=1e-2, pre_act_coef=1e-3, jumprelu_bandwidth=0.5, l1_warmup_steps=5,
        checkpoint_every=4, precision=precision,
    )  # fmt: skip
    quiet = dict(progress=False, log=lambda s: None, log_every=1)
    whole = clt_run(tmp_path / "whole", cfg, 12, **opts)
    train([whole], reader.iter_batches, 12, tmp_path / "ck-whole", **quiet)

    def interrupted(start):
        for i, b in enumerate(reader.iter_batches(start)):
            if start + i == 7:
                raise KeyboardInterrupt
            yield b

    ckpt = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        train([clt_run(tmp_path / "resumed", cfg, 12, **opts)], interrupted, 12, ckpt, **quiet)
    logs = []
    resumed = clt_run(tmp_path / "resumed", cfg, 12, **opts)
    train([resumed], reader.iter_batches, 12, ckpt, **quiet | dict(log=logs.append))
    assert f"resuming from {ckpt / CHECKPOINT} at step 4/12" in logs
    a, b = whole.clt.state_dict(), resumed.clt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.curve == resumed.curve
    saved = clt_io.load(tmp_path / "resumed").state_dict()
    assert all(torch.equal(saved[k], b[k]) for k in b)
    with pytest.raises(KeyboardInterrupt):
        train([clt_run(tmp_path / "x", cfg, 12, **opts)], interrupted, 12, ckpt, **quiet)
    other = clt_run(tmp_path / "other", cfg, 12, **opts | dict(lr=2e-3))
    with pytest.raises(ValueError, match="different group of dictionaries"):
        train([other], reader.iter_batches, 12, ckpt, **quiet)


def test_checkpoint_of_another_part_width_loads(tmp_path, monkeypatch):
    """A TopK CLT's checkpoint records the part width its decoders were held at; a run on
    a CPU of another part size, or a checkpoint in the [F, m, d] layout, loads it as its
    own layout holds it; the saved CLT is [F, m, d]."""
    cfg = CLTConfig(n_layers=3, d_model=8, d_sae=16, activation="topk", k=3)
    monkeypatch.setattr(clt_layout, "PART_BYTES", 16 * 2 * 4)
    a = clt_run(tmp_path / "a", cfg, 10, batch_size=32)
    assert a.width == 2 and a.clt.W_dec[0].shape == (3, 4, 16, 2)
    randomized(a.clt)
    for state in (a.adam.exp_avg, a.adam.exp_avg_sq):
        for k, v in state.items():
            v.copy_(torch.rand(v.shape, generator=torch.Generator().manual_seed(len(k))))

    def canonical(t: torch.Tensor) -> torch.Tensor:
        return clt_layout.to_canonical(t) if t.dim() == 4 else t

    saved = a.state_dict()
    old = {k: v for k, v in saved.items() if k != "part_width"}  # as releases before saved
    old["weights"] = {k: canonical(v) for k, v in saved["weights"].items()}
    old["adam"] = {n: {k: canonical(v) for k, v in m.items()} for n, m in saved["adam"].items()}
    for part_bytes, width, state in [(16 * 4 * 4, 4, saved), (1 << 20, 8, saved),
                                     (16 * 4, 1, old)]:  # fmt: skip
        monkeypatch.setattr(clt_layout, "PART_BYTES", part_bytes)
        b = clt_run(tmp_path / "b", cfg, 10, batch_size=32)
        b.load_state_dict(state)
        assert b.width == width and b.clt.W_dec[0].shape == (3, 8 // width, 16, width)
        for k, v in a.clt.state_dict().items():
            assert torch.equal(canonical(v), canonical(b.clt.state_dict()[k])), k
        for k, v in a.adam.exp_avg_sq.items():
            assert torch.equal(canonical(v), canonical(b.adam.exp_avg_sq[k])), k
    b.curve = [{"fvu": 0.5, "l0": 3.0}]
    b.finish(1, 1.0)
    on_disk = clt_io.load(tmp_path / "b").state_dict()
    assert all(torch.equal(canonical(v), on_disk[k]) for k, v in a.clt.state_dict().items())


# -------------------------------------------------------------------------- evaluation
def coder(layer: int, seed: int) -> Coder:
    cfg = CoderConfig(
        "transcoder", D, D, 16, in_hook=f"blocks.{layer}.ln2.hook_normalized",
        out_hook=f"blocks.{layer}.hook_mlp_out", layer=layer,
    )  # fmt: skip
    c = Coder(cfg, seed=seed)
    g = torch.Generator().manual_seed(10 + seed)
    with torch.no_grad():
        c.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
        c.b_dec_out.copy_(torch.randn(D, generator=g) * 0.1)
        c.b_enc.copy_(torch.randn(16, generator=g) * 0.1)
    return c


def clt_from_coders(coders: list[Coder]) -> CLT:
    """A CLT whose cross-layer decoders are zero and whose own-layer parts are the coders'
    (the coders' input pre-bias folded into b_enc)."""
    clt = CLT(CLTConfig(n_layers=len(coders), d_model=D, d_sae=16))
    with torch.no_grad():
        for i, c in enumerate(coders):
            clt.W_enc[i].copy_(c.W_enc)
            clt.b_enc[i].copy_(c.b_enc - c.b_dec @ c.W_enc)
            clt.W_dec[i].zero_()
            clt.W_dec[i][:, 0].copy_(c.W_dec)
            clt.b_dec[i].copy_(c.b_dec_out)
    return clt


def test_spliced_clt_with_zero_cross_decoders_equals_per_layer_transcoders(model2, tokens):
    coders = [coder(0, 0), coder(1, 1)]
    clt = clt_from_coders(coders)
    got = evaluate_clt(model2, clt, tokens, batch_contexts=3, progress=False)
    pairs = [(c, i) for i, c in enumerate(coders)]
    want = evaluate_coders(model2, pairs, tokens, batch_contexts=3, splice="all", progress=False)
    assert got["n_ce_tokens"] == want["n_ce_tokens"] == 8 * 15
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-5), k
    each = evaluate_coders(model2, pairs, tokens, batch_contexts=3, progress=False)
    for row, ref in zip(got["clean_layers"], each):
        for k in ("fvu", "mse", "l0", "cosine_sim", "dead_fraction"):
            assert row[k] == pytest.approx(ref[k], abs=1e-5), k
    assert got["l0"] == pytest.approx(sum(r["l0"] for r in got["layers"]))
    assert [r["block"] for r in got["layers"]] == [0, 1]
    assert got["kl"] > 1e-3  # a real replacement, not the identity


@pytest.mark.parametrize("in_hook", ["ln2.hook_normalized", "hook_resid_mid"])
def test_cross_layer_decoders_change_later_layers_only(model3, tokens, in_hook):
    clt = randomized(CLT(CLTConfig(n_layers=3, d_model=D, d_sae=16, in_hook=in_hook)))
    base = evaluate_clt(model3, clt, tokens[:4], batch_contexts=4, progress=False)
    with torch.no_grad():
        clt.W_dec[0][:, 2] += 0.5  # layer-0 features now write more into layer 2
    moved = evaluate_clt(model3, clt, tokens[:4], batch_contexts=4, progress=False)
    for i in (0, 1):
        assert moved["clean_layers"][i]["fvu"] == base["clean_layers"][i]["fvu"]
    assert moved["clean_layers"][2]["fvu"] != base["clean_layers"][2]["fvu"]
    assert moved["ce_loss_replaced"] != base["ce_loss_replaced"]
    # nothing before layer 0 is replaced: its spliced-run input is the clean one
    for k in ("fvu", "l0", "mse"):
        assert moved["layers"][0][k] == pytest.approx(moved["clean_layers"][0][k], rel=1e-6)
    assert moved["layers"][1]["fvu"] != pytest.approx(moved["clean_layers"][1]["fvu"], rel=1e-3)


# ------------------------------------------------------------------------------ files
def test_tcspec_save_load_exact(tmp_path):
    cfg = CLTConfig(n_layers=3, d_model=8, d_sae=16, activation="jumprelu", skip=True,
                    layers=(1, 2, 4))  # fmt: skip
    clt = randomized(CLT(cfg))
    clt_io.save(clt, tmp_path / "c", extra={"name": "x"})
    back = clt_io.load(tmp_path / "c")
    assert back.cfg == cfg and clt_io.load_cfg(tmp_path / "c")[1] == {"name": "x"}
    a, b = clt.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def write_ct_files(folder, L=3, d=8, F=16, threshold=False, skip=False):
    """A CLT folder as circuit-tracer's `to_safetensors` writes it, plus its config.yaml."""
    g = torch.Generator().manual_seed(5)
    folder.mkdir()
    for i in range(L):
        enc = {f"W_enc_{i}": torch.randn(F, d, generator=g), f"b_enc_{i}": torch.randn(F, generator=g),
               f"b_dec_{i}": torch.randn(d, generator=g)}  # fmt: skip
        if threshold:
            enc[f"threshold_{i}"] = torch.rand(F, generator=g) * 0.1
        if skip:
            enc[f"W_skip_{i}"] = torch.randn(d, d, generator=g)
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        dec = {f"W_dec_{i}": torch.randn(F, L - i, d, generator=g)}
        save_file(dec, str(folder / f"W_dec_{i}.safetensors"))
    config = {"model_name": "gpt2", "model_kind": "cross_layer_transcoder",
              "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out"}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("threshold,skip", [(False, False), (True, True)])
def test_circuit_tracer_round_trip(tmp_path, threshold, skip):
    src = tmp_path / "ct"
    write_ct_files(src, threshold=threshold, skip=skip)
    clt = clt_io.load_circuit_tracer(src)
    assert clt.cfg == CLTConfig(3, 8, 16, activation="jumprelu" if threshold else "relu",
                                in_hook="hook_resid_mid", skip=skip)  # fmt: skip
    out = clt_io.export_circuit_tracer(clt, tmp_path / "out", model_name="gpt2")
    names = sorted(p.name for p in src.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(str(src / name)), load_file(str(out / name))
            assert a.keys() == b.keys()
            for k in a:
                if k.startswith("threshold_"):  # exp(log(t)): float32 rounding
                    torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=0)
                else:
                    assert torch.equal(a[k], b[k]), k
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder" and config["model_name"] == "gpt2"
    assert config["feature_input_hook"] == "hook_resid_mid"
    back = clt_io.load_circuit_tracer(out)
    a, b = clt.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "log_threshold")


def test_topk_export_is_explicit(tmp_path):
    clt = randomized(CLT(CLTConfig(2, 8, 16, activation="topk", k=4)))
    with pytest.raises(ValueError, match="allow_topk"):
        clt_io.export_circuit_tracer(clt, tmp_path / "o", model_name="m")
    clt_io.export_circuit_tracer(clt, tmp_path / "o", model_name="m", allow_topk=True)
    back = clt_io.load_circuit_tracer(tmp_path / "o")
    assert back.cfg == clt.cfg
    a, b = clt.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bench_smoke():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import clt as bench_clt

    out = bench_clt.main(["--tiny", "--rounds", "1", "--threads", "1"])
    assert set(out["variants"]) == {"clt", "per_layer", "clt_topk", "per_layer_topk"}
    one = 2 * 256 * 128 * 32  # 2 B F d
    assert out["variants"]["clt"]["executed_gflops"] == pytest.approx(one * (2 * 3 + 3 * 6) / 1e9)
    assert out["variants"]["per_layer"]["executed_gflops"] == pytest.approx(3 * one * 5 / 1e9)
    clt_topk = 2 * 256 * 32 * (128 * 3 + 8 * (3 + 3 * 6))  # dense encoder, the rest over k
    assert out["variants"]["clt_topk"]["executed_gflops"] == pytest.approx(clt_topk / 1e9)
    topk = 3 * (one + 8 * 256 * 8 * 32)  # dense encoder, the rest over k = 8
    assert out["variants"]["per_layer_topk"]["executed_gflops"] == pytest.approx(topk / 1e9)
    assert all(r["time"] > 0 for r in out["ratios"].values())
