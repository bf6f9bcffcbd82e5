"""Task studies on a tiny random model with a real greater-than tokenizer."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.circuits.attribution import Attributor, Node, trace
from tcspec.circuits.case_study import greater_than_study, studied_layer
from tcspec.circuits.deembed import year_deembeddings
from tcspec.circuits.faithfulness import ablation_faithfulness
from tcspec.circuits.keep_top_k import Hooks, keep_top_k, keep_top_k_summary, replaced_positions
from tcspec.circuits.paths import build_graph, find_paths
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.models.corpus import greater_than_sentence
from tcspec.models.greater_than import (
    greater_than_prompts,
    greater_than_root_weights,
    prob_diff,
    spread_yy,
    two_digit_token_ids,
    year_token_ids,
)
from tcspec.models.tokenizer import train_tokenizer

torch.set_num_threads(1)
D, D_SAE = 32, 48
YY = list(range(5, 96, 10))


@pytest.fixture(scope="module")
def gt_setup():
    return greater_than_setup()


def greater_than_setup():
    """A float64 2-layer model with a greater-than tokenizer, a transcoder per layer, the
    prompts of YY: (model, coders, tokens, start years, year token ids)."""
    tok = train_tokenizer([greater_than_sentence(y, (7 * y) % 100) for y in range(100)], 512)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D, d_head=8, n_heads=4, d_mlp=64, d_vocab=len(tok), n_ctx=32,
        act_fn="gelu", normalization_type="LN", seed=0, dtype=torch.float64,
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(model.state_dict(), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)  # fmt: skip
    model.set_use_hook_mlp_in(True)
    coders = {}
    for layer in (0, 1):
        c = Coder(CoderConfig(kind="transcoder", d_in=D, d_out=D, d_sae=D_SAE, layer=layer,
                              in_hook=f"blocks.{layer}.ln2.hook_normalized",
                              out_hook=f"blocks.{layer}.hook_mlp_out"), seed=layer).double()  # fmt: skip
        with torch.no_grad():
            c.b_enc.fill_(0.1)
        coders[layer] = c
    tokens, kept = greater_than_prompts(tok, YY)
    return model, coders, tokens, torch.tensor(kept), year_token_ids(tok)


def test_root_weights_and_years():
    yy = torch.tensor([5, 50, 97])
    ids = torch.arange(100) + 7
    w = greater_than_root_weights(yy, ids, 120)
    assert w.shape == (3, 120) and torch.allclose(w.sum(-1), torch.zeros(3), atol=1e-6)
    assert w[0, ids[6]] > 0 > w[0, ids[5]] and w[:, :7].abs().sum() == 0
    assert spread_yy(range(10), 3) == [0, 3, 6] and spread_yy([5, 1], 9) == [1, 5]


def test_two_digit_tokens(gt_setup):
    model, *_, years = gt_setup
    numbers = two_digit_token_ids(model.tokenizer)
    assert set(years.tolist()) < set(numbers.tolist())  # " 17" is a token of its own too
    assert all(model.tokenizer.decode([i]).strip().isdigit() for i in numbers.tolist())


def test_keep_top_k_ends(gt_setup):
    model, coders, tokens, yy, years = gt_setup
    curve, base = keep_top_k(model, coders[1], 1, tokens, yy, years, k_max=80)
    tc = curve[curve.method == "transcoder"].set_index("k")["prob_diff"]
    nr = curve[curve.method == "neurons"].set_index("k")["prob_diff"]
    assert len(tc) == D_SAE + 1 and len(nr) == 64 + 1  # k stops at the width
    assert tc[D_SAE] == pytest.approx(base["transcoder_last"], abs=1e-12)  # every feature kept
    assert nr[64] == pytest.approx(base["original"], abs=1e-12)  # every neuron kept
    # k = 0 leaves the transcoder's output bias alone at the last token
    b = coders[1].b_dec_out.detach().clone()

    def bias_only(act, hook):
        act = act.clone()
        act[:, -1] = b
        return act

    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", bias_only)])
    assert tc[0] == pytest.approx(float(prob_diff(logits[:, -1], yy, years).mean()), abs=1e-12)
    summary = keep_top_k_summary(curve, base)
    assert set(summary) >= {"k_transcoder", "k_neurons", "k_transcoder_ahead", "mean_gap"}


def test_year_deembedding_finds_a_planted_feature(gt_setup):
    model, coders, _, _, years = gt_setup
    model = HookedTransformer(model.cfg, tokenizer=model.tokenizer)
    model.load_state_dict(gt_setup[0].state_dict())
    coder = Coder(coders[0].cfg, seed=5).double()
    u = torch.randn(D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u - u.mean()
    with torch.no_grad():
        model.embed.W_E[years] += 3 * u / u.norm() * model.W_E.norm(dim=1).mean()
        coder.W_enc[:, 7] = u
        other = coder.W_enc[:, 8] - coder.W_enc[:, 8].mean()
        coder.W_enc[:, 8] = other - (other @ u) / (u @ u) * u  # blind to the planted direction
    frame = year_deembeddings(model, coder, 0, years, features=[7, 8], heads=[(0, 1)])
    assert list(frame.columns) == ["feature", "path", "year_fraction", "top_tokens"]
    direct = frame[frame.path == "direct"].set_index("feature")["year_fraction"]
    assert direct[7] == 1.0 and direct[8] < 0.5
    assert set(frame.path) == {"direct", "H0.1"}


def test_ablation_faithfulness_correlates(gt_setup):
    model, coders, tokens, yy, years = gt_setup
    att = Attributor(model, coders, trace(model, tokens, coders))
    w = greater_than_root_weights(yy, years, model.cfg.d_vocab).double()
    root = Node("logit", None, None, tokens.shape[1] - 1)
    state = att.logit_root(w, root.pos)
    graph = build_graph(att, root, state, find_paths(att, root, state, 2, 10, 15))
    real = ablation_faithfulness(model, att, graph, tokens, w, top=10)
    assert real["features"] == 10 and real["pearson"] is not None
    for row in real["rows"]:  # a last-layer feature reaches the root directly only
        if row["id"].startswith("F1."):
            assert row["predicted_total"] == pytest.approx(row["predicted"], abs=1e-10)
            assert row["actual"] == pytest.approx(row["predicted"], rel=0.35)
    # with the transcoders in place of the MLPs only norms, attention and gates respond
    spliced = ablation_faithfulness(model, att, graph, tokens, w, top=10, replacement=True)
    assert spliced["pearson_total"] > 0.9
    assert graph.checks["node_sum_gap"] < 1e-10


def test_study_writes_everything(gt_setup, tmp_path):
    model, coders, *_ = gt_setup
    summary = greater_than_study(model, coders, YY, tmp_path, iterations=2, branches=5,
                                 top_paths=8, keep_top_k_max=4, task_layer=0)  # fmt: skip
    for name in ("graph.json", "graph.png", "graph.svg", "report.md", "greater_than.csv",
                 "keep_top_k.csv", "keep_top_k.png", "deembedding.csv"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert graph["schema"] == "tcspec.circuit_graph/1" and graph["positions"][8] == "*"
    assert summary["layer"] == 0 and summary["prompts"] == len(YY)
    assert summary["faithfulness"]["node_sum_gap"] < 1e-10
    per_prompt = pd.read_csv(tmp_path / "greater_than.csv")
    assert list(per_prompt.yy) == YY
    assert summary["metric"]["original"] == pytest.approx(per_prompt.original.mean())
    curve = pd.read_csv(tmp_path / "keep_top_k.csv")
    assert set(curve.layer) == {0, 1} and len(curve) == 2 * 2 * 5  # layers x methods x k
    assert set(summary["keep_top_k"]["by_layer"]) == {0, 1}
    report = (tmp_path / "report.md").read_text()
    assert "Pearson" in report and "L@12 <- " in report
    assert studied_layer(coders, None) == 1 and studied_layer(coders, 5) == 1


# ------------------------------------------------------------- the paper's protocols, tiny GPT-2
@pytest.fixture(scope="module")
def gpt2_setup(tiny_gpt2_dir):
    """The tiny offline GPT-2 (2 layers, d_model 64) with a random transcoder per layer."""
    from tcspec.models.load import load_checkpoint

    model = load_checkpoint(tiny_gpt2_dir)
    d = model.cfg.d_model
    coders = {}
    for layer in (0, 1):
        cfg = CoderConfig(kind="transcoder", d_in=d, d_out=d, d_sae=40, layer=layer,
                          in_hook=f"blocks.{layer}.ln2.hook_normalized",
                          out_hook=f"blocks.{layer}.hook_mlp_out")  # fmt: skip
        c = Coder(cfg, seed=10 + layer)
        with torch.no_grad():
            c.b_enc.fill_(0.05)
        coders[layer] = c
    return model, coders


def test_notebook_prompts_and_start_years(gpt2_setup, tmp_path):
    from tcspec.models.greater_than import NOTEBOOK_TEMPLATE, NOTEBOOK_YY, prompt_text

    model, coders = gpt2_setup
    tok = model.tokenizer
    assert prompt_text(NOTEBOOK_TEMPLATE, 5) == "The war lasted from 1705 to 17"
    assert list(NOTEBOOK_YY) == list(range(1, 99))
    tokens, kept = greater_than_prompts(tok, NOTEBOOK_YY, template=NOTEBOOK_TEMPLATE)
    assert kept == list(range(1, 99)) and tokens.shape == (98, 9)
    assert (tokens[:, 0] == tok.bos_token_id).all()
    assert tok.decode(tokens[4, 1:]) == "The war lasted from 1705 to 17"
    # the default stays the toy corpus's sentence
    default, _ = greater_than_prompts(tok, [5])
    assert tok.decode(default[0, 1:]) == "The war lasted from the year 1705 to the year 17"
    summary = greater_than_study(model, coders, NOTEBOOK_YY, tmp_path, iterations=1, branches=3,
                                 top_paths=3, keep_top_k_max=2, template=NOTEBOOK_TEMPLATE)  # fmt: skip
    assert summary["yy"] == list(range(1, 99)) and summary["prompts"] == 98
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert graph["positions"] == [tok.bos_token, "The", " war", " lasted", " from", " 17", "*",
                                  " to", " 17"]  # fmt: skip
    assert list(pd.read_csv(tmp_path / "greater_than.csv").yy) == list(range(1, 99))


def _run(model, tokens, hooks=()):
    return model.run_with_hooks(tokens, fwd_hooks=list(hooks))


def _greater_than(model, tokens, yy, years, hooks=()):
    with torch.no_grad():
        return float(prob_diff(_run(model, tokens, hooks)[:, -1], yy, years).mean())


def test_keep_top_k_replaces_every_position_in_the_paper_protocol(gpt2_setup):
    model, coders = gpt2_setup
    tok, c = model.tokenizer, coders[1]
    years = year_token_ids(tok)
    tokens, kept = greater_than_prompts(
        tok, range(1, 99, 7), template="The war lasted from 17YY to 17"
    )
    yy = torch.tensor(kept)
    rank_tokens, _ = greater_than_prompts(
        tok, range(100), template="The war lasted from 17YY to 17"
    )
    curve, base = keep_top_k(model, c, 1, tokens, yy, years, k_max=40, positions="all",
                             rank_tokens=rank_tokens)  # fmt: skip
    tc = curve[curve.method == "transcoder"].set_index("k")
    nr = curve[curve.method == "neurons"].set_index("k")
    store = {}

    def keep(act, hook):
        store["x"] = act

    def splice(act, hook):  # the transcoder in place of the MLP at every position
        return c(store["x"])[0]

    spliced = [("blocks.1.ln2.hook_normalized", keep), ("blocks.1.hook_mlp_out", splice)]
    assert tc.prob_diff[40] == pytest.approx(
        _greater_than(model, tokens, yy, years, spliced), abs=1e-6
    )
    assert base["transcoder_all"] == pytest.approx(tc.prob_diff[40], abs=1e-6)
    assert nr.prob_diff[len(nr) - 1] != pytest.approx(base["original"], abs=1e-9)  # k_max < d_mlp

    def bias_everywhere(act, hook):  # k = 0: only the output bias, at every position
        return c.b_dec_out.detach().expand_as(act).clone()

    k0 = _greater_than(model, tokens, yy, years, [("blocks.1.hook_mlp_out", bias_everywhere)])
    assert tc.prob_diff[0] == pytest.approx(k0, abs=1e-6)

    def mlp_zero(act, hook):
        return torch.zeros_like(act)

    zero = _greater_than(model, tokens, yy, years, [("blocks.1.hook_mlp_out", mlp_zero)])
    assert base["mlp_zero_all"] == pytest.approx(zero, abs=1e-6)
    # ranked by variance at the last position over the ranking prompts (00..99)
    _, cache = model.run_with_cache(rank_tokens)
    z = c.encode(cache["blocks.1.ln2.hook_normalized"][:, -1])
    order = z.var(0, unbiased=False).argsort(descending=True, stable=True)
    assert tc["index"][1:11].astype(int).tolist() == order[:10].tolist()
    post = cache["blocks.1.mlp.hook_post"][:, -1].var(0, unbiased=False)
    assert int(nr["index"][1]) == int(post.argmax())
    # the last-position variant leaves every other position alone: at layer 0 (read by the
    # attention of layer 1 at later positions) the two protocols differ
    c0 = coders[0]
    every, _ = keep_top_k(model, c0, 0, tokens, yy, years, k_max=0, positions="all")
    last, base_last = keep_top_k(model, c0, 0, tokens, yy, years, k_max=0, positions="last")

    def bias_last(act, hook):
        act = act.clone()
        act[:, -1] = c0.b_dec_out.detach()
        return act

    def bias_all(act, hook):
        return c0.b_dec_out.detach().expand_as(act).clone()

    only_last = _greater_than(model, tokens, yy, years, [("blocks.0.hook_mlp_out", bias_last)])
    at_all = _greater_than(model, tokens, yy, years, [("blocks.0.hook_mlp_out", bias_all)])
    assert last.prob_diff[0] == pytest.approx(only_last, abs=1e-6)
    assert every.prob_diff[0] == pytest.approx(at_all, abs=1e-6)
    assert abs(only_last - at_all) > 1e-4
    assert set(base_last) == {"original", "transcoder_last", "mlp_zero_last"}


def test_keep_top_k_leaves_bos_alone_when_the_convention_excludes_it(gpt2_setup):
    model, coders = gpt2_setup
    tok = model.tokenizer
    c = Coder(coders[0].cfg, seed=3)
    with torch.no_grad():  # a large output bias: what BOS receives then matters
        c.b_dec_out.copy_(
            5 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
        )
    years = year_token_ids(tok)
    tokens, kept = greater_than_prompts(
        tok, [10, 40, 70], template="The war lasted from 17YY to 17"
    )
    yy = torch.tensor(kept)
    curve, _ = keep_top_k(model, c, 0, tokens, yy, years, k_max=0, positions="all",
                          replace_bos=False)  # fmt: skip

    def bias_after_bos(act, hook):
        act = act.clone()
        act[:, 1:] = c.b_dec_out.detach()
        return act

    want = _greater_than(model, tokens, yy, years, [("blocks.0.hook_mlp_out", bias_after_bos)])
    assert curve[curve.method == "transcoder"].prob_diff.iloc[0] == pytest.approx(want, abs=1e-7)
    # what the MLP writes under each protocol's hooks: BOS keeps the MLP's own output
    _, clean = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    mask = torch.zeros(c.cfg.d_sae)
    for replace_bos, first in ((False, 1), (True, 0)):
        where = replaced_positions("all", replace_bos, tokens.shape[1])
        with model.hooks(fwd_hooks=Hooks(c, 0, where).transcoder(mask)):
            _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
        out = cache["blocks.0.hook_mlp_out"]  # [n, seq, d]
        assert torch.equal(out[:, :first], clean["blocks.0.hook_mlp_out"][:, :first])
        assert torch.equal(out[:, first:], c.b_dec_out.detach().expand_as(out[:, first:]))
    last = replaced_positions("last", True, tokens.shape[1])
    assert (last.start, last.stop) == (tokens.shape[1] - 1, tokens.shape[1])


def test_mlp0_as_an_extended_embedding(gpt2_setup):
    from tcspec.circuits.deembed import deembedding_paths, mlp0_deembedding
    from tcspec.features.views import deembedding

    model, coders = gpt2_setup
    tc0, f_enc = coders[0], coders[1].W_enc[:, 3].detach()
    W_OV = model.blocks[1].attn.W_V[0] @ model.blocks[1].attn.W_O[0]
    u = W_OV @ f_enc
    scores = tc0.W_dec.detach() @ (u - u.mean())  # f_dec0_j . centred OV f_enc
    top = scores.topk(10)
    want = sum(
        v * deembedding(model, tc0.W_enc[:, j].detach()) for v, j in zip(top.values, top.indices)
    )
    got = mlp0_deembedding(model, tc0, f_enc, head=(1, 0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    w = f_enc - f_enc.mean()
    direct = tc0.W_dec.detach() @ w
    top = direct.topk(10)
    want = sum(
        v * deembedding(model, tc0.W_enc[:, j].detach()) for v, j in zip(top.values, top.indices)
    )
    torch.testing.assert_close(mlp0_deembedding(model, tc0, f_enc), want, atol=1e-5, rtol=1e-5)
    # MLP0 paths only where MLP0's output is upstream of the path
    names = [n for n, _, _ in deembedding_paths([(0, 1), (1, 0)], 1, mlp0=True)]
    assert names == ["direct", "H0.1", "H1.0", "mlp0+direct", "mlp0+H1.0"]
    assert [n for n, _, _ in deembedding_paths([(0, 1)], 0, mlp0=True)] == ["direct", "H0.1"]
    years = two_digit_token_ids(model.tokenizer)
    frame = year_deembeddings(model, coders[1], 1, years, [3], [(1, 0)], coder0=tc0)
    assert frame.path.tolist() == ["direct", "H1.0", "mlp0+direct", "mlp0+H1.0"]


def test_attention_candidates_ignore_the_bos_source(gpt2_setup):
    model, coders = gpt2_setup
    tok = model.tokenizer
    tokens, kept = greater_than_prompts(
        tok, [10, 40, 70], template="The war lasted from 17YY to 17"
    )
    years = year_token_ids(tok)
    att = Attributor(model, coders, trace(model, tokens, coders))
    w = greater_than_root_weights(torch.tensor(kept), years, model.cfg.d_vocab)
    root = Node("logit", None, None, 2)  # sources 0..2: the BOS heads rank among the top
    state = att.logit_root(w, root.pos)
    contrib = att.contributions(state)
    values, blocks = contrib.flat()
    mask = contrib.head_source_mask(blocks, 0)
    picked = {contrib.node_at(blocks, j) for j in torch.nonzero(mask).flatten().tolist()}
    assert all(n.kind == "head" and n.src == 0 for n in picked)
    assert len(picked) == model.cfg.n_layers * model.cfg.n_heads  # every head, source 0
    heads = lambda paths: [n for p in paths for n in p.nodes if n.kind == "head"]  # noqa: E731
    # branches and paths wide enough to keep every candidate with a nonzero attribution
    with_bos = find_paths(att, root, state, 2, 100, 200)
    assert any(n.src == 0 for n in heads(with_bos))
    paths = find_paths(att, root, state, 2, 100, 200, ignore_bos=True)
    assert heads(paths) and all(n.src != 0 for n in heads(paths))
    graph = build_graph(att, root, state, paths)
    assert graph.checks["node_sum_gap"] < 1e-4  # what is ignored stays in the error nodes


def test_the_paper_spec_asks_for_the_notebook_protocol():
    from pathlib import Path

    from tcspec.models.greater_than import NOTEBOOK_RANK_YY, NOTEBOOK_TEMPLATE, NOTEBOOK_YY
    from tcspec.spec import CircuitSpec, start_years
    from tcspec.spec.loader import load_spec

    root = Path(__file__).resolve().parents[2]
    (c,) = load_spec(root / "specs" / "paper" / "gpt2_small.yaml").circuits
    assert c.prompt == NOTEBOOK_TEMPLATE and c.study_layer == 10
    assert start_years(c.yy) == list(NOTEBOOK_YY) and c.prompts == len(NOTEBOOK_YY)
    assert start_years(c.keep_top_k_rank_yy) == list(NOTEBOOK_RANK_YY)
    assert c.keep_top_k_positions == "all" and c.mlp0_deembeddings
    # the quickstart keeps the toy corpus's sentence and the last-position variant
    (q,) = [c for c in load_spec(root / "specs" / "quickstart.yaml").circuits
            if c.task == "greater_than"]  # fmt: skip
    assert (q.prompt, q.yy, q.keep_top_k_positions, q.mlp0_deembeddings) == (
        None,
        None,
        "last",
        False,
    )
    with pytest.raises(ValueError, match="exactly one `YY`"):
        CircuitSpec(task="greater_than", dictionary={"name": "tc"}, prompt="from 17 to 17")
    assert start_years({"first": 3, "last": 5}) == [3, 4, 5] and start_years([7, 9]) == [7, 9]
