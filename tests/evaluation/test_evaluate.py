"""Spliced evaluation on a tiny random HookedTransformer, against real forward passes."""

import warnings

import numpy as np
import pytest
import torch

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.evaluation.metrics import next_token_ce
from tcspec.evaluation.spliced import Splice, evaluate_coders, evaluate_splices, hook_means

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.utilities.addmm import batch_addmm

torch.set_num_threads(1)
ATOL = 1e-5


def transcoder(layer: int, d_sae: int, seed: int = 0, **weights) -> Coder:
    """A transcoder at `layer` (full hook names); `weights` overwrite its initial ones."""
    cfg = CoderConfig(
        "transcoder", 32, 32, d_sae, in_hook=f"blocks.{layer}.ln2.hook_normalized",
        out_hook=f"blocks.{layer}.hook_mlp_out", layer=layer,
    )  # fmt: skip
    return _set(Coder(cfg, seed=seed), weights)


def _set(coder: Coder, weights: dict[str, torch.Tensor]) -> Coder:
    with torch.no_grad():
        for name, value in weights.items():
            getattr(coder, name).copy_(value)
    return coder


class MLPCoder(Coder):
    """The block's own MLP as a transcoder (d_sae = d_mlp, the MLP's activation function):
    y_hat is exactly hook_mlp_out."""

    def __init__(self, model: HookedTransformer, layer: int):
        mlp = model.blocks[layer].mlp
        super().__init__(transcoder(layer, 64).cfg)
        _set(self, dict(W_enc=mlp.W_in, b_enc=mlp.b_in, W_dec=mlp.W_out, b_dec_out=mlp.b_out))
        self.act_fn = mlp.act_fn

    def pre_acts(self, x):
        return batch_addmm(self.b_enc, self.W_enc, x)  # the MLP's own op: [..., d_mlp]

    def activate(self, pre):
        return self.act_fn(pre)

    def decode(self, z, x=None):
        return batch_addmm(self.b_dec_out, self.W_dec, z)  # [..., d_model]


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_mlp=64, n_heads=2, d_head=16, n_ctx=16, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = HookedTransformer(cfg)
    return m.eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(1))


def perfect_transcoder(model, layer) -> Coder:
    return MLPCoder(model, layer)


def zero_transcoder(layer) -> Coder:
    return transcoder(layer, 16, seed=layer, W_dec=torch.zeros(16, 32))


def random_transcoder(layer, seed=0) -> Coder:
    g = torch.Generator().manual_seed(seed)
    return transcoder(layer, 48, seed=seed, b_enc=torch.randn(48, generator=g) / 4)


def identity_sae(hook: str, layer: int, d: int) -> Coder:
    """relu(x) - relu(-x) = x exactly: z = relu([x, -x]), y_hat = z [I; -I].
    `hook` is relative to the block."""
    eye = torch.eye(d)
    W_enc = torch.cat([eye, -eye], dim=1)  # [d, 2d]
    cfg = CoderConfig("sae", d, d, 2 * d, in_hook=hook, out_hook=hook, layer=layer)
    return _set(Coder(cfg), dict(W_enc=W_enc, W_dec=W_enc.T))


def hooked_loss(model, tokens, fwd_hooks) -> float:
    """Mean next-token loss of a plain TransformerLens forward with `fwd_hooks`."""
    with torch.inference_mode():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=fwd_hooks).item()


def test_perfect_transcoder_recovers_everything(model, tokens):
    results = evaluate_coders(
        model, [(perfect_transcoder(model, 0), 0), (perfect_transcoder(model, 1), 1)],
        tokens, batch_contexts=3, progress=False,
    )  # fmt: skip
    assert len(results) == 2
    for r in results:
        assert r["ce_loss_replaced"] == pytest.approx(r["ce_loss_original"], abs=ATOL)
        assert abs(r["kl"]) < ATOL
        assert abs(r["ce_delta"]) < ATOL
        assert r["ce_recovered"] == pytest.approx(1.0, abs=ATOL)
        assert r["ce_recovered_mean_ablation"] == pytest.approx(1.0, abs=ATOL)
        assert abs(r["fvu"]) < ATOL and abs(r["mse"]) < ATOL
        assert r["explained_variance"] == pytest.approx(1.0, abs=ATOL)
        assert r["cosine_sim"] == pytest.approx(1.0, abs=ATOL)
        assert r["n_tokens"] == 8 * 16 and r["n_ce_tokens"] == 8 * 15
    # the baselines are real forward passes of the model
    assert results[0]["ce_loss_original"] == pytest.approx(hooked_loss(model, tokens, []), abs=ATOL)
    zero = [("blocks.1.hook_mlp_out", lambda act, hook: torch.zeros_like(act))]
    assert results[1]["ce_loss_zero_ablated"] == pytest.approx(
        hooked_loss(model, tokens, zero), abs=ATOL
    )


