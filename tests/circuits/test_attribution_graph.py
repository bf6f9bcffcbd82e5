"""Attribution graphs on tiny TransformerLens models with random transcoders (float64).

Exactness: a node's incoming edges plus its bias (the replacement model with every source
off) equal its value; edges equal finite differences of a frozen model written here
independently of the library; pruning and scores on a hand-made graph; interventions.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.circuits.graph import (
    GraphConfig,
    InterventionConfig,
    attribution_graph,
    graph_json,
    read_adjacency,
    run_interventions,
    score_graph,
    write_adjacency,
    write_graph_json,
)
from tcspec.circuits.graph.interventions import plot_interventions, write_interventions
from tcspec.circuits.graph.prune import graph_scores, node_influence, partial_influence, prune
from tcspec.circuits.graph.replacement import Scales, replacement_forward, run_prompt
from tcspec.dictionaries.coders import Coder, CoderConfig

torch.set_num_threads(1)
D, SEQ, D_SAE, VOCAB, LAYERS = 16, 6, 24, 30, 2
ARCHS = ["gpt2", "gpt2_folded", "parallel"]


def tiny_model(arch: str = "gpt2", **extra) -> HookedTransformer:
    kw = dict(
        n_layers=LAYERS, d_model=D, d_head=8, n_heads=2, d_mlp=32, d_vocab=VOCAB, n_ctx=16,
        act_fn="gelu", normalization_type="LN", parallel_attn_mlp=arch == "parallel", seed=0,
        dtype=torch.float64,
    )  # fmt: skip
    cfg = HookedTransformerConfig(**(kw | extra))
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    state = model.state_dict()
    for name, p in state.items():  # non-trivial norms and biases
        if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
            state[name] = 1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
        elif name.endswith((".b", "b_V", "b_O", "b_in", "b_out", "b_U", "b_Q", "b_K")):
            state[name] = 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype)
        elif name.endswith(("W_E", "W_pos")):
            state[name] = torch.randn(p.shape, generator=g, dtype=p.dtype)
    if arch == "gpt2_folded":
        model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                          center_unembed=True)  # fmt: skip
    else:
        model.load_state_dict(state)
    return model.eval()


def tiny_coders(activation: str = "relu", kinds=("skip_transcoder", "transcoder")) -> dict:
    out, g = {}, torch.Generator().manual_seed(2)
    for layer, kind in enumerate(kinds):
        cfg = CoderConfig(kind=kind, d_in=D, d_out=D, d_sae=D_SAE, layer=layer,
                          activation=activation, k=6 if activation == "topk" else None,
                          in_hook=f"blocks.{layer}.ln2.hook_normalized",
                          out_hook=f"blocks.{layer}.hook_mlp_out")  # fmt: skip
        c = Coder(cfg, seed=layer).double()
        with torch.no_grad():
            for name, p in c.named_parameters():
                if name.startswith("b_") or name == "W_skip":
                    p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out[layer] = c
    return out


def prompt_tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(3))


def ones_scales(model, run, batch: int) -> Scales:
    """`Scales` of all ones (the prompt's own values) for ``batch`` copies of ``run``."""
    kw = {"dtype": run.embed.dtype, "device": run.embed.device}
    return Scales(
        features={li: torch.ones(batch, *run.z[li].shape, **kw) for li in run.z},
        errors=torch.ones(batch, model.cfg.n_layers, run.n_pos, **kw),
        embed=torch.ones(batch, run.n_pos, **kw),
    )


def logit_vector(graph, k: int) -> torch.Tensor:
    if graph.config.target_tokens is not None:
        v = torch.zeros(VOCAB, dtype=torch.float64)
        a, b = graph.config.target_tokens
        v[a], v[b] = 1.0, -1.0
        return v
    v = torch.full((VOCAB,), -1.0 / VOCAB, dtype=torch.float64)
    v[graph.logit_tokens[k]] += 1.0
    return v


def exactness_error(model, coders, tokens, graph) -> float:
    """max |row sum + bias - value| over the feature and logit nodes."""
    run = run_prompt(model, coders, tokens)
    off = ones_scales(model, run, 1)
    zp = graph.config.zero_positions
    for li in run.z:  # the layers with features (a CLT: all of its layers)
        off.features[li][:, zp:] = 0
    off.errors[:, :, zp:] = 0
    off.embed[:] = 0
    pre0, logits0 = replacement_forward(model, coders, run, off)
    A, errs = graph.adjacency, []
    for i, (li, p, f) in enumerate(graph.features.tolist()):
        errs.append(float(A[i].sum() + pre0[li][0, p, f] - run.pre[li][p, f]))
        assert run.pre[li][p, f] == pytest.approx(float(graph.activations[i]))  # active: a = pre
    for k in range(graph.n_logits):
        value = logits0[0, -1] @ logit_vector(graph, k)
        errs.append(float(A[graph.logit_start + k].sum() + value - graph.logit_values[k]))
        assert graph.logit_values[k] == pytest.approx(
            float(run.logits[-1] @ logit_vector(graph, k))
        )
    return max(abs(e) for e in errs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("zero_positions", [0, 1])
def test_incoming_edges_plus_bias_equal_each_value(arch, zero_positions):
    model, coders, tokens = tiny_model(arch), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig(zero_positions=zero_positions))
    assert graph.n_features == graph.n_active > 20 and graph.n_logits >= 2
    assert graph.adjacency.shape == (graph.n_nodes,) * 2
    assert graph.adjacency[graph.error_start : graph.logit_start].abs().sum() == 0  # leaves
    assert graph.features[:, 1].min() >= zero_positions
    assert exactness_error(model, coders, tokens, graph) < 1e-9


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_exact_for_topk_plain_transcoders_and_a_layer_without_one(activation):
    model, tokens = tiny_model("gpt2"), prompt_tokens()
    coders = {1: tiny_coders(activation, ("transcoder", "transcoder"))[1]}  # layer 0: all error
    graph = attribution_graph(model, coders, tokens, GraphConfig(batch_size=7))
    assert set(graph.features[:, 0].tolist()) == {1}
    if activation == "topk":
        assert graph.n_active == 6 * (SEQ - 1)
    assert exactness_error(model, coders, tokens, graph) < 1e-9


def test_logit_difference_target():
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig(target_tokens=(3, 7)))
    assert graph.n_logits == 1 and graph.logit_tokens.tolist() == [3]
    assert graph.logit_probs.tolist() == [1.0]
    run = run_prompt(model, coders, tokens)
    assert float(graph.logit_values[0]) == pytest.approx(
        float(run.logits[-1, 3] - run.logits[-1, 7])
    )
    assert exactness_error(model, coders, tokens, graph) < 1e-9


