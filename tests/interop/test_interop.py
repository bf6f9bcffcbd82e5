"""Interop: round trips through every format, the real libraries' own loaders, the paper's
`.pt` layout, circuit-tracer feature pages, and the errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.interop import (
    cantor_pair,
    detect_format,
    export,
    export_transcoder_set,
    load_dictionary,
    write_feature_data,
)

torch.set_num_threads(1)
D, F, K = 6, 16, 3
IN, OUT = "ln2.hook_normalized", "hook_mlp_out"
TOL = {"rtol": 1e-6, "atol": 1e-6}


def make_coder(kind: str, activation: str = "relu", layer: int = 0, seed: int = 0) -> Coder:
    """A random dictionary with every parameter (biases included) nonzero."""
    cfg = CoderConfig(
        kind=kind,
        d_in=D,
        d_out=D,
        d_sae=F,
        activation=activation,
        k=K if activation == "topk" else None,
        in_hook=f"blocks.{layer}.{IN}",
        out_hook=f"blocks.{layer}.{IN if kind == 'sae' else OUT}",
        layer=layer,
    )
    coder = Coder(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return coder.requires_grad_(False)


def inputs(n: int = 64, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def assert_identical(a: Coder, b: Coder, x: torch.Tensor) -> None:
    """Bitwise the same parameters and outputs (not merely close)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for ta, tb in zip(a(x), b(x)):
        assert torch.equal(ta, tb)


def assert_same_function(a: Coder, b: Coder, x: torch.Tensor) -> None:
    za, zb = a.encode(x), b.encode(x)
    torch.testing.assert_close(zb, za, **TOL)
    torch.testing.assert_close(b.decode(za, x), a.decode(za, x), **TOL)


# --------------------------------------------------------------------------- round trips
KINDS = [("sae", "relu"), ("sae", "topk"), ("transcoder", "relu"), ("transcoder", "topk")]
KINDS += [("skip_transcoder", "relu"), ("skip_transcoder", "topk")]
# what a format cannot hold, and the reason its export gives
REFUSED = {
    ("circuit-tracer", "sae"): "transcoders only",
    ("saelens", "transcoder-topk"): "no TopK transcoder",
}


def refusal(fmt: str, kind: str, activation: str) -> str | None:
    if fmt == "circuit-tracer" and kind == "sae":
        return REFUSED[(fmt, "sae")]
    if fmt == "saelens" and kind != "sae" and activation == "topk":
        return REFUSED[(fmt, "transcoder-topk")]
    return None


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "circuit-tracer"])
@pytest.mark.parametrize("kind,activation", KINDS)
def test_export_then_import_is_the_same_dictionary(tmp_path, fmt, kind, activation):
    coder = make_coder(kind, activation)
    why = refusal(fmt, kind, activation)
    if why:
        with pytest.raises(ValueError, match=why):
            export(coder, tmp_path / "out", fmt, model_name="toy", context_size=16)
        return
    written = export(coder, tmp_path / "out", fmt, model_name="toy", context_size=16)
    assert all(p.is_file() for p in written)
    assert detect_format(tmp_path / "out") == fmt
    back = load_dictionary(tmp_path / "out", expect_d_in=D)
    assert back.cfg == coder.cfg
    assert_identical(coder, back, inputs())


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_a_transcoder_changed_after_export_loads_from_the_formats_own_tensors(tmp_path, fmt):
    """The pre-bias sidecar is used only while the format's encoder bias is its fold: after
    another tool changes b_enc, the format's tensors define the dictionary."""
    coder = make_coder("transcoder")
    export(coder, tmp_path / "out", fmt, model_name="toy", context_size=16)
    w_file = (
        tmp_path / "out" / ("sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors")
    )
    key = "b_enc" if fmt == "saelens" else "encoder.bias"
    t = load_file(str(w_file))
    t[key] = t[key] + 0.5
    save_file(t, str(w_file))
    back = load_dictionary(tmp_path / "out")
    assert torch.equal(back.b_dec, torch.zeros(D)) and torch.equal(back.b_enc, t[key])
    x = inputs()
    torch.testing.assert_close(back.pre_acts(x), coder.pre_acts(x) + 0.5, **TOL)


