"""Every dictionary family at its defaults, on a toy model at the quickstart's budget.

The quickstart's schedule (600k training tokens in batches of 512: 1,171 steps, lr 1e-3
after a 50-step warm-up, normalized MSE) at layer 0 of the session's toy model, every other
option at its default; three settings of each family's sparsity knob. All 18 dictionaries
train in one pass over one activation stream. Each family's L0 on held-out tokens (the
inference form: BatchTopK's threshold) falls strictly as its knob tightens, and at the
middle setting fewer than 30% of its features are dead: never active on ~63k held-out
tokens, as the `dead_fraction` metric counts them on the quickstart's 65,536 eval tokens.
"""

from __future__ import annotations

import pytest
import torch

from tcspec.data.stream import ActivationStream, StreamConfig
from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import CoderConfig
from tcspec.models.corpus import toy_documents
from tcspec.models.load import load_model
from tcspec.spec import SAESpec, TranscoderSpec
from tcspec.training import Member, train_group
from tcspec.vocab import never_fires
from tests.data.test_data import packed_rows

pytestmark = pytest.mark.slow  # real runs of minutes: the full suite's, not the quick loop's

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
TOKENS, BATCH, EXPANSION = 600_000, 512, 8  # the quickstart's budget and width
HELD_OUT = 2048  # contexts of 32: 63,488 tokens past their BOS
SCHEDULE = dict(lr=1e-3, lr_warmup_steps=50, loss="normalized_mse", batch_size=BATCH)
FAMILIES = {  # family -> (options, sparsity knob, its settings from loosest to tightest)
    "relu": ({}, "l1", [3e-4, 1e-3, 3e-3]),
    "topk": ({"activation": "topk"}, "k", [32, 16, 8]),
    "batchtopk": ({"activation": "batchtopk"}, "k", [32, 16, 8]),
    "jumprelu_step": ({"activation": "jumprelu"}, "l0_coef", [1e-5, 1e-4, 1e-3]),
    "jumprelu_tanh": ({"activation": "jumprelu", "penalty": "tanh"}, "l0_coef", [1e-5, 1e-4, 1e-3]),
    "matryoshka": ({"activation": "batchtopk", "kind": "sae", "matryoshka": [16, 64]}, "k", [32, 16, 8]),
}  # fmt: skip


def _member(tmp, model, family: str, value) -> Member:
    opts, knob, _ = FAMILIES[family]
    kind = opts.get("kind", "transcoder")
    spec = (SAESpec if kind == "sae" else TranscoderSpec)(
        **({"kind": kind, "expansion": EXPANSION, knob: value} | SCHEDULE | opts)
    )
    d = model.cfg.d_model
    cfg = CoderConfig(kind, d, d, EXPANSION * d, spec.activation, spec.k)
    return Member(f"{family}={value}", spec, cfg, OUT if kind == "sae" else IN, OUT,
                  tmp / f"{family}={value}", seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def trained(toy_model_dir, tmp_path_factory):
    """{family: [(L0, dead fraction) on held-out tokens per knob setting]}."""
    tmp = tmp_path_factory.mktemp("defaults")
    model = load_model(toy_model_dir)
    bos = model.tokenizer.bos_token_id
    ctx = model.cfg.n_ctx
    rows = packed_rows(toy_documents(0, 8000), model.tokenizer, context=ctx,
                       bos_token_id=bos, n_tokens=(TOKENS + 2 * BATCH) * ctx // (ctx - 1) + HELD_OUT * ctx)  # fmt: skip
    held_out, rows = rows[-HELD_OUT:], rows[:-HELD_OUT]
    members = [_member(tmp, model, f, v) for f, (_, _, vs) in FAMILIES.items() for v in vs]
    config = StreamConfig(hooks=(IN, OUT), batch_size=BATCH, buffer_tokens=32 * BATCH,
                          batch_contexts=64, exclude_tokens=(bos,))  # fmt: skip
    steps = TOKENS // BATCH
    train_group(members, ActivationStream(model, rows, config), steps, tmp / "ckpt",
                progress=False, log=lambda s: None)  # fmt: skip
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(held_out, dtype=torch.long))
    keep = torch.as_tensor(held_out != bos).reshape(-1)
    acts = {h: cache[h].reshape(-1, cache[h].shape[-1])[keep] for h in (IN, OUT)}
    out = {}
    for m in members:
        c = coders.load(m.out_dir)
        with torch.no_grad():
            on = c.encode(acts[m.in_key]) > 0  # [tokens, S]
        dead = float(never_fires(on.sum(0)).float().mean())
        out.setdefault(m.name.split("=")[0], []).append((float(on.sum(1).float().mean()), dead))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_at_defaults_follows_its_sparsity_knob_with_most_features_alive(trained, family):
    (l0_a, _), (l0_b, dead_b), (l0_c, _) = trained[family]
    assert l0_a > l0_b > l0_c > 0, (family, trained[family])
    assert dead_b < 0.3, (family, trained[family])
