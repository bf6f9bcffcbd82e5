"""The greater-than study through a cross-layer transcoder, on the tiny float64 models of
tests/circuits/test_attribution.py and tests/circuits/test_circuit_study.py: a CLT feature is one source with
all its decoders (it writes layer l's MLP output and every later one's).

The brute-force reference is as in test_attribution.py: the model with norm scales and
attention patterns frozen and every MLP replaced by the CLT (computed here from the CLT's own
weights) plus its frozen error; perturbing one node's output by a small fraction changes the
root by minus that fraction times the node's attribution summed over every path."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import test_attribution as ta
import torch
from test_circuit_study import YY, greater_than_setup

from tcspec.circuits.attribution import (
    Attributor,
    Node,
    logit_diff_weights,
    total_feature_attributions,
    trace,
)
from tcspec.circuits.case_study import greater_than_study
from tcspec.circuits.faithfulness import ablation_faithfulness
from tcspec.circuits.keep_top_k import keep_top_k
from tcspec.circuits.paths import build_graph, find_paths
from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.models.greater_than import greater_than_root_weights, prob_diff

torch.set_num_threads(1)
F = 16


@pytest.fixture(scope="module")
def gt_setup():
    return greater_than_setup()


def random_clt(d: int, skip: bool = True, seed: int = 4) -> CLT:
    """A float64 ReLU CLT over blocks 0-1, every parameter (skip, biases) redrawn."""
    clt = CLT(CLTConfig(n_layers=2, d_model=d, d_sae=F, skip=skip)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            scale = 0.2 if name.startswith(("b_", "W_skip")) else 0.3
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return clt


def clt_writes(clt: CLT, xs: list[torch.Tensor], m: int, scale=None) -> torch.Tensor:
    """y_hat of layer m from the CLT's weights, inputs xs[l] [n, seq, d]; `scale = (l, s)`
    multiplies layer l's features by s [seq, F] in every write."""
    y = clt.b_dec[m] + (xs[m] @ clt.W_skip[m] if clt.cfg.skip else 0)
    for li in range(m + 1):
        z = clt.encode_layer(xs[li], li)  # [n, seq, F]
        if scale is not None and scale[0] == li:
            z = z * scale[1]
        y = y + z @ clt.W_dec[li][:, m - li]
    return y


def one_feature(node: Node, delta: float, seq: int) -> tuple[int, torch.Tensor]:
    s = torch.ones(seq, F, dtype=torch.float64)
    s[node.pos, node.index] = 1 - delta
    return node.layer, s


class FrozenCLT:
    """The model with scales and patterns (or scales only) frozen, each MLP the CLT plus its
    frozen error, and hooks perturbing one node's output by the fraction ``delta``."""

    def __init__(self, model, clt: CLT, toks, patterns: bool = True):
        self.model, self.clt, self.tokens = model, clt, toks
        frozen = ("hook_scale", "hook_pattern") if patterns else ("hook_scale",)
        keep = frozen + ("hook_mlp_out", "ln2.hook_normalized")
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith(keep))
        self.frozen = {k: v.clone() for k, v in cache.items() if k.endswith(frozen)}
        xs = [cache[f"blocks.{li}.ln2.hook_normalized"] for li in range(2)]
        self.error = [cache[f"blocks.{m}.hook_mlp_out"] - clt_writes(clt, xs, m) for m in range(2)]

    def run(self, node: Node | None = None, delta: float = 0.0) -> torch.Tensor:
        hooks, store = [], {}
        kind = node.kind if node is not None else None
        for name, value in self.frozen.items():
            v = value.clone()
            if kind == "head" and name == f"blocks.{node.layer}.attn.hook_pattern":
                v[:, node.index, node.pos, node.src] *= 1 - delta
            hooks.append((name, lambda act, hook, v=v: v))
        seq = self.tokens.shape[1]
        drop = one_feature(node, delta, seq) if kind == "feature" else None

        def mlp_out(act, hook, m):
            y = clt_writes(self.clt, [store[li] for li in range(m + 1)], m, drop)
            if kind == "skip" and node.layer == m:
                y[:, node.pos] -= delta * store[m][:, node.pos] @ self.clt.W_skip[m]
            return y + self.error[m]

        for li in range(2):
            hooks.append((f"blocks.{li}.ln2.hook_normalized",
                          lambda act, hook, li=li: store.__setitem__(li, act)))  # fmt: skip
            hooks.append((f"blocks.{li}.hook_mlp_out", lambda a, hook, m=li: mlp_out(a, hook, m)))
        if kind == "embed":

            def scale_pos(act, hook):
                act = act.clone()
                act[:, node.pos] *= 1 - delta
                return act

            hooks += [("hook_embed", scale_pos), ("hook_pos_embed", scale_pos)]
        return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)