def test_tcspec_folders_load_too(tmp_path):
    coder = make_coder("skip_transcoder")
    coders.save(coder, tmp_path / "tc")
    assert detect_format(tmp_path / "tc") == "tcspec"
    back = load_dictionary(tmp_path / "tc")
    assert back.cfg == coder.cfg
    assert_same_function(coder, back, inputs())


def test_a_relu_dictionary_is_written_to_sparsify_with_k_equal_to_d_sae(tmp_path):
    export(make_coder("sae"), tmp_path / "sp", "sparsify", model_name="toy", context_size=16)
    cfg = json.loads((tmp_path / "sp" / "cfg.json").read_text())
    assert (cfg["activation"], cfg["k"], cfg["num_latents"]) == ("topk", F, F)


def test_transcoder_set_writes_every_layer_and_loads_each(tmp_path):
    set_ = {i: make_coder("transcoder", layer=i, seed=i) for i in range(3)}
    written = export_transcoder_set(set_, tmp_path / "set", model_name="toy", context_size=16)
    assert sorted(p.name for p in written) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
        "layer_2.safetensors",
        "tcspec_pre_bias.safetensors",
    ]
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (IN, OUT)
    assert config["scan"] == "./data/features/set"
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2\]; pass the layer"):
        load_dictionary(tmp_path / "set")
    for i, coder in set_.items():
        back = load_dictionary(tmp_path / "set", layer=i)
        assert back.cfg == coder.cfg
        assert_identical(coder, back, inputs())
    # a single layer file, beside its config.yaml
    back = load_dictionary(tmp_path / "set" / "layer_1.safetensors")
    assert back.cfg.layer == 1 and back.cfg.in_hook == f"blocks.1.{IN}"


def test_circuit_tracer_layout_is_the_documented_one(tmp_path):
    """What circuit-tracer's `load_relu_transcoder` reads: W_enc [d_sae, d_model] (transposed
    against SAELens), W_dec [d_sae, d_model], b_enc [d_sae], b_dec [d_model] (output bias),
    W_skip [d_model, d_model] applied as `x @ W_skip.T`; encode is `x @ W_enc.T + b_enc`."""
    coder = make_coder("skip_transcoder")
    export_transcoder_set({0: coder}, tmp_path / "set", model_name="toy")
    t = load_file(str(tmp_path / "set" / "layer_0.safetensors"))
    assert {k: tuple(v.shape) for k, v in t.items()} == {
        "W_enc": (F, D),
        "W_dec": (F, D),
        "b_enc": (F,),
        "b_dec": (D,),
        "W_skip": (D, D),
    }
    x = inputs()
    z = torch.relu(x @ t["W_enc"].T + t["b_enc"])
    torch.testing.assert_close(z, coder.encode(x), **TOL)
    y = z @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T
    torch.testing.assert_close(y, coder(x)[0], **TOL)


def test_a_topk_set_is_circuit_tracers_topk_layout(tmp_path):
    """circuit-tracer 0.5.0 reads a TopK set's `activation: topk` and `k` from config.yaml
    (`load_transcoder_set`), its layer files hold only the plain tensors (its strict
    `load_state_dict`), and its TopK keeps the k largest pre-activations, as ours does when
    they are positive."""
    coder = make_coder("transcoder", "topk")
    export_transcoder_set({0: coder}, tmp_path / "set", model_name="toy")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert (config["activation"], config["k"]) == ("topk", K)
    t = load_file(str(tmp_path / "set" / "layer_0.safetensors"))
    assert set(t) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    x = inputs()
    pre = x @ t["W_enc"].T + t["b_enc"]
    vals, idx = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, idx, vals)  # circuit-tracer's TopK
    assert (vals > 0).all()
    torch.testing.assert_close(z, coder.encode(x), **TOL)


def test_transcoder_set_refuses_what_circuit_tracer_cannot_load(tmp_path):
    a, b = make_coder("transcoder", layer=0), make_coder("transcoder", layer=2)
    with pytest.raises(ValueError, match=r"every layer 0..n-1, got layers \[0, 2\]"):
        export_transcoder_set({0: a, 2: b}, tmp_path / "x", model_name="toy")
    lone = make_coder("transcoder", layer=3)
    with pytest.raises(ValueError, match=r"got layers \[3\]"):
        export(lone, tmp_path / "x", "circuit-tracer", model_name="toy", context_size=8)
    mixed = {0: a, 1: make_coder("skip_transcoder", layer=1)}
    with pytest.raises(ValueError, match="same width and skip connection"):
        export_transcoder_set(mixed, tmp_path / "x", model_name="toy")