def test_replacement_model_reproduces_the_model():
    model, coders, tokens = tiny_model("parallel"), tiny_coders(), prompt_tokens()
    run = run_prompt(model, coders, tokens)
    pre, logits = replacement_forward(model, coders, run, ones_scales(model, run, 2))
    assert (logits - model(tokens[None])).abs().max() < 1e-12
    for li in coders:
        assert (pre[li] - run.pre[li]).abs().max() < 1e-12


# ----------------------------------------------------------------------------- finite diffs
def frozen_model_values(model, coders, tokens, add_mlp, add_embed):
    """The frozen model written out directly: patterns and norm scales from a clean run,
    each MLP output = clean output - clean skip path + live skip path (+ ``add_mlp[l]``
    [seq, d]), the embedding + ``add_embed`` [seq, d]. Returns (pre-acts, last logits)."""
    _, cache = model.run_with_cache(tokens[None])
    store = {}
    hooks = [
        (n, lambda a, hook, v=cache[n]: v)
        for n in cache
        if n.endswith(("hook_scale", "hook_pattern"))
    ]
    hooks.append(("hook_embed", lambda a, hook: a + add_embed))
    for li in range(LAYERS):
        name = f"blocks.{li}.ln2.hook_normalized"
        hooks.append((name, lambda a, hook, li=li: store.__setitem__(li, a)))

        def mlp(a, hook, li=li):
            out = cache[f"blocks.{li}.hook_mlp_out"] + add_mlp[li]
            c = coders.get(li)
            if c is not None and c.cfg.skip:
                x0 = cache[f"blocks.{li}.ln2.hook_normalized"]
                out = out + (store[li] - x0) @ c.W_skip
            return out

        hooks.append((f"blocks.{li}.hook_mlp_out", mlp))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0, -1]
        pre = {li: c.pre_acts(store[li][0]) for li, c in coders.items()}
    return pre, logits


