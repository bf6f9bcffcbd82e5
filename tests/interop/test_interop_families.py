"""Interop of the threshold families (JumpReLU, BatchTopK): round trips through SAELens and
circuit-tracer, SAELens's own loader and classes, Gemma Scope files, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.interop import detect_format, export, export_transcoder_set, load_dictionary

torch.set_num_threads(1)
D, F, K = 6, 16, 3
IN, OUT = "ln2.hook_normalized", "hook_mlp_out"
TOL = {"rtol": 1e-6, "atol": 1e-6}
KINDS = ("sae", "transcoder", "skip_transcoder")
FAMILIES = [(kind, act) for kind in KINDS for act in ("jumprelu", "batchtopk")]


def make_coder(kind: str, activation: str, layer: int = 0, seed: int = 0) -> Coder:
    """A random threshold dictionary, every parameter nonzero; thresholds positive (one
    scalar broadcast for BatchTopK) and placed so that about half the features fire."""
    cfg = CoderConfig(
        kind=kind,
        d_in=D,
        d_out=D,
        d_sae=F,
        activation=activation,
        k=K if activation == "batchtopk" else None,
        in_hook=f"blocks.{layer}.{IN}",
        out_hook=f"blocks.{layer}.{IN if kind == 'sae' else OUT}",
        layer=layer,
    )
    coder = Coder(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in coder.named_parameters():
            if name != "threshold":
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        th = 0.2 + 0.3 * torch.rand(F, generator=g)
        coder.threshold.copy_(th if activation == "jumprelu" else th[:1].expand(F))
    return coder.requires_grad_(False)


def inputs(n: int = 64, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def assert_identical(a: Coder, b: Coder, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for ta, tb in zip(a(x), b(x)):
        assert torch.equal(ta, tb)


@pytest.mark.parametrize("fmt", ["saelens", "circuit-tracer"])
@pytest.mark.parametrize("kind,activation", FAMILIES)
def test_threshold_dictionaries_round_trip_exactly(tmp_path, fmt, kind, activation):
    coder = make_coder(kind, activation)
    if fmt == "circuit-tracer" and kind == "sae":
        with pytest.raises(ValueError, match="transcoders only"):
            export(coder, tmp_path / "out", fmt, model_name="toy", context_size=16)
        return
    export(coder, tmp_path / "out", fmt, model_name="toy", context_size=16)
    assert detect_format(tmp_path / "out") == fmt
    back = load_dictionary(tmp_path / "out", expect_d_in=D)
    assert back.cfg == coder.cfg
    x = inputs()
    assert_identical(coder, back, x)
    assert 0 < int((coder.encode(x) != 0).sum()) < x.shape[0] * F  # the thresholds bite


SAELENS_ARCH = {
    "sae": "jumprelu",
    "transcoder": "jumprelu_transcoder",
    "skip_transcoder": "jumprelu_skip_transcoder",
}


@pytest.mark.parametrize("kind,activation", FAMILIES)
def test_saelens_loads_our_threshold_exports_and_computes_the_same(tmp_path, kind, activation):
    sae_lens = pytest.importorskip("sae_lens")
    coder = make_coder(kind, activation)
    export(coder, tmp_path / "sl", "saelens", model_name="gpt2", context_size=128)
    sae = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert sae.cfg.architecture() == SAELENS_ARCH[kind]
    assert torch.equal(sae.threshold.detach(), coder.threshold)
    if activation == "batchtopk":  # one scalar threshold broadcast, as SAELens saves BatchTopK
        assert len(set(sae.threshold.tolist())) == 1
        assert sae.cfg.metadata.tcspec_k == K
    x = inputs()
    with torch.no_grad():
        z = sae.encode(x)
        assert torch.equal(z != 0, coder.encode(x) != 0)
        torch.testing.assert_close(z, coder.encode(x), **TOL)
        torch.testing.assert_close(sae(x), coder(x)[0], **TOL)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", list(SAELENS_ARCH.values()))
def test_jumprelu_folders_saelens_writes_load_as_the_same_function(tmp_path, arch):
    """Thresholds drawn around 0: the negative ones act as 0 in SAELens (it ReLUs first) and
    load as 0."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
    )

    meta = sae_lens.saes.sae.SAEMetadata(hook_name=f"blocks.2.{IN}", model_name="gpt2")
    if arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=F))
    else:
        cls, cfg_cls = {
            "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig),
            "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
        }[arch]
        sae = cls(cfg_cls(d_in=D, d_sae=F, d_out=D + 1, apply_b_dec_to_input=False))
        meta.hook_name_out = f"blocks.2.{OUT}"
    sae.cfg.metadata = meta
    _randomize(sae, 3)
    assert (sae.threshold < 0).any() and (sae.threshold > 0).any()
    sae.save_model(tmp_path / "sl")
    coder = load_dictionary(tmp_path / "sl", format="saelens")
    assert (coder.cfg.activation, coder.cfg.layer) == ("jumprelu", 2)
    assert torch.equal(coder.threshold, sae.threshold.detach().clamp(min=0))
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(coder.encode(x), sae.encode(x), **TOL)
        torch.testing.assert_close(coder(x)[0], sae(x), **TOL)