# ------------------------------------------------------------------- attribution, exact
@pytest.mark.parametrize("parallel", [False, True])
def test_attribution_through_a_clt_matches_brute_force(parallel):
    """Every node's attribution to a logit-difference root, summed over every path, is the
    root's response to perturbing that node in the frozen model: a layer-0 feature's edge
    into a layer-1 node carries its layer-0 decoder only, into the root both (one source)."""
    model, toks = ta.tiny_model(parallel), ta.tokens()
    clt = random_clt(ta.D)
    att = Attributor(model, clt, trace(model, toks, clt))
    frozen = FrozenCLT(model, clt, toks)
    w = logit_diff_weights(ta.VOCAB, [[3], [5], [7]], [[4], [6], [8, 9]]).double()
    base_logits = frozen.run()
    torch.testing.assert_close(base_logits, model(toks), rtol=0, atol=1e-10)
    base = (base_logits[:, -1] * w).sum(-1)
    root = att.logit_root(w, ta.SEQ - 1)
    torch.testing.assert_close(att.value(root), base, rtol=0, atol=1e-10)
    sums, gap = ta.path_sums(att, root)
    assert gap < 1e-10  # every state's parts add up to its value, each child's value to its part
    assert {"feature", "head", "embed", "skip"} <= {n.kind for n in sums}
    tested = 0
    for node, expected in sums.items():
        if node.kind == "head" and node.pos not in (ta.SEQ - 1, 1):
            continue  # a sample of heads keeps the test fast
        changed = (frozen.run(node, ta.DELTA)[:, -1] * w).sum(-1)
        torch.testing.assert_close((base - changed) / ta.DELTA, expected, rtol=0, atol=1e-4)
        tested += node.kind == "feature" and node.layer == 0
    assert tested > 10  # layer-0 features, each writing both layers
    total = total_feature_attributions(model, clt, att.trace, w, ta.SEQ - 1)
    for node in (n for n in sums if n.kind == "feature"):
        got = total[node.layer][:, node.pos, node.index]
        torch.testing.assert_close(got, sums[node], rtol=0, atol=1e-10)