def test_edges_match_finite_differences_of_the_frozen_model():
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig())
    _, cache = model.run_with_cache(tokens[None])
    zero_mlp = {li: torch.zeros(1, SEQ, D, dtype=torch.float64) for li in range(LAYERS)}
    zero_embed = torch.zeros(1, SEQ, D, dtype=torch.float64)
    feats = graph.features.tolist()
    sources = [i for i, (li, p, f) in enumerate(feats) if li == 0][::7][:4]
    sources += [graph.error_index(0, 2), graph.error_index(0, SEQ - 1)]
    sources += [graph.token_start + 1, graph.token_start + SEQ - 1]
    h, checked = 1e-3, 0
    for s in sources:
        vec_mlp, vec_emb, li = dict(zero_mlp), zero_embed.clone(), None
        if s < graph.n_features:
            li, p, f = feats[s]
            vec = graph.activations[s] * coders[li].W_dec[f].detach()
        elif s < graph.token_start:
            li, p = divmod(s - graph.error_start, SEQ)
            x = cache[f"blocks.{li}.ln2.hook_normalized"][0, p]
            vec = cache[f"blocks.{li}.hook_mlp_out"][0, p] - coders[li](x)[0].detach()
        else:
            p = s - graph.token_start
            vec_emb[0, p] = model.W_E[tokens[p]].detach()
        if li is not None:
            vec_mlp[li] = zero_mlp[li].clone()
            vec_mlp[li][0, p] = vec
        plus = frozen_model_values(model, coders, tokens, _scale(vec_mlp, h), vec_emb * h)
        minus = frozen_model_values(model, coders, tokens, _scale(vec_mlp, -h), vec_emb * -h)
        for t, (lt, pt, ft) in enumerate(feats):
            fd = (plus[0][lt][pt, ft] - minus[0][lt][pt, ft]) / (2 * h)
            assert float(graph.adjacency[t, s]) == pytest.approx(float(fd), abs=1e-8)
            checked += float(fd) != 0.0
        for k in range(graph.n_logits):
            v = logit_vector(graph, k)
            fd = ((plus[1] - minus[1]) @ v) / (2 * h)
            assert float(graph.adjacency[graph.logit_start + k, s]) == pytest.approx(
                float(fd), abs=1e-8
            )
    assert checked > 20  # the skip path and attention carry edges to later features


def _scale(d: dict, h: float) -> dict:
    return {k: v * h for k, v in d.items()}