# ----------------------------------------------------------------------------- SAELens
def _saelens():
    sae_lens = pytest.importorskip("sae_lens")
    return sae_lens


SAELENS_ARCH = {
    ("sae", "relu"): "standard",
    ("sae", "topk"): "topk",
    ("transcoder", "relu"): "transcoder",
    ("skip_transcoder", "relu"): "skip_transcoder",
}


@pytest.mark.parametrize("kind,activation", list(SAELENS_ARCH))
def test_saelens_loads_our_export_and_computes_the_same(tmp_path, kind, activation):
    sae_lens = _saelens()
    coder = make_coder(kind, activation)
    dataset = "Skylion007/openwebtext"
    export(coder, tmp_path / "sl", "saelens", model_name="gpt2", context_size=128, dataset=dataset)
    sae = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert sae.cfg.architecture() == SAELENS_ARCH[(kind, activation)]
    assert sae.cfg.metadata.dataset_path == dataset
    assert sae.cfg.metadata.hook_name == coder.cfg.in_hook
    assert sae.cfg.metadata.model_name == "gpt2"
    assert sae.cfg.metadata.context_size == 128
    if kind != "sae":
        assert sae.cfg.metadata.hook_name_out == coder.cfg.out_hook
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), coder.encode(x), **TOL)
        torch.testing.assert_close(sae(x), coder(x)[0], **TOL)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


ARCHS = ["standard", "standard_no_pre_bias", "topk", "transcoder", "skip_transcoder"]


@pytest.mark.parametrize("arch", ARCHS)
def test_folders_saelens_writes_load_as_the_same_function(tmp_path, arch):
    sae_lens = _saelens()
    from sae_lens.saes import (
        SkipTranscoder,
        SkipTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        Transcoder,
        TranscoderConfig,
    )

    meta = sae_lens.saes.sae.SAEMetadata(hook_name=f"blocks.2.{IN}", model_name="gpt2")
    if arch.startswith("standard"):
        cfg = StandardSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=arch == "standard")
        sae = StandardSAE(cfg)
    elif arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=K))
    else:
        cls, cfg_cls = {
            "transcoder": (Transcoder, TranscoderConfig),
            "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig),
        }[arch]
        sae = cls(cfg_cls(d_in=D, d_sae=F, d_out=D + 1, apply_b_dec_to_input=False))
        meta.hook_name_out = f"blocks.2.{OUT}"
    sae.cfg.metadata = meta
    _randomize(sae, 3)
    sae.save_model(tmp_path / "sl")
    coder = load_dictionary(tmp_path / "sl", format="saelens")
    assert coder.cfg.layer == 2 and coder.cfg.in_hook == f"blocks.2.{IN}"
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(coder.encode(x), sae.encode(x), **TOL)
        torch.testing.assert_close(coder(x)[0], sae(x), **TOL)


def _write_saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    return folder


def _sae_tensors(seed: int = 0, d_out: int = D) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, F, generator=g),
        "b_enc": torch.randn(F, generator=g),
        "W_dec": torch.randn(F, d_out, generator=g),
        "b_dec": torch.randn(d_out, generator=g),
    }


def test_pre_6_saelens_configs_load_as_saelens_loads_them(tmp_path):
    sae_lens = _saelens()
    cfg = {  # the flat keys of SAELens < 6
        "model_name": "gpt2-small",
        "hook_point": "blocks.4.hook_resid_pre",
        "hook_point_layer": 4,
        "d_in": D,
        "d_sae": F,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "context_size": 128,
        "dtype": "float32",
        "device": "cpu",
    }
    folder = _write_saelens(tmp_path / "old", cfg, _sae_tensors())
    coder = load_dictionary(folder)
    assert (coder.cfg.kind, coder.cfg.activation, coder.cfg.k) == ("sae", "topk", K)
    assert (coder.cfg.layer, coder.cfg.in_hook) == (4, "blocks.4.hook_resid_pre")
    sae = sae_lens.SAE.load_from_disk(folder)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(coder.encode(x), sae.encode(x), **TOL)
        torch.testing.assert_close(coder(x)[0], sae(x), **TOL)


