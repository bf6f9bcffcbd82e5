"""Attribution primitives against brute force on a tiny random model.

The reference is the model itself with every norm scale and attention pattern frozen at its
value on the prompts (hooks on ``ln*.hook_scale`` and ``attn.hook_pattern``) and each MLP
replaced by its transcoder plus the (frozen) reconstruction error. That model is piecewise
linear, so a small perturbation of one node's output changes the root by exactly minus the
perturbation times the sum of the node's attributions over every path to the root.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.circuits.attribution import (
    Attributor,
    Node,
    check_transcoders,
    logit_diff_weights,
    total_feature_attributions,
    trace,
)
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.features.views import deembedding

torch.set_num_threads(1)
D, SEQ, N, D_SAE, VOCAB = 32, 5, 3, 16, 40
DELTA = 1e-5


def tiny_model(parallel: bool, fold_value_biases: bool = True) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D, d_head=16, n_heads=2, d_mlp=64, d_vocab=VOCAB, n_ctx=16,
        act_fn="gelu", normalization_type="LN", parallel_attn_mlp=parallel, seed=0,
        dtype=torch.float64,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    state = model.state_dict()
    for name, p in state.items():  # non-trivial norms and biases, so folding matters
        if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
            state[name] = 1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
        elif name.endswith((".b", "b_V", "b_O", "b_in", "b_out", "b_U")):
            state[name] = 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype)
        elif name.endswith(("W_E", "W_pos")):
            state[name] = torch.randn(p.shape, generator=g, dtype=p.dtype)
    model.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=True, center_unembed=True,
        fold_value_biases=fold_value_biases,
    )  # fmt: skip
    model.set_use_hook_mlp_in(True)
    return model.eval()


def tiny_coders(skip_layer: int | None = 0) -> dict[int, Coder]:
    out = {}
    g = torch.Generator().manual_seed(2)
    for layer in (0, 1):
        kind = "skip_transcoder" if layer == skip_layer else "transcoder"
        cfg = CoderConfig(kind=kind, d_in=D, d_out=D, d_sae=D_SAE, layer=layer,
                          in_hook=f"blocks.{layer}.ln2.hook_normalized",
                          out_hook=f"blocks.{layer}.hook_mlp_out")  # fmt: skip
        c = Coder(cfg, seed=layer).double()
        with torch.no_grad():
            for name, p in c.named_parameters():
                if name.startswith("b_") or name == "W_skip":
                    p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out[layer] = c
    return out


def tokens() -> torch.Tensor:
    return torch.randint(1, VOCAB, (N, SEQ), generator=torch.Generator().manual_seed(3))


class Frozen:
    """The model with scales, patterns and transcoder errors frozen at a trace's values,
    and hooks that perturb one node's output by the fraction ``delta``."""

    def __init__(self, model, coders, toks):
        self.model, self.coders, self.tokens = model, coders, toks
        names = lambda n: n.endswith(("hook_scale", "hook_pattern", "hook_mlp_out"))  # noqa: E731
        _, cache = model.run_with_cache(toks, names_filter=names)
        self.cache = {k: v.clone() for k, v in cache.items()}
        _, cin = model.run_with_cache(
            toks, names_filter=lambda n: n.endswith("ln2.hook_normalized")
        )
        self.error = {li: self.cache[f"blocks.{li}.hook_mlp_out"] - c(cin[f"blocks.{li}.ln2.hook_normalized"])[0]
                      for li, c in coders.items()}  # fmt: skip

    def run(self, node: Node | None = None, delta: float = 0.0) -> torch.Tensor:
        hooks = []
        for name, value in self.cache.items():
            if name.endswith("hook_scale"):
                hooks.append((name, lambda act, hook, v=value: v))
            elif name.endswith("hook_pattern"):
                v = value.clone()
                if (
                    node is not None
                    and node.kind == "head"
                    and name == f"blocks.{node.layer}.attn.hook_pattern"
                ):
                    v[:, node.index, node.pos, node.src] *= 1 - delta
                hooks.append((name, lambda act, hook, v=v: v))
        store = self.store = {}
        for li, c in self.coders.items():
            hooks.append(
                (
                    f"blocks.{li}.ln2.hook_normalized",
                    lambda act, hook, li=li: store.__setitem__(li, act),
                )
            )

            def mlp_out(act, hook, li=li, c=c):
                y, z = c(store[li])
                y = y + self.error[li]
                if node is not None and node.layer == li and node.kind == "feature":
                    y[:, node.pos] -= delta * z[:, node.pos, node.index, None] * c.W_dec[node.index]
                if node is not None and node.layer == li and node.kind == "skip":
                    y[:, node.pos] -= delta * store[li][:, node.pos] @ c.W_skip
                return y

            hooks.append((f"blocks.{li}.hook_mlp_out", mlp_out))
        if node is not None and node.kind == "embed":

            def scale_pos(act, hook):
                act = act.clone()
                act[:, node.pos] *= 1 - delta
                return act

            hooks += [("hook_embed", scale_pos), ("hook_pos_embed", scale_pos)]
        return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)


