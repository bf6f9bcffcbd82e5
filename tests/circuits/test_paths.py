"""Greedy path search and graph assembly on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from test_attribution import SEQ, VOCAB, N, tiny_coders, tiny_model, tokens

from tcspec.circuits.attribution import Attributor, Node, logit_diff_weights, trace
from tcspec.circuits.paths import build_graph, find_paths

torch.set_num_threads(1)


def prepare(parallel=False, toks=None):
    model, coders = tiny_model(parallel), tiny_coders()
    toks = tokens() if toks is None else toks
    att = Attributor(model, coders, trace(model, toks, coders))
    w = logit_diff_weights(VOCAB, [[3]] * len(toks), [[4]] * len(toks)).double()
    return att, Node("logit", None, None, SEQ - 1), att.logit_root(w, SEQ - 1)


def chained(att, state, nodes):
    """Attribution of the last of ``nodes`` along the path, by pulling back node by node."""
    for node in nodes[:-1]:
        state = att.child(state, node)
    return att.contribution(state, nodes[-1])


@pytest.mark.parametrize("parallel", [False, True])
def test_search_keeps_top_paths(parallel):
    att, root, state = prepare(parallel)
    paths = find_paths(att, root, state, iterations=3, branches=4, top_paths=6)
    assert 6 < len(paths) <= 18
    assert all(p.nodes[0] == root and 2 <= len(p.nodes) <= 4 for p in paths)
    scores = [abs(p.attribution) for p in paths]
    assert scores == sorted(scores, reverse=True)
    for p in paths:  # each path's attribution is the chained pullback, averaged over prompts
        assert p.attribution == pytest.approx(
            float(chained(att, state, p.nodes[1:]).mean()), abs=1e-10
        )
    # the first iteration keeps the root's strongest candidates
    values, blocks = att.contributions(state).flat()
    best = values.mean(0).abs().topk(4).indices.tolist()
    firsts = {p.nodes[1] for p in paths if len(p.nodes) == 2}
    assert firsts <= {att.contributions(state).node_at(blocks, j) for j in best}


def test_batched_search_averages_prompts():
    toks = tokens()
    att, root, state = prepare(toks=toks)
    paths = find_paths(att, root, state, iterations=2, branches=3, top_paths=5)
    singles = [prepare(toks=toks[i : i + 1]) for i in range(N)]
    for p in paths:
        per_prompt = [float(chained(a, s, p.nodes[1:])[0]) for a, _, s in singles]
        assert p.attribution == pytest.approx(sum(per_prompt) / N, abs=1e-10)


@pytest.mark.parametrize("parallel", [False, True])
def test_graph_is_exact_dag(parallel):
    att, root, state = prepare(parallel)
    paths = find_paths(att, root, state, iterations=3, branches=5, top_paths=8)
    graph = build_graph(att, root, state, paths)
    assert graph.checks["node_sum_gap"] < 1e-10 and graph.checks["completeness_gap"] < 1e-10
    torch.testing.assert_close(graph.nodes[root], att.value(state))
    data = json.loads(json.dumps(graph.to_json(positions=[f"t{i}" for i in range(SEQ)])))
    ids = {n["id"] for n in data["nodes"]}
    assert len(ids) == len(data["nodes"]) and data["root"] in ids
    assert all(e["source"] in ids and e["target"] in ids for e in data["edges"])
    incoming = {}
    for e in data["edges"]:
        incoming[e["target"]] = incoming.get(e["target"], 0.0) + e["weight"]
    by_id = {n["id"]: n for n in data["nodes"]}
    for target, total in incoming.items():  # kept edges + error nodes = attribution
        assert total == pytest.approx(by_id[target]["attribution"], abs=1e-9)
    # acyclic, and every node reaches the root
    out = {}
    for e in data["edges"]:
        out.setdefault(e["source"], []).append(e["target"])

    def reaches_root(i, seen=()):
        assert i not in seen
        return i == data["root"] or any(reaches_root(j, seen + (i,)) for j in out.get(i, []))

    assert all(reaches_root(i) for i in ids)
    types = {n["type"] for n in data["nodes"]}
    assert {"logit", "error_transcoder", "error_bias", "error_unexplained"} <= types


def test_full_expansion_leaves_nothing_unexplained():
    att, root, state = prepare()
    n_candidates = att.contributions(state).flat()[0].shape[1]
    paths = find_paths(
        att, root, state, iterations=1, branches=n_candidates, top_paths=n_candidates
    )
    graph = build_graph(att, root, state, paths)
    rest = graph.errors[("error_unexplained", root)]
    assert float(rest.abs().max()) < 1e-10


def test_bad_settings():
    att, root, state = prepare()
    with pytest.raises(ValueError, match="branches"):
        find_paths(att, root, state, iterations=2, branches=0, top_paths=3)
