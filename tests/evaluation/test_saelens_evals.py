"""tcspec's evaluation against SAELens's own `run_evals` on the same SAE and tokens.

An SAE trained-shaped (random weights, scaled so some features fire) at `blocks.0.hook_mlp_out`
of the tiny GPT-2 is exported to SAELens's format, loaded with SAELens's loader, and scored by
`sae_lens.evals.run_evals` over a real `ActivationsStore` reading the same token rows; tcspec
scores its own copy with `evaluate_coders`. Both BOS conventions: `include` (no positions
masked) and `exclude` (SAELens's `exclude_special_tokens` with the BOS id: the SAE is not
spliced at BOS positions and they count in no metric).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

ROWS, CTX, BATCH = 16, 32, 8


@pytest.fixture(scope="module")
def setup(tiny_gpt2_dir, tmp_path_factory):
    from tcspec.dictionaries.coders import Coder, CoderConfig
    from tcspec.interop.export import export
    from tcspec.models.load import load_checkpoint

    model = load_checkpoint(tiny_gpt2_dir)
    with torch.no_grad():  # sharper next-token distributions than the random init gives
        model.unembed.W_U.mul_(8.0)
    bos = model.tokenizer.bos_token_id
    g = torch.Generator().manual_seed(0)
    tokens = _sample(model, bos, g)
    hook = "blocks.1.hook_resid_pre"
    d = model.cfg.d_model
    cfg = CoderConfig(
        kind="sae", d_in=d, d_out=d, d_sae=4 * d, in_hook=hook, out_hook=hook, layer=1
    )
    coder = Coder(cfg, seed=1)
    # a near-identity SAE (features x+ and x- of each dim, perturbed, a small threshold) so
    # CE recovered is well away from 0 and 1 and the ratios are well conditioned
    eye = torch.eye(d)
    with torch.no_grad():
        coder.W_enc.copy_(torch.cat([eye, -eye, 0.05 * torch.randn(d, 2 * d, generator=g)], 1))
        coder.W_dec.copy_(torch.cat([eye, -eye, 0.05 * torch.randn(2 * d, d, generator=g)], 0))
        coder.W_dec.add_(0.1 * torch.randn(coder.W_dec.shape, generator=g))
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        coder.b_enc.fill_(-0.3 * cache[hook][:, 1:].std().item())
        coder.b_dec.zero_()
    folder = tmp_path_factory.mktemp("sl") / "sae"
    export(coder, folder, "saelens", model_name="gpt2", context_size=CTX)
    return model, coder, tokens, folder, bos


@torch.no_grad()
def _sample(model, bos: int, g: torch.Generator) -> torch.Tensor:
    """Rows sampled from the model itself (so it predicts them better than chance), each
    starting with BOS, one more BOS inside a row (a packed document boundary). [ROWS, CTX]"""
    tokens = torch.full((ROWS, 1), bos)
    for t in range(1, CTX):
        probs = model(tokens)[:, -1].softmax(-1)  # [ROWS, V]
        nxt = torch.multinomial(probs, 1, generator=g)  # [ROWS, 1]
        if t == CTX // 2:
            nxt[3] = bos
        tokens = torch.cat([tokens, nxt], 1)
    return tokens


def _saelens_metrics(model, folder, tokens, exclude):
    from datasets import Dataset
    from sae_lens import SAE
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    sae = SAE.load_from_disk(folder)
    data = Dataset.from_dict({"input_ids": tokens.tolist()})
    store = ActivationsStore.from_sae(
        model,
        sae,
        data,
        context_size=CTX,
        streaming=False,
        store_batch_size_prompts=BATCH,
        n_batches_in_buffer=2,
        train_batch_size_tokens=BATCH * CTX,
    )
    cfg = EvalConfig(
        batch_size_prompts=BATCH,
        n_eval_reconstruction_batches=ROWS // BATCH,
        n_eval_sparsity_variance_batches=ROWS // BATCH,
        compute_kl=True,
        compute_ce_loss=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(
        sae, store, model, ActivationScaler(), cfg, exclude_special_tokens=exclude
    )
    return metrics


@pytest.mark.parametrize("bos", ["include", "exclude"])
def test_ce_and_l0_equal_saelens_run_evals(setup, bos):
    from tcspec.evaluation.spliced import evaluate_coders

    model, coder, tokens, folder, bos_id = setup
    exclude = [bos_id] if bos == "exclude" else False
    ours = evaluate_coders(
        model,
        [(coder, 1)],
        tokens,
        batch_contexts=BATCH,
        progress=False,
        exclude_tokens=[bos_id] if bos == "exclude" else (),
    )[0]
    theirs = _saelens_metrics(model, folder, tokens, exclude)
    ce = theirs["model_performance_preservation"]
    kl = theirs["model_behavior_preservation"]
    pairs = {
        "ce_loss_original": ce["ce_loss_without_sae"],
        "ce_loss_replaced": ce["ce_loss_with_sae"],
        "ce_loss_zero_ablated": ce["ce_loss_with_ablation"],
        "ce_recovered": ce["ce_loss_score"],
        "l0": theirs["sparsity"]["l0"],
        "kl": kl["kl_div_with_sae"],
        "kl_div_score": kl["kl_div_score"],
    }
    far = {n: (ours[n], v) for n, v in pairs.items() if ours[n] != pytest.approx(v, rel=1e-4)}
    assert not far, far
    assert 0.2 < ours["ce_recovered"] < 0.98
    counted = ROWS * CTX - (ROWS + 1 if bos == "exclude" else 0)  # every BOS, one mid-row
    assert ours["n_tokens"] == ours["n_kl_tokens"] == counted