def level(node: Node) -> int:
    """Where a node writes into the residual stream (see attribution's reader indices)."""
    return {"feature": 2, "skip": 2, "head": 1, "embed": 0}[node.kind] + 2 * (node.layer or 0)


def path_sums(att: Attributor, root) -> tuple[dict, float]:
    """Every node's attribution summed over every path to ``root``, and the largest gap
    between a state's value and the sum of its parts. Nodes are visited once, downstream
    first, each with the sum of the states its paths reach it with (states are linear)."""
    sums = defaultdict(lambda: torch.zeros(N, dtype=torch.float64))
    states, gap, todo = {None: root}, 0.0, [None]
    while todo:
        todo.sort(key=lambda n: -level(n) if n is not None else -99)
        state = states.pop(todo.pop(0))
        contrib = att.contributions(state)
        gap = max(gap, float((contrib.total() + state.bias - att.value(state)).abs().max()))
        values, blocks = contrib.flat()
        for j in torch.nonzero(values.abs().amax(0) > 0).flatten().tolist():
            node = contrib.node_at(blocks, j)
            sums[node] += values[:, j]
            if node.expandable:
                child = att.child(state, node)
                gap = max(gap, float((att.value(child) - values[:, j]).abs().max()))
                if node in states:
                    states[node] = states[node] + child
                else:
                    states[node], _ = child, todo.append(node)
    return sums, gap


def brute_force_check(model, coders, root_fn, root_value_fn):
    toks = tokens()
    att = Attributor(model, coders, trace(model, toks, coders))
    frozen = Frozen(model, coders, toks)
    root = root_fn(att)
    base_logits = frozen.run()
    torch.testing.assert_close(base_logits, model(toks), rtol=0, atol=1e-10)
    base = root_value_fn(frozen, base_logits)
    torch.testing.assert_close(att.value(root), base, rtol=0, atol=1e-10)
    sums, gap = path_sums(att, root)
    assert gap < 1e-10  # every state's parts add up to its value
    kinds = {n.kind for n in sums}
    assert {"feature", "head", "embed"} <= kinds
    tested = 0
    for node, expected in sums.items():
        if node.kind == "head" and node.pos not in (SEQ - 1, 1):
            continue  # a sample of heads keeps the test fast
        changed = root_value_fn(frozen, frozen.run(node, DELTA))
        actual = (base - changed) / DELTA  # [n]
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
        tested += 1
    return tested, kinds


@pytest.mark.parametrize("parallel", [False, True])
def test_logit_root_matches_brute_force(parallel):
    model, coders = tiny_model(parallel), tiny_coders()
    a, b = [[3], [5], [7]], [[4], [6], [8, 9]]
    w = logit_diff_weights(VOCAB, a, b).double()

    def root_value(_frozen, logits):
        return (logits[:, -1] * w).sum(-1)

    tested, kinds = brute_force_check(
        model, coders, lambda att: att.logit_root(w, SEQ - 1), root_value
    )
    assert tested > 40 and "skip" in kinds


