"""Training precision: how `auto` resolves, what a train id covers, the bf16 path's numerics
against autograd in float32, and bitwise resume in every precision a CPU runs."""

from __future__ import annotations

import json

import pytest
import torch

from tcspec import compute
from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.plan import compile_plan
from tcspec.spec.loader import SpecError, parse_spec
from tcspec.training import Workspace, loss_and_grads, reference_loss, train_group
from tests.plan.test_plan import ids, quickstart_text
from tests.training.test_train import (
    CHECKPOINT,
    D_IN,
    SPECS,
    make_batches,
    member,
    read_checkpoint,
    run,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------- resolution, ids
def test_auto_resolves_per_device_and_never_to_a_slow_precision():
    gpu = "bf16" if compute.cuda_bf16() else "fp32"  # bf16 unless this GPU lacks it
    assert compute.resolve_precision("auto", "cpu") == "fp32"
    assert compute.resolve_precision("auto", "cuda") == gpu
    assert compute.resolve_precision("auto", "cuda:1") == gpu
    here = gpu if torch.cuda.is_available() else "fp32"
    assert compute.resolve_precision("auto", "auto") == here
    for p in compute.PRECISIONS:
        assert compute.resolve_precision(p, "cpu") == compute.resolve_precision(p, "cuda") == p
    # auto never picks one slower than fp32 where it runs: bf16 only on CUDA
    for device in ("cpu", "cuda", "auto"):
        assert compute.slow_precision(compute.resolve_precision("auto", device), device) is None
    # bf16 asked for on this CPU is flagged exactly when the CPU lacks native bf16
    assert (compute.slow_precision("bf16", "cpu") is None) == compute.native_bf16()
    assert set(compute.cpu_features()) <= set(compute.CPU_FEATURES)


def test_train_ids_cover_the_resolved_precision():
    """fp32 (auto on a CPU) keeps the ids trained before `precision` existed; bf16 renames
    the train tasks and what reads them, never the model, tokens or cache."""
    base = quickstart_text()
    pinned = base.replace("    kind: transcoder\n", "    kind: transcoder\n    precision: fp32\n")
    assert pinned != base and ids(pinned) == ids(
        base.replace("seed: 0\n", "seed: 0\ndevice: cpu\n")
    )
    bf16 = ids(
        base.replace("    kind: transcoder\n", "    kind: transcoder\n    precision: bf16\n")
    )
    a = ids(base)
    changed = {k for k in a if a[k] != bf16[k]}
    assert "train" in {s for s, _ in changed}
    assert not {s for s, _ in changed} & {"model", "tokens", "acts"}
    plan = compile_plan(parse_spec(base, "spec.yaml"))
    train = plan.stage("train")
    assert {t.config.opts.precision for t in train} == {compute.resolve_precision("auto", "auto")}
    if not torch.cuda.is_available():
        assert all('"precision"' not in t.config.canonical() for t in train)
    # cuda resolves auto to bf16: the same train ids as the spec asking for bf16
    cuda = parse_spec(base, "spec.yaml").model_copy(update={"device": "cuda"})
    tc = {t.id for t in compile_plan(cuda).stage("train") if t.label["dictionary"] == "tc"}
    assert not compute.cuda_bf16() or tc == {
        i for (s, _), i in bf16.items() if s == "train" and i.startswith("tc-")
    }


def test_tf32_on_a_cpu_is_a_located_error(tmp_path):
    text = quickstart_text().replace("seed: 0\n", "seed: 0\ndevice: cpu\n")
    text = text.replace("    kind: transcoder\n", "    kind: transcoder\n    precision: tf32\n")
    with pytest.raises(SpecError, match=r"spec.yaml:\d+:\d+: device: dictionary `tc` trains in"):
        parse_spec(text, "spec.yaml")
    m = member(tmp_path, "m", precision="tf32")
    with pytest.raises(ValueError, match="tf32 is a CUDA setting"):
        run([m], 3, tmp_path)


# ------------------------------------------------------------------- the bf16 numerics
B, S = 256, 64
CASES = {
    "relu sae": ("sae", {"l1": 0.02}),
    "relu skip": ("skip_transcoder", {"l1": 0.02, "loss": "squared_error"}),
    "topk aux_k": ("transcoder", {"activation": "topk", "k": 8, "dead_features": "aux_k",
                                  "aux_k": 4}),
    "jumprelu tanh pre_act": ("transcoder", {"activation": "jumprelu", "l0_coef": 0.3,
                                             "jumprelu_bandwidth": 0.8, "penalty": "tanh",
                                             "pre_act_coef": 0.7}),
    "jumprelu step": ("sae", {"activation": "jumprelu", "l0_coef": 0.3,
                              "jumprelu_bandwidth": 0.8}),
    "batchtopk": ("transcoder", {"activation": "batchtopk", "k": 8}),
    "matryoshka topk": ("transcoder", {"activation": "topk", "k": 8, "matryoshka": [16, 32]}),
    "ghost grads": ("transcoder", {"l1": 0.02, "dead_features": "ghost_grads"}),
}  # fmt: skip
GRAD_RTOL = 3e-2
"""bf16 gradients against float32 autograd: relative error of each gradient's norm. The
GEMMs round operands and results to 8 mantissa bits (unit roundoff 2^-8 = 3.9e-3); measured
at most 1.7e-2 here, the largest where a TopK / BatchTopK selection flips at a rounded tie."""
TERM_RTOL = 5e-3
"""bf16 loss terms against float32 (measured at most 1.7e-3)."""


def _case(kind: str, opts: dict, seed: int = 0):
    """A float32 coder with perturbed weights (JumpReLU thresholds exp(lt) in [0.1, 0.7]), a
    batch of B and the dead features 1, 4, 7, 20, 33: (coder, spec, lt, x, y, dead)."""
    g = torch.Generator().manual_seed(seed)
    d_out = D_IN if kind == "sae" else 12
    spec = SPECS[kind](kind=kind, d_sae=S, **opts)
    c = Coder(CoderConfig(kind, D_IN, d_out, S, spec.activation, spec.k), seed=0)
    lt = None
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if spec.activation == "jumprelu":
            lt = (torch.rand(S, generator=g) * 0.6 + 0.1).log().requires_grad_()
            c.threshold.copy_(lt.exp())
    x = torch.randn(B, D_IN, generator=g) + 0.5
    y = x if kind == "sae" else torch.randn(B, d_out, generator=g)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[[1, 4, 7, 20, 33]] = True
    acts_on_dead = spec.dead_features != "none" or spec.pre_act_coef is not None
    return c, spec, lt, x, y, dead if acts_on_dead else None


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_matches_float32_autograd_within_its_rounding(case):
    """The bf16 path (bfloat16 GEMMs, float32 master weights) against the loss through
    autograd in float32: every term within TERM_RTOL, every gradient within GRAD_RTOL, in
    float32. Ghost grads are ill-conditioned (a 1e-3 relative change of x moves their
    gradients by ~9% in float32 alone), so they are held to their terms only."""
    c, opts, lt, x, y, dead = _case(*CASES[case])
    ref = reference_loss(c, x, y, opts, 0.02, dead, log_threshold=lt)
    ref["loss"].backward()
    idx = dead.nonzero().squeeze(1) if dead is not None else None
    ws = Workspace("cpu")
    grads, terms, codes, _ = loss_and_grads(c, x, y, opts, 0.02, idx, ws, torch.bfloat16)
    assert ws.get("z", (B, S), torch.bfloat16).abs().sum() > 0  # the GEMMs ran in bf16
    for k, v in terms.items():
        r = float(ref[k].detach())
        assert v.dtype == torch.float32 and abs(float(v) - r) <= TERM_RTOL * abs(r) + 1e-7, k
    fired = codes.fired(ws)
    assert fired.dtype == torch.float32 and torch.equal(fired, fired.round())  # exact counts
    if opts.dead_features == "ghost_grads":
        return
    want = {n: p.grad for n, p in c.named_parameters() if n != "threshold"}
    if lt is not None:
        want["log_threshold"] = lt.grad
    assert set(grads) == set(want)
    for k, g in want.items():
        assert grads[k].dtype == torch.float32 and _rel(grads[k], g) <= GRAD_RTOL, k


def test_bf16_counts_stay_exact_past_bf16_integers():
    """Firing counts over more than 256 tokens (beyond bfloat16's exact integers) are
    exact: summed in blocks, then in float32."""
    from tcspec.compute.workspace import column_sums, total

    on = (torch.rand(1000, 7, generator=torch.Generator().manual_seed(0)) < 0.9).float()
    assert torch.equal(column_sums(on.bfloat16()), on.sum(0))
    assert total(on.bfloat16()) == on.sum() and on.sum(0).max() > 256


def test_bf16_float32_steps_are_torch_s_mixed_dtype_kernels_bit_for_bit():
    """The residual e = y_hat - y of a bfloat16 y_hat, and the TopK decoder's float32 bias on
    its bfloat16 sum, are taken by widening exactly (faster than torch's mixed-dtype kernels)
    and give their bits."""
    import torch.nn.functional as F

    from tcspec.dictionaries.families import topk
    from tcspec.training.loss import _residual

    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.randn(B, 12, generator=g).bfloat16(), torch.randn(B, 12, generator=g)
    assert torch.equal(_residual(y_hat, y, Workspace("cpu")), torch.sub(y_hat, y))
    c = Coder(CoderConfig("transcoder", D_IN, 12, S, "topk", 4), seed=0)
    with torch.no_grad():
        c.b_out.add_(torch.randn(12, generator=g))
    pre = torch.randn(B, S, generator=g).bfloat16()
    with torch.no_grad():  # as in training
        codes, got = topk.forward(c, pre, y.shape, Workspace("cpu"))
        want = F.embedding_bag(codes.idx, c.W_dec.bfloat16(),
                               per_sample_weights=codes.vals.bfloat16(), mode="sum")  # fmt: skip
        want += c.b_out  # torch's mixed-dtype add_: float32 sum, rounded to bfloat16
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


# ---------------------------------------------------------------------- bitwise resume
RESUME_MEMBERS = [
    ("ghost", {"l1": 1.0, "dead_features": "ghost_grads", "dead_window": 1, "d_sae": 256}),
    ("topk", {"activation": "topk", "k": 3, "dead_features": "aux_k", "dead_window": 3}),
    ("jumprelu", {"activation": "jumprelu", "l0_coef": 1e-3, "jumprelu_threshold_lr": 3e-2,
                  "penalty": "tanh", "pre_act_coef": 0.1, "dead_window": 2}),
    ("matryoshka", {"activation": "batchtopk", "k": 4, "matryoshka": [16, 32]}),
]  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_pass_resumes_bitwise_in_every_cpu_precision(tmp_path, precision):
    """A crashed pass resumes from its checkpoint to the weights, curves and densities of
    an uninterrupted one, in each precision a CPU trains in (tf32 is CUDA's)."""

    def members(root):
        return [member(root, n, precision=precision, checkpoint_every=4, lr_decay="cosine", **o)
                for n, o in RESUME_MEMBERS]  # fmt: skip

    clean = run(members(tmp_path / "clean"), 20, tmp_path / "clean")
    assert {r["precision"] for r in clean} == {precision}
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(members(tmp_path / "killed"), 20, tmp_path / "killed", fail_at=11)
    assert read_checkpoint(tmp_path / "killed" / "ckpt" / CHECKPOINT)["step"] == 8
    logs = []
    killed = members(tmp_path / "killed")
    train_group(killed, make_batches(), 20, tmp_path / "killed" / "ckpt", progress=False,
                log=logs.append)  # fmt: skip
    assert "step 8/20" in logs[0]
    for m, a in zip(killed, clean):
        wa = coders.load(tmp_path / "clean" / m.name).state_dict()
        wb = coders.load(m.out_dir).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), m.name
        b = json.loads((m.out_dir / "training.json").read_text())
        assert a["curve"] == b["curve"] and a["resampled"] == b["resampled"], m.name