def test_zero_coder_is_zero_ablation(model, tokens):
    (r,) = evaluate_coders(model, [(zero_transcoder(0), 0)], tokens, 4, progress=False)
    assert r["ce_loss_replaced"] == pytest.approx(r["ce_loss_zero_ablated"], abs=ATOL)
    assert r["ce_recovered"] == pytest.approx(0.0, abs=ATOL)
    assert r["l0"] > 0 and r["dead_fraction"] < 1
    assert r["cosine_sim"] == pytest.approx(0.0, abs=ATOL)


def test_identity_sae_at_mlp_out(model, tokens):
    (r,) = evaluate_coders(
        model, [(identity_sae("hook_mlp_out", 1, 32), 1)], tokens, 8, progress=False
    )
    assert abs(r["kl"]) < ATOL
    assert r["ce_loss_replaced"] == pytest.approx(r["ce_loss_original"], abs=ATOL)
    assert abs(r["fvu"]) < ATOL


def test_identity_sae_at_a_hook_a_patched_run_cannot_resume_from(model, tokens):
    # mlp.hook_post (d_mlp wide) is patched by a full hooked forward
    (r,) = evaluate_coders(
        model, [(identity_sae("mlp.hook_post", 0, 64), 0)], tokens, 5, progress=False
    )
    assert abs(r["kl"]) < ATOL and abs(r["fvu"]) < ATOL
    zero = [("blocks.0.mlp.hook_post", lambda act, hook: torch.zeros_like(act))]
    assert r["ce_loss_zero_ablated"] == pytest.approx(hooked_loss(model, tokens, zero), abs=ATOL)


def test_replaced_and_mean_ablated_match_hooked_forwards(model, tokens):
    coder = random_transcoder(0)
    (r,) = evaluate_coders(model, [(coder, 0)], tokens, 3, progress=False)
    stash = {}

    def keep(act, hook):
        stash["x"] = act

    def splice(act, hook):
        return coder(stash["x"])[0]

    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    mean = cache["blocks.0.hook_mlp_out"].mean((0, 1))  # [d_model]
    replaced = hooked_loss(
        model, tokens, [("blocks.0.ln2.hook_normalized", keep), ("blocks.0.hook_mlp_out", splice)]
    )
    mean_abl = hooked_loss(
        model, tokens, [("blocks.0.hook_mlp_out", lambda act, hook: mean.expand_as(act))]
    )
    assert r["ce_loss_replaced"] == pytest.approx(replaced, abs=ATOL)
    assert r["ce_loss_mean_ablated"] == pytest.approx(mean_abl, abs=ATOL)
    assert r["kl"] > 0
    y = cache["blocks.0.hook_mlp_out"]  # [B, T, d]
    with torch.inference_mode():
        y_hat, z = coder(cache["blocks.0.ln2.hook_normalized"])
    fvu = ((y - y_hat) ** 2).sum() / ((y - y.mean((0, 1))) ** 2).sum()
    assert r["fvu"] == pytest.approx(fvu.item(), rel=1e-5)
    assert r["l0"] == pytest.approx((z > 0).sum(-1).float().mean().item(), rel=1e-6)


def test_splice_all_layers(model, tokens):
    perfect = [(perfect_transcoder(model, 0), 0), (perfect_transcoder(model, 1), 1)]
    r = evaluate_coders(model, perfect, tokens, 3, splice="all", progress=False)
    assert r["ce_loss_replaced"] == pytest.approx(r["ce_loss_original"], abs=ATOL)
    assert abs(r["kl"]) < ATOL
    assert r["ce_recovered"] == pytest.approx(1.0, abs=ATOL)
    zero_both = [
        (f"blocks.{L}.hook_mlp_out", lambda act, hook: torch.zeros_like(act)) for L in (0, 1)
    ]
    assert r["ce_loss_zero_ablated"] == pytest.approx(
        hooked_loss(model, tokens, zero_both), abs=ATOL
    )

    zeros = evaluate_coders(
        model, [(zero_transcoder(0), 0), (zero_transcoder(1), 1)], tokens, 3, splice="all",
        progress=False,
    )  # fmt: skip
    assert zeros["ce_loss_replaced"] == pytest.approx(zeros["ce_loss_zero_ablated"], abs=ATOL)

    # jointly spliced random transcoders: layer 1 reads the layer-0-patched stream
    coders = [random_transcoder(0, seed=1), random_transcoder(1, seed=2)]
    joint = evaluate_coders(model, [(c, i) for i, c in enumerate(coders)], tokens, 8,
                            splice="all", progress=False)  # fmt: skip
    stash = {}
    hooks = []
    for i, c in enumerate(coders):
        hooks.append((f"blocks.{i}.ln2.hook_normalized", lambda a, hook, i=i: stash.update({i: a})))
        hooks.append((f"blocks.{i}.hook_mlp_out", lambda a, hook, i=i, c=c: c(stash[i])[0]))
    assert joint["ce_loss_replaced"] == pytest.approx(hooked_loss(model, tokens, hooks), abs=ATOL)