# ---------------------------------------------------------------------------- sparsify
@pytest.mark.parametrize("kind,activation", KINDS)
def test_sparsify_loads_our_export_and_computes_the_same(tmp_path, kind, activation):
    sparsify = pytest.importorskip("sparsify")
    coder = make_coder(kind, activation)
    export(coder, tmp_path / "sp", "sparsify", model_name="toy", context_size=16)
    sc = sparsify.SparseCoder.load_from_disk(tmp_path / "sp")
    x = inputs()
    with torch.no_grad():
        out = sc(x, coder(x)[0])
        torch.testing.assert_close(out.sae_out, coder(x)[0], **TOL)
        dense = torch.zeros(len(x), F).scatter_(1, out.latent_indices, out.latent_acts)
        torch.testing.assert_close(dense, coder.encode(x), **TOL)


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, False), (True, True)])
def test_folders_sparsify_writes_load_as_the_same_function(tmp_path, transcode, skip):
    sparsify = pytest.importorskip("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=F, k=K, transcode=transcode, skip_connection=skip)
    sc = sparsify.SparseCoder(D, cfg)
    _randomize(sc, 5)
    sc.save_to_disk(tmp_path / "layers.3.mlp")
    coder = load_dictionary(tmp_path / "layers.3.mlp", in_hook=f"blocks.3.{IN}")
    assert coder.cfg.layer == 3 and coder.cfg.in_hook == f"blocks.3.{IN}"
    assert coder.cfg.kind == ("skip_transcoder" if skip else "transcoder" if transcode else "sae")
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(coder(x)[0], sc(x).sae_out, **TOL)


# ---------------------------------------------------------------------- circuit-tracer
def _circuit_tracer_loader():
    return pytest.importorskip("circuit_tracer.transcoder.single_layer_transcoder")


@pytest.mark.parametrize("kind,activation", [("transcoder", "relu"), ("skip_transcoder", "relu"),
                                             ("transcoder", "topk")])  # fmt: skip
def test_circuit_tracer_loads_our_set_and_computes_the_same(tmp_path, kind, activation):
    ct = _circuit_tracer_loader()
    set_ = {i: make_coder(kind, activation, layer=i, seed=i) for i in range(2)}
    export_transcoder_set(set_, tmp_path / "set", model_name="toy")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    loaded = ct.load_transcoder_set(
        {i: str(tmp_path / "set" / f"layer_{i}.safetensors") for i in range(2)},
        scan=config["scan"],
        feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"],
        activation=config.get("activation"),
        k=config.get("k"),
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    x = inputs()
    with torch.no_grad():
        for i, coder in set_.items():
            torch.testing.assert_close(loaded[i].encode(x), coder.encode(x), **TOL)
            torch.testing.assert_close(loaded[i](x), coder(x)[0], **TOL)


# ------------------------------------------------------------------ transcoder-circuits
@dataclasses.dataclass
class _PaperConfig:
    """The fields of the paper's `LanguageModelSAERunnerConfig` that matter here."""

    model_name: str = "gpt2-small"
    hook_point: str = f"blocks.8.{IN}"
    hook_point_layer: int = 8
    d_in: int = D
    d_sae: int = F
    is_transcoder: bool = True
    out_hook_point: str = f"blocks.8.{OUT}"
    d_out: int = D
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    l1_coefficient: float = 1.4e-4


def paper_checkpoint(path: Path, monkeypatch, transcoder: bool = True) -> dict:
    """A `.pt` with the released layout, written while a module `sae_training.config` with
    the config class exists; the module is gone again before anything loads it."""
    pkg, mod = types.ModuleType("sae_training"), types.ModuleType("sae_training.config")
    cls = type("LanguageModelSAERunnerConfig", (_PaperConfig,), {"__module__": mod.__name__})
    cls = dataclasses.dataclass(cls)
    mod.LanguageModelSAERunnerConfig = cls
    pkg.config = mod
    monkeypatch.setitem(sys.modules, "sae_training", pkg)
    monkeypatch.setitem(sys.modules, "sae_training.config", mod)
    state = _sae_tensors(seed=2)
    if transcoder:
        state["b_dec_out"] = torch.randn(D, generator=torch.Generator().manual_seed(9))
    cfg = cls(is_transcoder=transcoder, out_hook_point=f"blocks.8.{OUT}" if transcoder else None)
    torch.save({"cfg": cfg, "state_dict": state}, path)
    monkeypatch.delitem(sys.modules, "sae_training.config")
    monkeypatch.delitem(sys.modules, "sae_training")
    return state


@pytest.mark.parametrize("transcoder", [True, False])
def test_the_papers_pt_layout_loads_without_running_its_pickle(tmp_path, monkeypatch, transcoder):
    state = paper_checkpoint(tmp_path / "final_sparse_autoencoder.pt", monkeypatch, transcoder)
    coder = load_dictionary(tmp_path / "final_sparse_autoencoder.pt", expect_d_in=D)
    cfg = coder.cfg
    assert (cfg.kind, cfg.layer, cfg.in_hook) == (
        "transcoder" if transcoder else "sae",
        8,
        f"blocks.8.{IN}",
    )
    assert cfg.out_hook == (f"blocks.8.{OUT}" if transcoder else f"blocks.8.{IN}")
    x = inputs()
    z = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    y = z @ state["W_dec"] + (state["b_dec_out"] if transcoder else state["b_dec"])
    torch.testing.assert_close(coder.encode(x), z, **TOL)
    torch.testing.assert_close(coder(x)[0], y, **TOL)


# ---------------------------------------------------------------- circuit-tracer pages
def _feature_pages(tmp_path):
    """Feature pages of features 0, 3 and 5 of a layer-1 transcoder, and their statistics."""
    from tcspec.features.files import save_stats
    from tcspec.features.stats import StatsConfig, feature_statistics

    coder = make_coder("transcoder", layer=1)
    V, T = 30, 12
    emb = torch.randn(V, D, generator=torch.Generator().manual_seed(0))
    tokens = np.random.default_rng(0).integers(1, V, size=(20, T)).astype(np.int32)
    tokens[:, 0] = 0
    cfg = StatsConfig(top_k=3, bands=2, per_band=2, context_window=2, n_bins=10)
    stats = feature_statistics(
        coder, lambda b: emb[b], tokens, V, cfg, choose_pages=lambda count, n: [0, 3, 5]
    )
    stats.tensors["logit_top_ids"] = torch.arange(F * 2).view(F, 2) % V
    stats.tensors["logit_bottom_ids"] = (torch.arange(F * 2).view(F, 2) + 7) % V
    vocab = [f"t{i}" for i in range(V)]
    save_stats(stats, tmp_path / "stats", vocab)
    written = write_feature_data(tmp_path / "stats", tmp_path / "features", layer=1)
    return written, stats, vocab, V


def test_feature_pages_follow_circuit_tracers_schema(tmp_path):
    written, stats, vocab, V = _feature_pages(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{cantor_pair(1, f)}.json" for f in (0, 3, 5))
    assert cantor_pair(1, 3) == 13  # (1 + 3)(1 + 3 + 1)/2 + 3
    keys = {
        "transcoder_id", "index", "examples_quantiles", "top_logits", "bottom_logits",
        "act_min", "act_max", "quantile_values", "histogram", "activation_frequency",
    }  # fmt: skip
    for f in (0, 3, 5):
        page = json.loads((tmp_path / "features" / f"{cantor_pair(1, f)}.json").read_text())
        assert set(page) == keys and page["index"] == f
        assert page["top_logits"] == [vocab[(2 * f) % V], vocab[(2 * f + 1) % V]]
        assert len(page["quantile_values"]) == 100
        assert page["quantile_values"] == sorted(page["quantile_values"])
        assert page["act_max"] == pytest.approx(float(stats.tensors["max"][f]))
        assert page["activation_frequency"] == pytest.approx(float(stats.tensors["frequency"][f]))
        assert sum(page["histogram"]) == int(stats.tensors["count"][f])
        if page["activation_frequency"] > 0:
            assert page["quantile_values"][-1] == pytest.approx(page["act_max"], rel=1e-5)
            top = page["examples_quantiles"][0]
            assert top["quantile_name"] == "Top activations"
            acts = [ex["tokens_acts_list"][ex["train_token_ind"]] for ex in top["examples"]]
            assert acts == sorted(acts, reverse=True)
            assert acts[0] == pytest.approx(page["act_max"], rel=1e-5)
            for q in page["examples_quantiles"]:
                for ex in q["examples"]:
                    assert len(ex["tokens"]) == len(ex["tokens_acts_list"])
                    assert 0 <= ex["train_token_ind"] < len(ex["tokens"])


def test_feature_pages_validate_with_circuit_tracers_model(tmp_path):
    """circuit-tracer's own pydantic model of a feature page accepts ours (skipped, visibly,
    where circuit-tracer is not installed: it cannot be beside TransformerLens 3.9)."""
    model = pytest.importorskip("circuit_tracer.frontend.feature_models").Model
    written, *_ = _feature_pages(tmp_path)
    for path in written:
        model.model_validate(json.loads(path.read_text()))


# ------------------------------------------------------------------------------- errors
def test_detection_names_the_folder_when_unknown_or_ambiguous(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no known dictionary format"):
        detect_format(tmp_path / "empty")
    both = tmp_path / "both"
    export(make_coder("sae"), both, "saelens", model_name="toy", context_size=8)
    save_file({"x": torch.zeros(1)}, str(both / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"both: ambiguous.*saelens.*sparsify"):
        load_dictionary(both)
    assert load_dictionary(both, format="saelens").cfg.kind == "sae"
    with pytest.raises(ValueError, match="unknown dictionary format `nope`"):
        load_dictionary(both, format="nope")
    with pytest.raises(ValueError, match="no such file"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.bin: not a dictionary file"):
        detect_format(tmp_path / "weights.bin")


def _broken_saelens(tmp_path: Path, change) -> Path:
    folder = tmp_path / "sl"
    export(make_coder("transcoder"), folder, "saelens", model_name="toy", context_size=8)
    cfg = json.loads((folder / "cfg.json").read_text())
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    change(cfg, tensors)
    return _write_saelens(folder, cfg, tensors)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, t: t.pop("W_enc"), r"sae_weights.safetensors: missing tensor `W_enc`"),
        (
            lambda c, t: t.update(W_dec=torch.zeros(F, D + 2)),
            r"sae_weights.safetensors: tensor `W_dec` has shape \[16, 8\], expected \[16, 6\]",
        ),
        (
            lambda c, t: t.update(threshold=torch.zeros(F)),
            r"tensor `threshold` is not supported: JumpReLU",
        ),
        (
            lambda c, t: c.update(architecture="jumprelu_transcoder"),
            r"sae_weights.safetensors: missing tensor `threshold`",
        ),
        (lambda c, t: c.update(architecture="gated"), r"cfg.json: `architecture` 'gated'"),
        (
            lambda c, t: c.update(normalize_activations="layer_norm"),
            r"cfg.json: `normalize_activations` 'layer_norm'",
        ),
        (lambda c, t: c.pop("d_sae"), r"cfg.json: `d_sae` must be a positive integer"),
        (lambda c, t: c.update(apply_b_dec_to_input=True), r"cfg.json: `apply_b_dec_to_input"),
    ],
)
def test_bad_saelens_folders_name_the_file_and_key(tmp_path, change, message):
    folder = _broken_saelens(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        load_dictionary(folder)


def test_expect_d_in_names_the_hook(tmp_path):
    export(make_coder("transcoder"), tmp_path / "sl", "saelens", model_name="toy", context_size=8)
    with pytest.raises(ValueError, match=rf"d_in is {D}, but the hook it reads .*has width 768"):
        load_dictionary(tmp_path / "sl", expect_d_in=768)
    with pytest.raises(ValueError, match="belongs to layer 0, not 5"):
        load_dictionary(tmp_path / "sl", layer=5)


def test_cross_layer_and_hub_only_circuit_tracer_configs_are_refused(tmp_path):
    (tmp_path / "clt").mkdir()
    (tmp_path / "clt" / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "cross_layer_transcoder",
                "feature_input_hook": "a",
                "feature_output_hook": "b",
            }
        )
    )
    with pytest.raises(ValueError, match=r"config.yaml: `model_kind` 'cross_layer_transcoder'"):
        load_dictionary(tmp_path / "clt")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "mlp.hook_out",
                "transcoders": ["hf://someone/tc/layer_0.safetensors"],
            }
        )
    )
    with pytest.raises(ValueError, match=r"`transcoders\[0\]` is a hub reference"):
        load_dictionary(tmp_path / "hub")