@pytest.mark.parametrize("parallel", [False, True])
def test_total_attributions_sum_every_path(parallel):
    """One backward pass through the frozen model gives each feature's sum over all paths."""
    model, coders, toks = tiny_model(parallel), tiny_coders(), tokens()
    tr = trace(model, toks, coders)
    att = Attributor(model, coders, tr)
    w = logit_diff_weights(VOCAB, [[3]] * N, [[4, 5]] * N).double()
    sums, _ = path_sums(att, att.logit_root(w, SEQ - 1))
    total = total_feature_attributions(model, coders, tr, w, SEQ - 1)
    features = [n for n in sums if n.kind == "feature"]
    assert len(features) > 10
    for node in features:
        torch.testing.assert_close(
            total[node.layer][:, node.pos, node.index], sums[node], rtol=0, atol=1e-10
        )
    reached = {(n.layer, n.pos, n.index) for n in features}
    for layer, t in total.items():  # features no path reaches have no total attribution
        for pos in range(SEQ):
            for i in range(D_SAE):
                if (layer, pos, i) not in reached:
                    assert float(t[:, pos, i].abs().max()) < 1e-12


@pytest.mark.parametrize("parallel", [False, True])
def test_feature_root_matches_brute_force(parallel):
    """Root: a layer-1 feature's activation at position 2, read from its transcoder input."""
    model, coders, toks = tiny_model(parallel), tiny_coders(), tokens()
    _, cache = model.run_with_cache(toks)
    z1 = coders[1].encode(cache["blocks.1.ln2.hook_normalized"])[:, 2]  # [n, d_sae]
    index = int((z1 > 0).all(0).nonzero()[0])  # a feature active on every prompt

    def root_value(frozen, _logits):
        return coders[1].encode(frozen.store[1][:, 2])[:, index]

    tested, _ = brute_force_check(
        model, coders, lambda att: att.feature_root(1, index, 2), root_value
    )
    assert tested > 10


@pytest.mark.parametrize("parallel", [False, True])
def test_parts_add_up_with_value_biases(parallel):
    """Unfolded value biases go to the bias terms; the split is still exact."""
    model, coders, toks = tiny_model(parallel, fold_value_biases=False), tiny_coders(None), tokens()
    assert model.blocks[0].attn.b_V.abs().sum() > 0
    att = Attributor(model, coders, trace(model, toks, coders))
    w = logit_diff_weights(VOCAB, [[1]] * N, [[2]] * N).double()
    root = att.logit_root(w, SEQ - 1)
    logits = model(toks)
    torch.testing.assert_close(
        att.value(root), logits[:, -1, 1] - logits[:, -1, 2], rtol=0, atol=1e-10
    )
    _, gap = path_sums(att, root)
    assert gap < 1e-10


def test_feature_to_feature_formula():
    """Direct attribution of a layer-0 feature to a layer-1 feature at one position is
    ``z_j * (f_dec_j . centre(f_enc_i)) / scale``."""
    model, coders, toks = tiny_model(False), tiny_coders(None), tokens()
    tr = trace(model, toks, coders)
    att = Attributor(model, coders, tr)
    i = int((tr.z[1][:, 3] > 0).all(0).nonzero()[0])
    contrib = att.contributions(att.feature_root(1, i, 3))
    f_enc = coders[1].W_enc[:, i]
    f_enc = f_enc - f_enc.mean()
    expected = tr.z[0][:, 3] * (coders[0].W_dec @ f_enc)[None] / tr.coder_scale[1][:, 3, None]
    torch.testing.assert_close(contrib.features[0], expected, rtol=0, atol=1e-12)


def test_deembedding_and_bad_input():
    model, coders = tiny_model(False), tiny_coders(None)
    d = coders[0].W_enc[:, 0]
    assert deembedding(model, d).shape == (VOCAB,)
    via = deembedding(model, d, head=(0, 1))
    W_OV = model.blocks[0].attn.W_V[1] @ model.blocks[0].attn.W_O[1]
    u = W_OV @ d
    torch.testing.assert_close(via, model.W_E @ (u - u.mean()))
    att = Attributor(model, coders, trace(model, tokens(), coders))
    with pytest.raises(ValueError, match="out of range"):
        att.feature_root(1, D_SAE, 0)
    with pytest.raises(ValueError, match="no transcoder"):
        att.feature_root(5, 0, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_diff_weights(VOCAB, [[VOCAB]], [[0]])
    sae = Coder(CoderConfig(kind="sae", d_in=D, d_out=D, d_sae=8, layer=0,
                            in_hook="blocks.0.hook_mlp_out", out_hook="blocks.0.hook_mlp_out"))  # fmt: skip
    with pytest.raises(ValueError, match="not a transcoder"):
        check_transcoders(model, {0: sae})
