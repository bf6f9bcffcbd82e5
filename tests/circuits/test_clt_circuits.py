"""Cross-layer transcoders downstream of training: one layer's features as a per-layer
dictionary (interp), and attribution graphs through a CLT on the tiny float64 models of
tests/circuits/test_attribution_graph.py (a feature is one node whose edges sum its decoders)."""

from __future__ import annotations

import pytest
import torch
from test_attribution_graph import (
    LAYERS,
    SEQ,
    D,
    exactness_error,
    frozen_model_values,
    logit_vector,
    prompt_tokens,
    tiny_model,
)

from tcspec.circuits.graph import (
    GraphConfig,
    InterventionConfig,
    attribution_graph,
    run_interventions,
    score_graph,
)
from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.dictionaries.clt_views import layer_coder, layer_index, write_norms

torch.set_num_threads(1)
F = 24


def tiny_clt(activation="relu", skip=False, in_hook="ln2.hook_normalized", cross=True) -> CLT:
    """A float64 CLT over both layers with every parameter redrawn; `cross=False` zeroes the
    decoders from layer 0 into layer 1."""
    k = 6 if activation == "topk" else None
    cfg = CLTConfig(n_layers=LAYERS, d_model=D, d_sae=F, activation=activation, k=k,
                    in_hook=in_hook, skip=skip)  # fmt: skip
    clt = CLT(cfg, seed=0).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            scale = 0.3 if name.startswith("W_dec") or name == "W_enc" else 0.1
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if not cross:
            clt.W_dec[0][:, 1:] = 0
    return clt


# ------------------------------------------------------------------------------ views
@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_layer_view_encodes_as_the_clt_and_sums_its_decoders(activation):
    clt = tiny_clt(activation if activation != "jumprelu" else "relu")
    if activation == "jumprelu":
        cfg = CLTConfig(n_layers=LAYERS, d_model=D, d_sae=F, activation="jumprelu")
        clt = CLT(cfg, seed=0, threshold=0.05).double()
    x = torch.randn(5, 7, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in range(LAYERS):
        view = layer_coder(clt, i)
        assert view.cfg.layer == i and view.cfg.in_hook == f"blocks.{i}.ln2.hook_normalized"
        assert torch.equal(view.encode(x), clt.encode_layer(x, i))
        assert torch.equal(view.W_dec, clt.W_dec[i].sum(1))  # the whole write, [F, d]
        norms = write_norms(clt, i)
        assert norms.shape == (F, LAYERS - i)
        torch.testing.assert_close(norms.double().square().sum(1), clt.decoder_norms()[i] ** 2)
    with pytest.raises(ValueError, match="not block 5"):
        layer_index(clt, 5)


# ------------------------------------------------------------------------------ graphs
@pytest.mark.parametrize("arch", ["gpt2", "parallel"])
@pytest.mark.parametrize("zero_positions", [0, 1])
def test_graph_through_a_clt_is_exact(arch, zero_positions):
    model, clt, tokens = tiny_model(arch), tiny_clt(), prompt_tokens()
    graph = attribution_graph(model, clt, tokens, GraphConfig(zero_positions=zero_positions))
    assert graph.n_features == graph.n_active > 20 and set(graph.features[:, 0].tolist()) == {0, 1}
    assert graph.adjacency[graph.error_start : graph.logit_start].abs().sum() == 0
    assert exactness_error(model, clt, tokens, graph) < 1e-9  # rows + bias = every value
    s = score_graph(graph)
    assert 0.0 < s.replacement < 1.0 and 0.0 < s.completeness < 1.0


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_graph_through_a_skip_clt_reading_resid_mid_is_exact(activation):
    model, tokens = tiny_model("gpt2"), prompt_tokens()
    clt = tiny_clt(activation, skip=True, in_hook="hook_resid_mid")
    graph = attribution_graph(model, clt, tokens, GraphConfig(batch_size=7))
    if activation == "topk":
        assert graph.n_active == LAYERS * 6 * (SEQ - 1)
    assert exactness_error(model, clt, tokens, graph) < 1e-9


def test_without_cross_decoders_the_graph_is_the_per_layer_one():
    """Zero decoders from layer 0 into layer 1: the CLT is two per-layer transcoders."""
    model, clt, tokens = tiny_model("gpt2"), tiny_clt(cross=False), prompt_tokens()
    per_layer = {i: layer_coder(clt, i) for i in range(LAYERS)}
    a = attribution_graph(model, clt, tokens, GraphConfig())
    b = attribution_graph(model, per_layer, tokens, GraphConfig())
    assert torch.equal(a.features, b.features)
    torch.testing.assert_close(a.adjacency, b.adjacency, rtol=0, atol=1e-12)


def test_a_feature_edge_sums_its_decoders_finite_differences():
    """Adding h * a W_dec[0][f, m] to every mlp_out[m] of a frozen model written in the
    test moves each later pre-activation and logit by h times the feature's edge."""
    model, clt, tokens = tiny_model("gpt2"), tiny_clt(), prompt_tokens()
    graph = attribution_graph(model, clt, tokens, GraphConfig())
    views = {i: layer_coder(clt, i) for i in range(LAYERS)}  # the same pre-activations
    feats = graph.features.tolist()
    sources = [i for i, (li, p, f) in enumerate(feats) if li == 0][::5][:4]
    h, checked = 1e-3, 0
    for s in sources:
        _, p, f = feats[s]
        write = graph.activations[s] * clt.W_dec[0][f].detach()  # [L, d]: into each layer
        plus, minus = (push(model, views, tokens, p, sign * h * write) for sign in (1, -1))
        for t, (lt, pt, ft) in enumerate(feats):
            fd = (plus[0][lt][pt, ft] - minus[0][lt][pt, ft]) / (2 * h)
            assert float(graph.adjacency[t, s]) == pytest.approx(float(fd), abs=1e-8)
            checked += lt == 1 and float(fd) != 0.0
        for k in range(graph.n_logits):
            fd = ((plus[1] - minus[1]) @ logit_vector(graph, k)) / (2 * h)
            assert float(graph.adjacency[graph.logit_start + k, s]) == pytest.approx(
                float(fd), abs=1e-8
            )
    assert checked > 5


def push(model, views, tokens, p: int, write):
    """The frozen model's values with write[m] [d] added to mlp_out[m] at position p."""
    add = {m: torch.zeros(1, SEQ, D, dtype=torch.float64) for m in range(LAYERS)}
    for m in range(LAYERS):
        add[m][0, p] = write[m]
    return frozen_model_values(model, views, tokens, add, torch.zeros(1, SEQ, D).double())


def test_small_frozen_steer_through_a_clt_matches_the_prediction():
    model, clt, tokens = tiny_model("gpt2"), tiny_clt(skip=True), prompt_tokens()
    graph = attribution_graph(model, clt, tokens, GraphConfig())
    small = InterventionConfig(n_features=6, steer_factor=1 + 1e-5, freeze=True)
    got = run_interventions(model, clt, graph, small)
    assert got.baseline == pytest.approx(float(graph.logit_values @ graph.logit_probs))
    steer = [r for r in got.rows if r.mode == "steer"]
    assert len(steer) == 6
    for r in steer:
        assert r.actual == pytest.approx(r.predicted, rel=1e-3, abs=1e-12)