def test_circuit_tracer_hooks_are_kept_as_named(tmp_path):
    """`mlp.hook_in` (circuit-tracer's wrapper, after the LN weights) is not renamed to a
    TransformerLens hook that carries another tensor."""
    export_transcoder_set({0: make_coder("transcoder")}, tmp_path / "set", model_name="toy")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    config |= {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "blocks.{layer}.x"}
    (tmp_path / "set" / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = load_dictionary(tmp_path / "set").cfg
    assert (cfg.in_hook, cfg.out_hook) == ("blocks.0.mlp.hook_in", "blocks.0.x")


# ------------------------------------------------------------- damaged folders, fuzzed
def _exported_folders(root: Path, monkeypatch) -> dict[str, Path]:
    """One dictionary in every format (a set of two layers for circuit-tracer)."""
    folders = {}
    for fmt in ("saelens", "sparsify"):
        for kind in ("sae", "transcoder"):
            folders[f"{fmt}-{kind}"] = root / f"{fmt}-{kind}"
            export(
                make_coder(kind), folders[f"{fmt}-{kind}"], fmt, model_name="toy", context_size=16
            )
    two = {i: make_coder("transcoder", layer=i, seed=i) for i in (0, 1)}
    export_transcoder_set(two, root / "ct", model_name="toy")
    coders.save(make_coder("skip_transcoder"), root / "tcspec")
    (root / "pt").mkdir()
    paper_checkpoint(root / "pt" / "final.pt", monkeypatch)
    return folders | {"ct": root / "ct", "tcspec": root / "tcspec", "pt": root / "pt" / "final.pt"}


VALUES = [None, True, -1, 0, 1.5, 1e300, "x", [], {}, [1, 2], {"a": 1}, 2**70, "{layer}{x}"]


@st.composite
def damage(draw) -> tuple:
    """(format, file index, operation, argument): a file deleted, truncated, bit-flipped,
    replaced by random bytes, or a config value replaced by one of the wrong type."""
    name = draw(st.sampled_from(["saelens-sae", "saelens-transcoder", "sparsify-sae",
                                 "sparsify-transcoder", "ct", "tcspec", "pt"]))  # fmt: skip
    op = draw(st.sampled_from(["delete", "truncate", "flip", "random", "value"]))
    return (
        name,
        draw(st.integers(0, 10)),
        op,
        draw(st.integers(0, 2**31)),
        draw(st.binary(max_size=64)),
    )


def _damage(target: Path, index: int, op: str, n: int, junk: bytes, value) -> None:
    files = sorted(p for p in (target.parent.iterdir() if target.is_file() else target.iterdir()))
    f = files[index % len(files)]
    data = f.read_bytes()
    if op == "delete":
        f.unlink()
    elif op == "truncate":
        f.write_bytes(data[: n % (len(data) + 1)])
    elif op == "flip":
        b = bytearray(data)
        b[n % len(b)] ^= 1 << (n % 8)
        f.write_bytes(bytes(b))
    elif op == "random":
        f.write_bytes(junk)
    elif f.suffix in (".json", ".yaml"):
        raw = yaml.safe_load(data)  # JSON is YAML
        raw[sorted(raw)[n % len(raw)]] = value
        f.write_text(json.dumps(raw) if f.suffix == ".json" else yaml.safe_dump(raw))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(case=damage(), value=st.sampled_from(VALUES))
@example(case=("tcspec", 0, "random", 0, b"0"), value=None)  # cfg.json holding a bare number
def test_damaged_dictionaries_fail_with_one_located_line(case, value, tmp_path_factory):
    """Whatever happens to a dictionary's files, loading it gives a Coder or a ValueError
    whose message is one line that starts with the path; never another exception."""
    name, index, op, n, junk = case
    root = tmp_path_factory.mktemp("damaged", numbered=True)
    with pytest.MonkeyPatch.context() as mp:
        target = _exported_folders(root, mp)[name]
    _damage(target, index, op, n, junk, value)
    try:
        load_dictionary(target, layer=0 if name == "ct" else None)
    except ValueError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(target)), msg
