"""The paper's shape offline: a 12-layer GPT-2 in Hugging Face layout, local text read by
`datasets` in streaming mode, 12 transcoders and an SAE trained from one stream in one
`train_group` call, then all 12 transcoders spliced into the model at once."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tcspec.data.stream import ActivationStream, StreamConfig
from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import CoderConfig
from tcspec.evaluation.spliced import evaluate_coders
from tcspec.models.corpus import toy_documents
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT, full_name
from tcspec.models.load import load_checkpoint
from tcspec.spec import SAESpec, TranscoderSpec
from tcspec.training import Member, train_group
from tests.data.test_data import packed_rows

torch.set_num_threads(1)

N_LAYERS, D_MODEL, CTX, D_SAE, B = 12, 32, 32, 128, 64
SAE_LAYER = 8


@pytest.fixture(scope="module")
def gpt2_12(tmp_path_factory, toy_tokenizer, token_splits):
    """A 12-layer GPT-2 (d_model 32), trained for 50 steps on the train rows so that its
    MLPs matter (zero-ablating them all then costs about 0.24 nats), saved as a Hugging Face
    folder and loaded as tcspec loads a checkpoint (LayerNorm folded, weights centred)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2_12")
    config = GPT2Config(
        n_layer=N_LAYERS, n_embd=D_MODEL, n_head=2, n_positions=64, n_ctx=64,
        vocab_size=len(toy_tokenizer), bos_token_id=toy_tokenizer.bos_token_id,
        eos_token_id=toy_tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-3)
    train = torch.as_tensor(token_splits[0], dtype=torch.long)  # [200, CTX]
    for step in range(50):
        batch = train[(16 * step) % 192 :][:16]  # [16, CTX]
        loss = hf(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    hf.eval().save_pretrained(folder, safe_serialization=True)
    toy_tokenizer.save_pretrained(folder)
    return load_checkpoint(folder)


@pytest.fixture(scope="module")
def token_splits(tmp_path_factory, toy_tokenizer):
    """Train and eval token rows packed from a local text file read by `datasets`
    streaming (documents split at blank lines, as tcspec's `files` kind reads text)."""
    import datasets

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(d.replace("\n\n", "\n") for d in toy_documents(0, 400)))
    rows = datasets.load_dataset(
        "text", data_files=[str(path)], split="train", streaming=True, sample_by="paragraph"
    )
    assert isinstance(rows, datasets.IterableDataset)
    docs = (r["text"] for r in rows if r["text"].strip())
    bos = toy_tokenizer.bos_token_id
    tokens = packed_rows(docs, toy_tokenizer, context=CTX, bos_token_id=bos, n_tokens=240 * CTX)
    return tokens[:200], tokens[200:]  # [200, CTX] train, [40, CTX] eval


def members(root) -> list[Member]:
    opts = dict(d_sae=D_SAE, lr=3e-3, lr_warmup_steps=10, batch_size=B, checkpoint_every=40)
    out = []
    for layer in range(N_LAYERS):
        i, o = full_name(layer, TRANSCODER_IN), full_name(layer, TRANSCODER_OUT)
        cfg = CoderConfig("transcoder", D_MODEL, D_MODEL, D_SAE, in_hook=i, out_hook=o,
                          layer=layer)  # fmt: skip
        spec = TranscoderSpec(kind="transcoder", l1=3e-4, loss="squared_error", **opts)
        out.append(Member(f"tc-L{layer}", spec, cfg, i, o, root / f"tc-L{layer}", layer))
    h = full_name(SAE_LAYER, TRANSCODER_OUT)
    cfg = CoderConfig("sae", D_MODEL, D_MODEL, D_SAE, in_hook=h, out_hook=h, layer=SAE_LAYER)
    spec = SAESpec(kind="sae", l1=3e-4, loss="squared_error", **opts)
    return out + [Member("sae-L8", spec, cfg, h, h, root / "sae-L8", 99)]


@pytest.mark.slow
def test_twelve_transcoders_and_an_sae_from_one_stream(gpt2_12, token_splits, tmp_path):
    train, eval_tokens = token_splits
    group = members(tmp_path)
    hooks = tuple(dict.fromkeys(k for m in group for k in (m.in_key, m.out_key)))
    assert len(hooks) == 24
    config = StreamConfig(hooks=hooks, batch_size=B, buffer_tokens=1024, batch_contexts=8)
    source = ActivationStream(gpt2_12, train, config)
    forwards = []
    handle = gpt2_12.blocks[N_LAYERS - 1].register_forward_hook(lambda *a: forwards.append(1))
    steps = 200 * (CTX - 1) // B  # one pass over the 6,200 train rows: 96 steps
    results = train_group(group, source.iter_batches, steps, tmp_path / "ck", progress=False,
                          log=lambda s: None)  # fmt: skip
    handle.remove()
    # each forward of 8 contexts (248 rows) fed all 13 dictionaries; the rows run are those
    # trained on plus what the buffer still holds (under buffer_tokens + one forward)
    assert len(forwards) == source.next_forward
    assert steps * B <= 248 * source.next_forward < steps * B + 1024 + 248
    for r in results:
        assert r["steps"] == steps and r["tokens"] == steps * B
        assert r["final"]["rec"] < 0.5 * r["curve"][0]["rec"], r["name"]

    tcs = [(coders.load(m.out_dir), m.config.layer) for m in group[:N_LAYERS]]
    all_ = evaluate_coders(gpt2_12, tcs, eval_tokens, batch_contexts=8, splice="all",
                           progress=False)  # fmt: skip
    assert all_["n_ce_tokens"] == 40 * (CTX - 1)
    orig, zero = all_["ce_loss_original"], all_["ce_loss_zero_ablated"]
    rep = all_["ce_loss_replaced"]
    print(f"CE original {orig:.3f} zero-ablated {zero:.3f} replaced {rep:.3f}")
    assert math.isfinite(rep) and zero - orig > 0.15  # the 12 MLPs carry the model's output
    assert abs(rep - orig) < 0.5 * abs(zero - orig)  # the spliced set recovers most of it
    sae = json.loads((tmp_path / "sae-L8" / "training.json").read_text())
    assert sae["final"]["rec"] < 0.5 * sae["curve"][0]["rec"]