# ------------------------------------------------------------------- training quality
QUALITY = [
    ("relu", {"l1": 1e-2}),
    ("topk", {"activation": "topk", "k": 3}),
    ("jumprelu", {"activation": "jumprelu", "l0_coef": 1e-3, "jumprelu_threshold_lr": 3e-2}),
    ("batchtopk", {"activation": "batchtopk", "k": 3}),
]


@pytest.mark.slow
def test_bf16_training_ends_where_fp32_does(tmp_path):
    """300 steps on the synthetic data in each precision: over the last 20 steps, bf16's
    reconstruction loss within 2% of fp32's and its L0 within 3% (the bound the pipeline's
    bf16 dictionaries are held to against fp32), for every activation."""

    def tail(precision: str) -> list[dict]:
        ms = [member(tmp_path / precision, n, precision=precision, **o) for n, o in QUALITY]
        runs = run(ms, 300, tmp_path / precision)
        return [{k: sum(row[k] for row in r["curve"][-20:]) / 20 for k in ("rec", "l0")}
                for r in runs]  # fmt: skip

    for (name, _), a, b in zip(QUALITY, tail("fp32"), tail("bf16")):
        assert b["rec"] == pytest.approx(a["rec"], rel=0.02), name
        assert b["l0"] == pytest.approx(a["l0"], rel=0.03) and a["l0"] > 1, name


