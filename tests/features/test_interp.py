"""Feature statistics: streamed results equal a brute-force computation on tiny data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.features.files import load_stats, save_stats
from tcspec.features.stats import (
    BottomK,
    StatsConfig,
    feature_statistics,
    model_hook_inputs,
    quantiles_from_hist,
    token_r2,
)
from tcspec.features.views import add_input_invariant, deembedding, deembeddings, logit_effects

torch.set_num_threads(1)
V, D, T, ROWS, F = 40, 8, 10, 24, 32


def synthetic(seed: int = 0):
    """A random SAE, tokens [ROWS, T] with BOS 0 first (and two documents starting inside a
    row), and hook inputs that depend on the token (embedding) plus a little noise fixed by
    position."""
    g = torch.Generator().manual_seed(seed)
    coder = Coder(CoderConfig(kind="sae", d_in=D, d_out=D, d_sae=F), seed=seed)
    with torch.no_grad():
        coder.b_enc -= 0.3  # sparser
    emb = torch.randn(V, D, generator=g)
    noise = 0.3 * torch.randn(ROWS, T, D, generator=g)
    tokens = np.random.default_rng(seed).integers(1, V, size=(ROWS, T)).astype(np.int32)
    tokens[:, 0] = 0
    tokens[3, 4] = tokens[10, 7] = 0  # documents starting mid-row: BOS there too
    table = {tuple(r): i for i, r in enumerate(tokens.tolist())}

    def hook_inputs(batch: torch.Tensor) -> torch.Tensor:
        rows = [table[tuple(r)] for r in batch.tolist()]
        return emb[batch] + noise[rows]

    z = coder.encode(emb[torch.from_numpy(tokens).long()] + noise).detach()  # [ROWS, T, F]
    return coder, tokens, hook_inputs, z


CFG = StatsConfig(
    top_k=5,
    bands=3,
    per_band=2,
    context_window=2,
    n_bins=8,
    batch_contexts=5,
    chunk_elems=F * 7,
    exclude_tokens=(0,),
)


def keep(tokens: np.ndarray) -> torch.Tensor:
    """The counted positions under `exclude`: every non-BOS token. [ROWS, T] bool."""
    return torch.from_numpy(tokens != 0)


def test_bottom_k_keeps_the_smallest_keys_of_each_slot():
    g = torch.Generator().manual_seed(1)
    bk = BottomK(n_slots=7, k=3, flush_at=40)
    seen = []
    for step in range(25):
        slot = torch.randint(0, 7, (30,), generator=g)
        key = torch.rand(30, generator=g)
        pos = torch.arange(30) + 30 * step
        bk.offer(slot, key, pos, -key)
        seen.append((slot, key, pos))
    bk.flush()
    slot, key, pos = (torch.cat(c) for c in zip(*seen))
    for s in range(7):
        order = key[slot == s].argsort()[:3]
        assert torch.equal(bk.keys[s], key[slot == s][order])
        assert torch.equal(bk.pos[s], pos[slot == s][order])
        assert torch.equal(bk.val[s], -key[slot == s][order])


def test_bottom_k_leaves_empty_slots_marked():
    bk = BottomK(n_slots=3, k=2)
    bk.offer(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([9]), torch.tensor([2.0]))
    bk.flush()
    assert bk.pos.tolist() == [[-1, -1], [9, -1], [-1, -1]]


@pytest.fixture(scope="module")
def stats():
    coder, tokens, hook_inputs, z = synthetic()
    pages = [3, 5, 11]
    s = feature_statistics(coder, hook_inputs, tokens, V, CFG, choose_pages=lambda c, n: pages)
    return s, coder, tokens, hook_inputs, z


def test_counts_max_mean_match_brute_force(stats):
    s, _, tokens, _, z = stats
    zz = z[keep(tokens)]  # [n, F]: every BOS is skipped, at position 0 or inside a row
    assert s.n_tokens == ROWS * T - ROWS - 2
    assert torch.equal(s.tensors["count"], (zz > 0).sum(0))
    assert torch.allclose(s.tensors["max"], zz.max(0).values)
    mean = zz.sum(0) / (zz > 0).sum(0).clamp(min=1)
    assert torch.allclose(s.tensors["mean"], mean, atol=1e-5)
    assert torch.allclose(s.tensors["frequency"], (zz > 0).float().mean(0))


def test_top_k_examples_are_the_largest_activations(stats):
    s, _, tokens, _, z = stats
    zz = z[keep(tokens)]
    for f in range(F):
        vals = zz[:, f]
        expect = vals[vals > 0].sort(descending=True).values[: CFG.top_k]
        got = s.tensors["top_val"][f][: len(expect)]
        assert torch.allclose(got, expect)
        for p, v in zip(s.tensors["top_pos"][f].tolist(), s.tensors["top_val"][f].tolist()):
            if p >= 0:
                assert z[p // T, p % T, f].item() == pytest.approx(v)
                assert tokens[p // T, p % T] != 0


def test_histogram_and_bands_cover_every_activation(stats):
    s, _, tokens, _, z = stats
    zz = z[keep(tokens)]
    hist = s.tensors["hist"]
    assert torch.equal(hist.sum(1), s.tensors["count"])
    for f in range(F):
        nz = zz[:, f][zz[:, f] > 0]
        if len(nz) == 0:
            assert (s.tensors["band_pos"][f] == -1).all()
            continue
        vmax = nz.max()
        expect = torch.histc(nz, bins=CFG.n_bins, min=0, max=float(vmax))
        assert torch.equal(hist[f].float(), expect)
        for band in range(CFG.bands):
            lo, hi = band / CFG.bands * vmax, (band + 1) / CFG.bands * vmax
            in_band = ((nz > lo) & (nz <= hi)).sum().item()
            pos, val = s.tensors["band_pos"][f, band], s.tensors["band_val"][f, band]
            kept = pos[pos >= 0]
            assert len(kept) == min(in_band, CFG.per_band)
            assert len(set(kept.tolist())) == len(kept)  # without replacement
            for p, v in zip(kept.tolist(), val[pos >= 0].tolist()):
                assert z[p // T, p % T, f].item() == pytest.approx(v)
                assert lo - 1e-6 <= v <= hi + 1e-6


def test_quantiles_from_a_histogram():
    # 100 activations spread evenly over (0, 1]: 10 per bin of 10
    hist = torch.full((1, 10), 10, dtype=torch.int64)
    q = quantiles_from_hist(hist, torch.tensor([1.0]), (0.5, 0.9, 0.25))
    assert q[0].tolist() == pytest.approx([0.5, 0.9, 0.25])
    dead = quantiles_from_hist(torch.zeros(1, 10, dtype=torch.int64), torch.tensor([0.0]), (0.5,))
    assert dead.tolist() == [[0.0]]


def test_quantiles_are_within_a_bin_of_the_exact_ones(stats):
    s, _, tokens, _, z = stats
    zz = z[keep(tokens)]
    for f in range(F):
        nz = zz[:, f][zz[:, f] > 0]
        if len(nz) < 20:
            continue
        exact = np.quantile(nz.numpy(), CFG.quantiles, method="inverted_cdf")
        width = nz.max().item() / CFG.n_bins
        assert np.abs(s.tensors["quantiles"][f].numpy() - exact).max() <= width + 1e-6


def test_token_r2_matches_a_direct_out_of_fold_fit(stats):
    s, _, tokens, _, z = stats
    k = keep(tokens)
    tok = torch.from_numpy(tokens).long()[k]  # [n]
    for f in s.pages:
        act = z[..., f][k]  # [n]
        fold = (torch.arange(ROWS)[:, None].expand(ROWS, T) % 2)[k]
        res = tot = 0.0
        for b, a in ((0, 1), (1, 0)):
            ya, ta, yb, tb = act[fold == a], tok[fold == a], act[fold == b], tok[fold == b]
            mean_of = {t: ya[ta == t].mean().item() for t in ta.unique().tolist()}
            pred = torch.tensor([mean_of.get(t, ya.mean().item()) for t in tb.tolist()])
            res += ((yb - pred) ** 2).sum().item()
            tot += ((yb - yb.mean()) ** 2).sum().item()
        assert s.r2[f] == pytest.approx(1 - res / tot, rel=1e-5, abs=1e-6)


def test_token_r2_is_one_for_a_token_function_and_nan_for_a_dead_feature():
    V2 = 5
    n_tok = torch.tensor([[2.0, 2, 0, 0, 0], [1, 3, 0, 0, 0]])  # fold, token
    # feature 0: z = 1 on token 0, 2 on token 1 (a function of the token); feature 1: never
    S = torch.tensor([[[2.0, 4, 0, 0, 0], [0] * V2], [[1.0, 6, 0, 0, 0], [0] * V2]])
    Q = torch.tensor([[2.0 + 8, 0], [1.0 + 12, 0]])
    Z = torch.tensor([[6.0, 0], [7.0, 0]])
    r2 = token_r2(S.double(), Q.double(), Z.double(), n_tok.double())
    assert r2[0].item() == pytest.approx(1.0)
    assert math.isnan(r2[1].item())


def test_examples_carry_their_context_and_activations(stats):
    s, _, tokens, _, z = stats
    ex = s.examples
    assert set(ex["feature"]) <= set(s.pages)
    assert set(ex["section"]) == {"top", "band"}
    w = CFG.context_window
    for r in ex.itertuples():
        lo = max(r.col - w, 0)
        assert list(r.tokens) == tokens[r.row, lo : r.col + w + 1].tolist()
        assert r.tokens[r.center] == tokens[r.row, r.col]
        for i, a in enumerate(r.acts):
            col = lo + i
            if tokens[r.row, col] == 0:  # BOS: counted nowhere
                assert math.isnan(a)
            else:
                assert a == pytest.approx(z[r.row, col, r.feature].item(), abs=1e-5)
        assert r.acts[r.center] == pytest.approx(r.value, abs=1e-5)


def test_without_the_input_cache_results_are_identical(stats):
    s, coder, tokens, hook_inputs, _ = stats
    cfg = StatsConfig(**{**CFG.__dict__, "cache_mb": 0})
    s2 = feature_statistics(coder, hook_inputs, tokens, V, cfg, choose_pages=lambda c, n: s.pages)
    for k, v in s.tensors.items():
        assert torch.equal(v, s2.tensors[k]), k
    assert s.examples["value"].tolist() == s2.examples["value"].tolist()


def test_topk_coders_are_supported():
    coder, tokens, hook_inputs, _ = synthetic()
    topk = Coder(CoderConfig(kind="sae", d_in=D, d_out=D, d_sae=F, activation="topk", k=3))
    topk.load_state_dict(coder.state_dict())
    s = feature_statistics(topk, hook_inputs, tokens, V, CFG, choose_pages=lambda c, n: [1, 2])
    assert s.tensors["count"].sum().item() <= 3 * (ROWS * T - ROWS - 2)
    for r in s.examples.itertuples():
        assert r.acts[r.center] == pytest.approx(r.value, abs=1e-5)


def test_include_counts_every_position():
    """`data.bos: include`: BOS positions are counted like any other (position 0 too)."""
    coder, tokens, hook_inputs, z = synthetic()
    cfg = StatsConfig(**{**CFG.__dict__, "exclude_tokens": ()})
    s = feature_statistics(coder, hook_inputs, tokens, V, cfg)
    assert s.n_tokens == ROWS * T
    assert torch.equal(s.tensors["count"], (z > 0).sum((0, 1)))


def test_save_and_load_round_trip(stats, tmp_path):
    s = stats[0]
    s.meta = {"label": "sae-L0-single"}
    save_stats(s, tmp_path, [f"t{i}" for i in range(V)])
    back = load_stats(tmp_path)
    assert back.meta["label"] == "sae-L0-single" and back.meta["pages"] == s.pages
    for k, v in s.tensors.items():
        assert torch.equal(back.tensors[k], v)
    assert len(back.examples) == len(s.examples)
    assert list(back.examples["tokens"].iloc[0]) == list(s.examples["tokens"].iloc[0])
    with pytest.raises(ValueError, match="not a feature-statistics folder"):
        load_stats(tmp_path / "nothing")


# ------------------------------------------------------------------- with a real model
@pytest.fixture(scope="module")
def model():
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=T, d_head=8, n_heads=2, d_mlp=32, d_vocab=V,
        act_fn="gelu", normalization_type="LNPre", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def test_model_hook_inputs_read_the_hook(model):
    tokens = torch.randint(0, V, (3, T))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_normalized")
    got = model_hook_inputs(model, "blocks.1.ln2.hook_normalized")(tokens)
    assert torch.allclose(got, cache["blocks.1.ln2.hook_normalized"])


def test_logits_and_deembeddings_are_the_extremes_of_the_products(model):
    tc = Coder(CoderConfig(kind="transcoder", d_in=16, d_out=16, d_sae=12,
                           in_hook="blocks.1.ln2.hook_normalized", out_hook="blocks.1.hook_mlp_out",
                           layer=1))  # fmt: skip
    logits = logit_effects(tc, model, k=4, chunk_elems=V * 5)
    full = (tc.W_dec @ model.W_U).detach()  # [d_sae, d_vocab]
    assert torch.equal(logits["top_ids"], full.topk(4, dim=1).indices)
    assert torch.allclose(logits["bottom_vals"], full.topk(4, dim=1, largest=False).values)
    de = deembeddings(tc, model, k=4, chunk_elems=V * 5)
    W_enc = tc.W_enc.detach()
    full = (model.W_E @ (W_enc - W_enc.mean(0))).T.detach()  # [d_sae, d_vocab], centred (LNPre)
    assert torch.equal(de["top_ids"], full.topk(4, dim=1).indices)
    torch.testing.assert_close(de["top_vals"], full.topk(4, dim=1).values)
    raw = (model.W_E @ W_enc).T.detach()  # this random W_E is not centred: the centring counts
    assert not torch.equal(raw.topk(4, dim=1).indices, de["top_ids"])
    # the circuits' de-embedding of one feature (`circuits.deembed`) is the same function
    for f in range(12):
        one = deembedding(model, W_enc[:, f]).detach()  # [d_vocab]
        assert torch.equal(one.topk(4).indices, de["top_ids"][f])
    sae = Coder(
        CoderConfig(kind="sae", d_in=16, d_out=16, d_sae=12, out_hook="blocks.1.hook_mlp_out")
    )
    assert deembeddings(sae, model) is None
    post = Coder(CoderConfig(kind="transcoder", d_in=16, d_out=32, d_sae=12, layer=1,
                             in_hook="blocks.1.ln2.hook_normalized",
                             out_hook="blocks.1.mlp.hook_post"))  # fmt: skip
    through = logit_effects(post, model, k=2)
    full = (post.W_dec @ model.blocks[1].mlp.W_out @ model.W_U).detach()
    assert torch.equal(through["top_ids"], full.topk(2, dim=1).indices)


def test_statistics_of_a_transcoder_on_a_model(model):
    tc = Coder(CoderConfig(kind="transcoder", d_in=16, d_out=16, d_sae=24,
                           in_hook="blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out",
                           layer=0))  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, V, size=(12, T)).astype(np.int32)
    hook = model_hook_inputs(model, "blocks.0.ln2.hook_normalized")
    s = feature_statistics(tc, hook, tokens, V, CFG, choose_pages=lambda c, n: [0])
    add_input_invariant(s, tc, model, k=3)
    assert s.tensors["logit_top_ids"].shape == (24, 3)
    assert s.tensors["deembed_top_vals"].shape == (24, 3)
    _, cache = model.run_with_cache(torch.from_numpy(tokens).long())
    z = tc.encode(cache["blocks.0.ln2.hook_normalized"][keep(tokens)]).detach()
    assert torch.equal(s.tensors["count"], (z > 0).sum(0))