# ----------------------------------------------------------------------------- cap, refusals
def test_max_feature_nodes_keeps_the_rows_of_the_most_influential():
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    full = attribution_graph(model, coders, tokens, GraphConfig(batch_size=4))
    capped = attribution_graph(
        model, coders, tokens, GraphConfig(batch_size=4, max_feature_nodes=9)
    )
    assert capped.n_features == 9 and capped.n_active == full.n_active
    assert capped.backward_passes == -(-full.n_logits // 4) + 3  # logits, then 4 + 4 + 1
    idx = [full.features.tolist().index(f) for f in capped.features.tolist()]
    cols = idx + list(range(full.error_start, full.logit_start))
    for r_cap, r_full in enumerate(idx):
        assert torch.equal(capped.adjacency[r_cap, : len(cols)], full.adjacency[r_full, cols])
    logit_rows = full.adjacency[full.logit_start :, : full.logit_start]
    first = partial_influence(logit_rows, torch.full((full.n_logits,), -1), full.logit_probs)
    best = int(first[: full.n_features].argmax())
    assert best in idx


def replay_schedule(full, cap: int, batch: int, update_interval: int) -> list[int]:
    """circuit-tracer's capped schedule replayed on the rows of the uncapped graph ``full``:
    rank the unvisited features by partial influence through the rows visited so far, take
    the next ``update_interval * batch`` in rank order, repeat. The visited features, sorted."""
    n_f, k = full.n_features, full.n_logits
    logit_rows = full.adjacency[full.logit_start :, : full.logit_start]
    feature_rows = full.adjacency[:n_f, : full.logit_start]
    visited, order = torch.zeros(n_f, dtype=torch.bool), []
    while len(order) < cap:
        matrix = torch.cat([logit_rows, feature_rows[order]])
        nodes = torch.tensor([-1] * k + order, dtype=torch.long)
        infl = partial_influence(matrix, nodes, full.logit_probs)
        rank = torch.argsort(infl[:n_f], descending=True)
        pending = rank[~visited[rank]][: min(update_interval * batch, cap - len(order))]
        order += pending.tolist()
        visited[pending] = True
    return sorted(order)


@pytest.mark.parametrize("batch, update_interval, cap", [(8, 1, 20), (8, 4, 20), (4, 5, 20)])
def test_capped_graph_follows_circuit_tracers_schedule(batch, update_interval, cap):
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    full = attribution_graph(model, coders, tokens, GraphConfig(batch_size=batch))
    # on this graph the schedule decides: ranking after every batch keeps other features
    assert replay_schedule(full, 20, 8, 1) != replay_schedule(full, 20, 8, 4)
    cfg = GraphConfig(batch_size=batch, update_interval=update_interval, max_feature_nodes=cap)
    capped = attribution_graph(model, coders, tokens, cfg)
    chosen = [full.features.tolist().index(f) for f in capped.features.tolist()]
    assert chosen == replay_schedule(full, cap, batch, update_interval)
    assert capped.backward_passes == -(-full.n_logits // batch) + sum(
        -(-min(update_interval * batch, cap - i) // batch)
        for i in range(0, cap, update_interval * batch)
    )


@pytest.mark.parametrize(
    "extra, coder_kinds, match",
    [
        (
            {"use_normalization_before_and_after": True, "normalization_type": "RMS"},
            None,
            "post-norm",
        ),
        ({"output_logits_soft_cap": 30.0}, None, "softcaps its logits"),
        ({}, ("sae", "transcoder"), "not a transcoder"),
    ],
)
def test_refuses_what_it_cannot_trace(extra, coder_kinds, match):
    model = tiny_model("gpt2", **extra)
    coders = tiny_coders(kinds=coder_kinds or ("skip_transcoder", "transcoder"))
    with pytest.raises(ValueError, match=match):
        attribution_graph(model, coders, prompt_tokens(), GraphConfig())
    with pytest.raises(ValueError, match="edge_threshold"):
        GraphConfig(edge_threshold=1.5)


# ----------------------------------------------------------------------------- pruning
def test_prune_and_scores_on_a_hand_made_graph():
    # nodes [f0, f1 | err | tok | logit]; tok -> f0 (2), tok -> f1 (1), f0 -> logit (3),
    # err -> logit (-1)
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[0, 3], A[1, 3], A[4, 0], A[4, 2] = 2.0, 1.0, 3.0, -1.0
    w = torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    s = graph_scores(A, w, slice(2, 3), slice(3, 4))
    assert s.replacement == pytest.approx(0.75)  # tok .75 / (tok .75 + err .25)
    assert s.completeness == pytest.approx(2.5 / 2.75)
    p = prune(A, w, n_features=2, n_keep_last=2, node_threshold=0.8, edge_threshold=0.98)
    assert p.influence.tolist() == pytest.approx([0.75, 0.0, 0.25, 0.75, 0.0])
    assert p.node_mask.tolist() == [True, False, False, True, True]
    assert p.edge_mask.nonzero().tolist() == [[0, 3], [4, 0]]


def test_scores_of_a_real_graph_are_fractions():
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig())
    s = score_graph(graph)
    assert 0.0 < s.replacement < 1.0 and 0.0 < s.completeness < 1.0


# ----------------------------------------------------------------------------- interventions
def test_small_frozen_steer_matches_the_prediction_and_real_rows_correlate(tmp_path):
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig())
    small = InterventionConfig(n_features=6, steer_factor=1 + 1e-5, freeze=True)
    got = run_interventions(model, coders, graph, small)
    steer = [r for r in got.rows if r.mode == "steer"]
    assert len(steer) == 6 and {r.layer for r in steer} == {0, 1}
    for r in steer:
        assert r.actual == pytest.approx(r.predicted, rel=1e-3, abs=1e-12)
    assert any(r.predicted != r.predicted_direct for r in steer)  # paths through features
    real = run_interventions(model, coders, graph, InterventionConfig(n_features=6))
    assert len(real.rows) == 12 and {r.mode for r in real.rows} == {"ablate", "steer"}
    assert real.baseline == pytest.approx(float(graph.logit_values @ graph.logit_probs))
    assert real.correlation > 0.3
    runs = {"live": real, "frozen": got}
    table = write_interventions(runs, tmp_path / "interventions.csv").read_text().splitlines()
    assert table[0].startswith("model,layer,pos,feature,mode,") and len(table) == 25
    assert sum(line.startswith("frozen,") for line in table) == 12
    png = plot_interventions(runs, tmp_path / "interventions.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- files
def test_graph_json_follows_the_schema(tmp_path):
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig(), prompt="a prompt")
    path = write_graph_json(graph, tmp_path / "p0.json", scan="toy-tc")
    data = json.loads(path.read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert meta["slug"] == "p0" and meta["scan"] == "toy-tc" and meta["schema_version"] == 1
    assert meta["prompt"] == "a prompt" and len(meta["prompt_tokens"]) == SEQ
    assert 0 <= meta["scores"]["replacement"] <= 1 and 0 <= meta["scores"]["completeness"] <= 1
    assert data["qParams"]["linkType"] == "both"
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert len(nodes) == len(data["nodes"])
    required = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"}
    assert all(required <= set(n) for n in nodes.values())
    types = {n["feature_type"] for n in nodes.values()}
    assert types == {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
    index = {}
    for i, (li, p, f) in enumerate(graph.features.tolist()):
        index[f"{li}_{f}_{p}"] = i
    for li in range(LAYERS):
        for p in range(SEQ):
            index[f"{li}_-1_{p}"] = graph.error_index(li, p)
    for p, t in enumerate(tokens.tolist()):
        index[f"E_{t}_{p}"] = graph.token_start + p
        assert nodes[f"E_{t}_{p}"]["layer"] == "E" and nodes[f"E_{t}_{p}"]["feature"] == p
    for k, t in enumerate(graph.logit_tokens.tolist()):
        n = nodes[f"{LAYERS + 1}_{t}_{SEQ - 1}"]
        index[n["node_id"]] = graph.logit_start + k
        assert n["is_target_logit"] == (k == 0) and n["influence"] is None
        assert n["jsNodeId"] == f"L_{t}-{SEQ - 1}" and n["clerp"].startswith("Output")
    for n in nodes.values():
        if n["feature_type"] == "cross layer transcoder":
            li, f, _ = map(int, n["node_id"].split("_"))
            assert n["feature"] == (li + f) * (li + f + 1) // 2 + f and n["layer"] == str(li)
        if n["feature_type"] == "mlp reconstruction error":
            assert n["feature"] == -1
    assert data["links"]
    for link in data["links"]:
        t, s = index[link["target"]], index[link["source"]]
        assert link["weight"] == float(graph.adjacency[t, s])
    assert graph_json(graph, "p0", scan="toy-tc") == data


def test_adjacency_file_round_trips_bitwise(tmp_path):
    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig(max_feature_nodes=12))
    back = read_adjacency(write_adjacency(graph, tmp_path / "adjacency.safetensors"))
    assert back["adjacency"].dtype == torch.float64
    for name in ("adjacency", "features", "activations", "tokens", "logit_tokens", "logit_probs"):
        assert torch.equal(back[name], getattr(graph, name))
    assert dataclasses.asdict(graph.config)["max_feature_nodes"] == 12


def test_profile_says_where_the_influence_lies():
    from tcspec.circuits.graph import agreement, profile

    model, coders, tokens = tiny_model("gpt2"), tiny_coders(), prompt_tokens()
    graph = attribution_graph(model, coders, tokens, GraphConfig())
    p = profile(graph)
    assert len(p.layer_share) == 2 and sum(p.layer_share) == pytest.approx(1.0)
    assert p.mean_layer == pytest.approx(p.layer_share[1])  # 0 * share0 + 1 * share1
    assert 0 < p.error_share < 1 and len(p.top_positions) == 3
    infl = node_influence(graph.adjacency, graph.logit_weights())
    tokens_infl = infl[graph.token_start : graph.logit_start]
    assert set(p.top_positions) == set(tokens_infl.topk(3).indices.tolist())
    assert agreement(p, p) == (1.0, 1.0)
