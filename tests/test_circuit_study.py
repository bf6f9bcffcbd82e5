"""Task studies on a tiny random model with a real greater-than tokenizer."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.circuits.attribution import Attributor, Node, trace
from tcspec.circuits.greater_than import (
    greater_than_prompts,
    greater_than_root_weights,
    prob_diff,
    spread_yy,
    two_digit_token_ids,
    year_token_ids,
)
from tcspec.circuits.deembed import year_deembeddings
from tcspec.circuits.faithfulness import ablation_faithfulness
from tcspec.circuits.keep_top_k import keep_top_k, keep_top_k_summary
from tcspec.circuits.paths import build_graph, find_paths
from tcspec.circuits.study import greater_than_study, studied_layer
from tcspec.coders import Coder, CoderConfig
from tcspec.models.corpus import greater_than_sentence
from tcspec.models.tokenizer import train_tokenizer
from tcspec.tasks.circuits import check_config

torch.set_num_threads(1)
D, D_SAE = 32, 48
YY = list(range(5, 96, 10))


@pytest.fixture(scope="module")
def gt_setup():
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


def test_config_errors_name_the_field():
    base = dict(task="greater_than", dictionary={"name": "tc"}, prompts=8, iterations=2, branches=3,
                top_paths=4, keep_top_k=4, coders=[dict(train="t", member="m", layer=0, kind="transcoder")])  # fmt: skip
    check_config(base)
    with pytest.raises(ValueError, match=r"circuits.dictionary `tc`: is a sae"):
        check_config(base | {"coders": [dict(train="t", member="m", layer=0, kind="sae")]})
    with pytest.raises(ValueError, match=r"several dictionaries at layer\(s\) \[0\]"):
        check_config(base | {"coders": base["coders"] * 2})
    with pytest.raises(ValueError, match="circuits.task"):
        check_config(base | {"task": "ioi"})
    with pytest.raises(ValueError, match="selects no trained dictionary"):
        check_config(base | {"coders": []})