def test_circuit_tracer_layer_files_carry_activation_function_threshold(tmp_path):
    set_ = {i: make_coder("transcoder", "jumprelu", layer=i, seed=i) for i in range(2)}
    export_transcoder_set(set_, tmp_path / "set", model_name="toy")
    t = load_file(str(tmp_path / "set" / "layer_1.safetensors"))
    assert torch.equal(t["activation_function.threshold"], set_[1].threshold)
    x = inputs()
    pre = x @ t["W_enc"].T + t["b_enc"]  # circuit-tracer's encode, then its JumpReLU
    z = pre * (pre > t["activation_function.threshold"])
    torch.testing.assert_close(z, set_[1].encode(x), **TOL)
    mixed = {0: set_[0], 1: make_coder("transcoder", "batchtopk", layer=1)}
    with pytest.raises(ValueError, match="same width and skip connection"):
        export_transcoder_set(mixed, tmp_path / "x", model_name="toy")


def test_negative_thresholds_and_sparsify_are_refused(tmp_path):
    coder = make_coder("transcoder", "jumprelu")
    with pytest.raises(ValueError, match="sparsify has no thresholds"):
        export(coder, tmp_path / "sp", "sparsify", model_name="toy", context_size=8)
    with torch.no_grad():
        coder.threshold[3] = -0.1
    for fmt in ("saelens", "circuit-tracer"):
        with pytest.raises(ValueError, match="1 thresholds are negative"):
            export(coder, tmp_path / fmt, fmt, model_name="toy", context_size=8)


# --------------------------------------------------------------------------- Gemma Scope
def _gemma_tensors(seed: int, skip: bool = False) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    t = {
        "W_enc": g.standard_normal((D, F)),
        "W_dec": g.standard_normal((F, D)),
        "b_enc": g.standard_normal(F),
        "b_dec": g.standard_normal(D),
        "threshold": g.uniform(-0.1, 0.6, F),  # a few negative: they act as 0
    }
    if skip:
        t["affine_skip_connection"] = g.standard_normal((D, D))
    return {k: v.astype(np.float32) for k, v in t.items()}


def _gemma_reference(t: dict[str, np.ndarray], x: torch.Tensor) -> tuple:
    """Gemma Scope's function: relu(x W_enc + b_enc) * [pre > threshold], no pre-bias."""
    T = {k: torch.from_numpy(v) for k, v in t.items()}
    pre = x @ T["W_enc"] + T["b_enc"]
    z = torch.relu(pre) * (pre > T["threshold"])
    y = z @ T["W_dec"] + T["b_dec"]
    if "affine_skip_connection" in T:
        y = y + x @ T["affine_skip_connection"]
    return z, y


@pytest.mark.parametrize(
    "where,kind,hooks",
    [
        ("gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_20", "sae", ("hook_resid_post",) * 2),
        ("gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_9", "transcoder", (IN, OUT)),
    ],
)
def test_gemma_scope_npz_loads_as_the_same_function(tmp_path, where, kind, hooks):
    t = _gemma_tensors(1)
    folder = tmp_path / where
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **t)
    assert detect_format(folder) == "gemma-scope"
    assert detect_format(folder / "params.npz") == "gemma-scope"
    coder = load_dictionary(folder, expect_d_in=D)
    layer = int(where.split("layer_")[1].split("/")[0])
    cfg = coder.cfg
    assert (cfg.kind, cfg.activation, cfg.layer) == (kind, "jumprelu", layer)
    assert (cfg.in_hook, cfg.out_hook) == tuple(f"blocks.{layer}.{h}" for h in hooks)
    assert torch.equal(coder.W_dec, torch.from_numpy(t["W_dec"]))
    x = inputs()
    z, y = _gemma_reference(t, x)
    torch.testing.assert_close(coder.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder(x)[0], y, rtol=1e-5, atol=1e-5)
    if kind == "transcoder":  # no pre-bias to fold: bit for bit
        assert torch.equal(coder.encode(x), z)


def test_gemma_scope_2_safetensors_skip_transcoder(tmp_path):
    t = _gemma_tensors(2, skip=True)
    folder = tmp_path / "transcoder_all" / "layer_4_width_16k_l0_small"
    folder.mkdir(parents=True)
    names = {"W_enc": "w_enc", "W_dec": "w_dec"}
    save_file(
        {names.get(k, k): torch.from_numpy(v) for k, v in t.items()},
        str(folder / "params.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu"}))
    coder = load_dictionary(folder)
    assert (coder.cfg.kind, coder.cfg.layer) == ("skip_transcoder", 4)
    x = inputs()
    z, y = _gemma_reference(t, x)
    assert torch.equal(coder.encode(x), z)
    torch.testing.assert_close(coder(x)[0], y, **TOL)
    # and on to SAELens and back, exactly
    export(coder, tmp_path / "sl", "saelens", model_name="g", context_size=8)
    back = load_dictionary(tmp_path / "sl")
    assert back.cfg == coder.cfg
    assert_identical(coder, back, x)