def test_a_layer_0_feature_reaches_the_root_with_its_summed_decoders():
    model, toks = ta.tiny_model(False), ta.tokens()
    clt = random_clt(ta.D)
    tr = trace(model, toks, clt)
    att = Attributor(model, clt, tr)
    root = att.logit_root(logit_diff_weights(ta.VOCAB, [[1]] * ta.N, [[2]] * ta.N).double(), 4)
    direct = att.contributions(root).features[0]  # [n, F]
    summed = clt.W_dec[0].sum(1)  # [F, d]: both layers' decoders
    torch.testing.assert_close(direct, tr.z[0][:, 4] * (root.v @ summed.T), rtol=0, atol=1e-12)
    i = int((tr.z[1][:, 4] > 0).all(0).nonzero()[0])  # a layer-1 feature on every prompt
    into_layer_1 = att.contributions(att.feature_root(1, i, 4)).features[0]
    v = att.feature_root(1, i, 4).v  # its read-out, pulled back to the residual stream
    own = clt.W_dec[0][:, 0]  # [F, d]: only layer 0's write is upstream of MLP 1's input
    torch.testing.assert_close(into_layer_1, tr.z[0][:, 4] * (v @ own.T), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ the study
def clt_of(coders) -> CLT:
    """The per-layer transcoders as a CLT with zero cross-layer decoders (their input
    pre-bias folded into b_enc)."""
    c0 = coders[0]
    clt = CLT(CLTConfig(n_layers=2, d_model=c0.cfg.d_in, d_sae=c0.cfg.d_sae)).double()
    with torch.no_grad():
        for i, c in coders.items():
            clt.W_enc[i].copy_(c.W_enc)
            clt.b_enc[i].copy_(c.b_enc - c.b_dec @ c.W_enc)
            clt.W_dec[i].zero_()
            clt.W_dec[i][:, 0].copy_(c.W_dec)
            clt.b_dec[i].copy_(c.b_dec_out)
    return clt


def spliced_metric(model, clt, tokens, yy, years, outputs, where, scale=None) -> torch.Tensor:
    """The per-prompt metric [n] with the MLP outputs of `outputs` replaced at `where` by
    the CLT's writes from the live inputs (`clt_writes`)."""
    store = {}

    def out(act, hook, m):
        act = act.clone()
        xs = [store[li][:, where] for li in range(m + 1)]
        act[:, where] = clt_writes(clt, xs, m, scale)
        return act

    hooks = [(f"blocks.{li}.ln2.hook_normalized",
              lambda act, hook, li=li: store.__setitem__(li, act)) for li in range(2)]  # fmt: skip
    hooks += [(f"blocks.{m}.hook_mlp_out", lambda a, hook, m=m: out(a, hook, m)) for m in outputs]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return prob_diff(logits[:, -1], yy, years)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_keep_top_k_through_a_clt_replaces_every_layer_its_features_write(gt_setup, positions):
    """Layer 0's features write layers 0 and 1: keep-top-k there replaces both MLP outputs
    (every feature kept: the CLT spliced at both; none kept: layer 1 keeps only its own
    features); layer 1's replace layer 1's, with layer 0's writes into it included."""
    model, _, tokens, yy, years = gt_setup
    clt = random_clt(model.cfg.d_model, skip=False)
    where = slice(-1, None) if positions == "last" else slice(None)

    def metric(outs, scale=None) -> float:
        return float(spliced_metric(model, clt, tokens, yy, years, outs, where, scale).mean())

    for layer, outs in ((0, (0, 1)), (1, (1,))):
        curve, base = keep_top_k(model, clt, layer, tokens, yy, years, k_max=F, positions=positions)
        tc = curve[curve.method == "transcoder"].set_index("k")["prob_diff"]
        assert len(tc) == F + 1
        assert tc[F] == pytest.approx(base[f"transcoder_{positions}"], abs=1e-12)
        assert tc[F] == pytest.approx(metric(outs), abs=1e-12)
        none = (layer, torch.zeros(F, dtype=torch.float64))
        assert tc[0] == pytest.approx(metric(outs, none), abs=1e-12)
        assert abs(tc[0] - tc[F]) > 1e-6  # the features matter


def test_a_clt_without_cross_decoders_studies_as_its_per_layer_transcoders(gt_setup, tmp_path):
    """Every output of the study, number for number, but keep-top-k at layer 0: there the
    CLT's layer-0 features write layer 1 too (with zero weights), so layer 1 is the CLT's."""
    model, coders, *_ = gt_setup
    kw = dict(iterations=2, branches=5, top_paths=8, keep_top_k_max=4, task_layer=1)
    per_layer = greater_than_study(model, coders, YY, tmp_path / "tc", **kw)
    cross = greater_than_study(model, clt_of(coders), YY, tmp_path / "clt", **kw)
    a, b = per_layer.pop("keep_top_k"), cross.pop("keep_top_k")  # layer 1's, and by layer
    assert cross == per_layer and a.pop("by_layer")[1] == b.pop("by_layer")[1] and a == b
    for name in ("graph.json", "greater_than.csv", "deembedding.csv"):
        assert (tmp_path / "clt" / name).read_text() == (tmp_path / "tc" / name).read_text()
    curves = [pd.read_csv(tmp_path / f / "keep_top_k.csv") for f in ("tc", "clt")]
    pd.testing.assert_frame_equal(*(c[c.layer == 1] for c in curves), check_exact=True)
    assert not curves[0][curves[0].layer == 0].equals(curves[1][curves[1].layer == 0])


def test_study_through_a_clt_is_exact_and_faithful(gt_setup, tmp_path):
    model, _, tokens, yy, years = gt_setup
    clt = random_clt(model.cfg.d_model)
    summary = greater_than_study(model, clt, YY, tmp_path, iterations=2, branches=5,
                                 top_paths=8, keep_top_k_max=4)  # fmt: skip
    assert summary["layer"] == 1 and set(summary["keep_top_k"]["by_layer"]) == {0, 1}
    assert summary["faithfulness"]["exact"] and summary["faithfulness"]["node_sum_gap"] < 1e-10
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert any(n["type"] == "feature" and n["layer"] == 0 for n in graph["nodes"])
    per_prompt = pd.read_csv(tmp_path / "greater_than.csv")
    both = spliced_metric(model, clt, tokens, yy, years, (0, 1), slice(None))
    assert per_prompt.all_transcoders_spliced.tolist() == both.tolist()
    # zero-ablating a feature in the replacement model (the CLT plus its error, norm scales
    # frozen) removes its write from both layers
    att = Attributor(model, clt, trace(model, tokens, clt))
    w = greater_than_root_weights(yy, years, model.cfg.d_vocab).double()
    root = Node("logit", None, None, tokens.shape[1] - 1)
    state = att.logit_root(w, root.pos)
    graph = build_graph(att, root, state, find_paths(att, root, state, 2, 10, 15))
    got = ablation_faithfulness(
        model, att, graph, tokens, w, top=10, replacement=True, freeze_scales=True
    )
    frozen = FrozenCLT(model, clt, tokens, patterns=False)
    base = (frozen.run()[:, -1] * w).sum(-1)
    nodes = {n.id: n for n in graph.nodes}
    assert got["features"] == 10 and {r["id"][:2] for r in got["rows"]} == {"F0", "F1"}
    for row in got["rows"]:
        ablated = (frozen.run(nodes[row["id"]], 1.0)[:, -1] * w).sum(-1)
        assert row["actual"] == pytest.approx(float((ablated - base).mean()), abs=1e-10), row