def test_cache_sizes_and_the_clt_part_size():
    """The caches sysfs reports (where it does) set the CLT's sparse-product part size:
    the L2 on Intel, half the L3 (at most 16 MB) elsewhere."""
    from tcspec.compute import cache_bytes, cpu_vendor
    from tcspec.training.clt_layout import PART_BYTES, part_bytes

    l2, l3 = cache_bytes(2), cache_bytes(3)
    for size in (l2, l3):
        assert size is None or size >= 64 * 2**10
    assert PART_BYTES == part_bytes() > 0
    if cpu_vendor() == "GenuineIntel" and l2:
        assert PART_BYTES == l2
    elif l3:
        assert PART_BYTES == min(16 * 2**20, l3 // 2)
    else:
        assert PART_BYTES == 16 * 2**20


@pytest.mark.parametrize(
    "vendor, l2, l3, want_mb",
    [
        ("GenuineIntel", 2 * 2**20, 480 * 2**20, 2),  # the Xeon measured: its L2
        ("AuthenticAMD", 1 * 2**20, 32 * 2**20, 16),  # the Zen 4 measured: half its L3
        ("AuthenticAMD", 1 * 2**20, 8 * 2**20, 4),
        ("", None, None, 16),  # caches not reported
    ],
)
def test_clt_part_size_rule(vendor, l2, l3, want_mb, monkeypatch):
    from tcspec.training import clt_layout

    monkeypatch.setattr(clt_layout, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(clt_layout, "cache_bytes", lambda level: {2: l2, 3: l3}[level])
    assert clt_layout.part_bytes() == want_mb * 2**20