def test_batches_accumulate_to_the_whole(model, tokens):
    coders = [(random_transcoder(0), 0), (random_transcoder(1, seed=3), 1)]
    whole = evaluate_coders(model, coders, tokens, batch_contexts=8, progress=False)
    parts = evaluate_coders(model, coders, tokens.numpy(), batch_contexts=3, progress=False)
    for a, b in zip(whole, parts):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    all_whole = evaluate_coders(model, coders, tokens, 8, splice="all", progress=False)
    all_parts = evaluate_coders(model, coders, tokens, 3, splice="all", progress=False)
    for k in all_whole:
        assert all_parts[k] == pytest.approx(all_whole[k], rel=1e-5, abs=1e-6), k


def test_splices_evaluated_together_equal_each_alone(model, tokens):
    """One job over a train group (several dictionaries at a layer) and splice-all sets:
    every splice's metrics are exactly (not approximately) what evaluating it alone gives."""
    singles = [(random_transcoder(0, seed=s), 0) for s in (1, 2, 3)]
    singles += [(random_transcoder(1, seed=4), 1), (identity_sae("hook_resid_pre", 1, 32), 1)]
    sets = [
        ((random_transcoder(0, seed=5), 0), (random_transcoder(1, seed=6), 1)),
        ((random_transcoder(0, seed=7), 0), (random_transcoder(1, seed=8), 1)),
    ]
    splices = [Splice((pair,)) for pair in singles] + [Splice(s, "all") for s in sets]
    together = evaluate_splices(model, splices, tokens, 3, progress=False)
    alone = [evaluate_coders(model, [pair], tokens, 3, progress=False)[0] for pair in singles]
    alone += [
        evaluate_coders(model, list(s), tokens, 3, splice="all", progress=False) for s in sets
    ]
    assert together == alone
    assert together[0] != together[1]  # distinct splices, distinct numbers
    with pytest.raises(ValueError, match="one coder"):
        Splice(tuple(singles[:2]))


def test_precomputed_means_are_used(model, tokens):
    coder = random_transcoder(1)
    means = hook_means(model, tokens, ["blocks.1.hook_mlp_out"], 3, progress=False)
    assert means["blocks.1.hook_mlp_out"].shape == (32,)
    (a,) = evaluate_coders(model, [(coder, 1)], tokens, 4, progress=False, ablation_means=means)
    (b,) = evaluate_coders(model, [(coder, 1)], tokens, 4, progress=False)
    assert a["ce_loss_mean_ablated"] == pytest.approx(b["ce_loss_mean_ablated"], abs=ATOL)
    shifted = {"blocks.1.hook_mlp_out": means["blocks.1.hook_mlp_out"] + torch.linspace(-3, 3, 32)}
    (c,) = evaluate_coders(model, [(coder, 1)], tokens, 4, progress=False, ablation_means=shifted)
    assert c["ce_loss_mean_ablated"] != pytest.approx(b["ce_loss_mean_ablated"], abs=ATOL)


def test_next_token_ce_matches_transformer_lens(model, tokens):
    with torch.inference_mode():
        logits, loss = model(tokens, return_type="both", loss_per_token=True)
    assert torch.allclose(next_token_ce(logits, tokens), loss, atol=1e-6)


def test_errors_for_people(model, tokens):
    coder = random_transcoder(0)
    with pytest.raises(ValueError, match="one coder per layer"):
        evaluate_coders(model, [(coder, 0), (coder, 0)], tokens, 4, splice="all", progress=False)
    with pytest.raises(ValueError, match="built for layer 0"):
        evaluate_coders(model, [(coder, 1)], tokens, 4, progress=False)
    with pytest.raises(ValueError, match="n_ctx"):
        evaluate_coders(model, [(coder, 0)], np.zeros((2, 17), np.int64), 4, progress=False)
    with pytest.raises(ValueError, match="no hook"):
        bad = identity_sae("hook_nope", 0, 32)
        evaluate_coders(model, [(bad, 0)], tokens, 4, progress=False)
