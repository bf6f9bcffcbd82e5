"""The tokens stage: document readers, the packing rule, disjoint splits, manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tcspec.data.tokens import (
    build_token_splits,
    encode_documents,
    iter_documents,
    load_tokens,
    pack_rows,
    rows_for,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BOS = 0
N_WORDS = 200


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: ``w{i}`` -> id i + 2 (0 is BOS, 1 unknown), so counts are exact."""
    vocab = {"<bos>": BOS, "<unk>": 1} | {f"w{i}": i + 2 for i in range(N_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


def ids(*words: int) -> list[int]:
    return [w + 2 for w in words]


def doc(*words: int) -> str:
    return " ".join(f"w{w}" for w in words)


# ---------------------------------------------------------------------------------- packing
def packed_rows(docs, tokenizer, *, context: int, bos_token_id: int, n_tokens: int):
    """``docs`` packed as the tokens stage packs a split (`pack_rows`) into the rows that hold
    ``n_tokens``: int32 [ceil(n_tokens / context), context]; the documents must fill them."""
    out = np.empty((rows_for(n_tokens, context), context), dtype=np.int32)
    filled, _ = pack_rows(out, encode_documents(docs, tokenizer), bos_token_id)
    assert filled == len(out), f"the documents fill {filled} of {len(out)} rows"
    return out


def test_packing_rule_bos_per_document_and_after_overflow(word_tokenizer):
    docs = [doc(1, 2, 3), doc(4, 5, 6, 7, 8, 9), doc(10)]
    rows = packed_rows(docs, word_tokenizer, context=5, bos_token_id=BOS, n_tokens=15)
    expected = np.array(
        [
            [BOS, *ids(1, 2, 3), BOS],  # doc 1, then doc 2's own BOS at the row's end
            [BOS, *ids(4, 5, 6, 7)],  # doc 2 overflows: new BOS, continues
            [BOS, *ids(8, 9), BOS, *ids(10)],  # rest of doc 2, then doc 3
        ],
        dtype=np.int32,
    )
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, expected)


def test_document_starting_a_row_brings_its_own_bos(word_tokenizer):
    docs = [doc(1, 2, 3), doc(4, 5, 6)]  # doc 1 fills row 0 exactly (BOS + 3)
    rows = packed_rows(docs, word_tokenizer, context=4, bos_token_id=BOS, n_tokens=8)
    np.testing.assert_array_equal(rows, [[BOS, *ids(1, 2, 3)], [BOS, *ids(4, 5, 6)]])


def test_packing_keeps_every_token_in_order_with_raw_tokenizer(word_tokenizer):
    rng = np.random.default_rng(0)
    words = [rng.integers(0, N_WORDS, size=rng.integers(0, 40)) for _ in range(60)]
    docs = [doc(*w) for w in words]
    context = 16
    rows = packed_rows(
        docs, word_tokenizer.backend_tokenizer, context=context, bos_token_id=BOS, n_tokens=800
    )
    assert rows.shape == (50, context)
    assert (rows[:, 0] == BOS).all()
    stream = np.concatenate([w + 2 for w in words]).astype(np.int32)
    packed = rows[rows != BOS]
    np.testing.assert_array_equal(packed, stream[: len(packed)])
    # one BOS per row start plus one per document start that is not at a row start
    n_docs = sum(1 for w in words if len(w))
    assert (rows == BOS).sum() >= len(rows)
    assert (rows[:, 1:] == BOS).sum() <= n_docs


def test_rows_round_up_to_hold_the_tokens_asked(word_tokenizer):
    docs = [doc(*range(100))]
    rows = packed_rows(docs, word_tokenizer, context=8, bos_token_id=BOS, n_tokens=17)
    assert rows.shape == (3, 8)


def test_too_few_tokens_names_both_numbers(word_tokenizer, tmp_path):
    # eval fills its one row with BOS + 7 tokens (the rest is discarded): nothing for train
    with pytest.raises(ValueError, match=r"packs into 8 tokens .* fewer than the 24 asked"):
        build_token_splits([doc(*range(14))], word_tokenizer, context=8, bos_token_id=BOS,
                           eval_tokens=8, train_tokens=16, out_dir=tmp_path / "t",
                           progress=False)  # fmt: skip
    # packing alone: 14 tokens fill 2 of 3 rows of BOS + 7 (16 tokens of the 24), 1 document
    documents = encode_documents([doc(*range(14))], word_tokenizer)
    assert pack_rows(np.empty((3, 8), dtype=np.int32), documents, BOS) == (2, 1)


# ----------------------------------------------------------------------------------- splits
def split_corpus(n_docs: int = 120, seed: int = 0) -> list[str]:
    """Documents whose every token names the document (w{i} repeated), 3-20 tokens long."""
    rng = np.random.default_rng(seed)
    return [doc(*[i] * int(rng.integers(3, 21))) for i in range(n_docs)]


def test_splits_are_disjoint_deterministic_and_described(word_tokenizer, tmp_path):
    docs = split_corpus()
    kw = dict(context=16, bos_token_id=BOS, train_tokens=500, eval_tokens=100, progress=False)
    manifest = build_token_splits(docs, word_tokenizer, out_dir=tmp_path / "a", **kw)
    train, evals = load_tokens(tmp_path / "a", "train"), load_tokens(tmp_path / "a", "eval")
    assert isinstance(train, np.memmap) and train.dtype == np.int32
    assert train.shape == (32, 16) and evals.shape == (7, 16)

    train_docs = set(np.unique(train[train != BOS]) - 2)
    eval_docs = set(np.unique(evals[evals != BOS]) - 2)
    assert not train_docs & eval_docs
    # eval takes the first documents, train starts with the next one
    assert eval_docs == set(range(manifest["splits"]["eval"]["documents"]))
    assert train[0, 1] - 2 == manifest["splits"]["eval"]["documents"]
    assert manifest["splits"]["train"]["first_document"] == len(eval_docs)
    assert manifest["splits"]["train"]["documents"] == len(train_docs)

    assert manifest["context"] == 16 and manifest["bos_token_id"] == BOS
    assert manifest["vocab_size"] == N_WORDS + 2
    assert manifest["splits"]["train"]["rows"] == 32
    assert manifest["splits"]["train"]["tokens"] == 512
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest

    # same inputs -> byte-identical files; larger train keeps eval and extends train
    again = build_token_splits(docs, word_tokenizer, out_dir=tmp_path / "b", **kw)
    assert again["splits"] == manifest["splits"]
    kw["train_tokens"] = 800
    bigger = build_token_splits(docs, word_tokenizer, out_dir=tmp_path / "c", **kw)
    assert bigger["splits"]["eval"] == manifest["splits"]["eval"]
    np.testing.assert_array_equal(load_tokens(tmp_path / "c", "train")[:32], train)


def test_separate_eval_stream(word_tokenizer, tmp_path):
    manifest = build_token_splits(
        [doc(1, 2, 3)] * 20,
        word_tokenizer,
        eval_docs=[doc(7, 8)] * 20,
        context=8,
        bos_token_id=BOS,
        train_tokens=32,
        eval_tokens=16,
        out_dir=tmp_path / "t",
        progress=False,
    )
    evals = load_tokens(tmp_path / "t", "eval")
    assert set(np.unique(evals)) == {BOS, *ids(7, 8)}
    assert manifest["splits"]["train"]["first_document"] == 0


def test_small_corpus_fails_with_both_numbers_and_leaves_nothing(word_tokenizer, tmp_path):
    out = tmp_path / "tokens"
    with pytest.raises(ValueError, match=r"fewer than the 1,040 asked"):
        build_token_splits(
            split_corpus(20),
            word_tokenizer,
            context=16,
            bos_token_id=BOS,
            train_tokens=1000,
            eval_tokens=32,
            out_dir=out,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_load_tokens_detects_corruption(word_tokenizer, tmp_path):
    out = tmp_path / "tokens"
    build_token_splits(
        split_corpus(),
        word_tokenizer,
        context=16,
        bos_token_id=BOS,
        train_tokens=256,
        eval_tokens=64,
        out_dir=out,
        progress=False,
    )
    with open(out / "train.npy", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")
    with pytest.raises(ValueError, match=r"train\.npy is corrupted"):
        load_tokens(out, "train")
    assert load_tokens(out, "train", verify=False).shape == (16, 16)
    with pytest.raises(ValueError, match="not a complete tokens folder"):
        load_tokens(tmp_path / "nowhere", "train")


# -------------------------------------------------------------------------------- documents
def test_local_text_json_and_parquet_files(tmp_path):
    import pandas as pd

    texts = ["first document\nwith two lines", "second one", "third"]
    (tmp_path / "a.txt").write_text("\n\n".join(texts[:2]) + "\n")
    (tmp_path / "b.txt").write_text(texts[2] + "\n")
    got = list(iter_documents("files", paths=[tmp_path / "a.txt", tmp_path / "b.txt"]))
    assert [g.strip() for g in got] == texts  # blank lines separate documents

    with open(tmp_path / "c.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"body": t, "id": 1}) + "\n")
    assert list(iter_documents("files", paths=[tmp_path / "c.jsonl"], text_column="body")) == texts

    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "d.parquet")
    assert list(iter_documents("files", paths=[tmp_path / "d.parquet"])) == texts
    data = iter_documents("files", paths=[tmp_path / "d.data"], format="parquet")
    with pytest.raises(ValueError, match="not found"):
        list(data)


def test_missing_column_names_what_exists(tmp_path):
    with open(tmp_path / "c.jsonl", "w") as f:
        f.write(json.dumps({"body": "x", "id": 1}) + "\n")
    with pytest.raises(ValueError, match=r"no column 'text'.*\['body', 'id'\]"):
        list(iter_documents("files", paths=[tmp_path / "c.jsonl"]))


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n\n")
    with pytest.raises(ValueError, match="no documents"):
        list(iter_documents("files", paths=[tmp_path / "e.txt"]))


def test_unknown_suffix_and_kind(tmp_path):
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="cannot infer one file format"):
        list(iter_documents("files", paths=[tmp_path / "x.csv"]))
    with pytest.raises(ValueError, match="unknown data kind"):
        list(iter_documents("web"))


def test_trained_bpe_tokenizer_end_to_end(tmp_path):
    texts = [f"document number {i} talks about the year 17{i % 100:02d}." for i in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    docs = iter_documents("files", paths=[tmp_path / "corpus.jsonl"])
    manifest = build_token_splits(
        docs,
        hf,
        context=32,
        bos_token_id=hf.bos_token_id,
        train_tokens=2048,
        eval_tokens=512,
        out_dir=tmp_path / "tokens",
        progress=False,
    )
    train = load_tokens(tmp_path / "tokens", "train")
    assert (train[:, 0] == hf.bos_token_id).all()
    assert train.max() < manifest["vocab_size"] == len(hf)
    first_train_doc = manifest["splits"]["train"]["first_document"]
    expected = hf(texts[first_train_doc], add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(train[0, 1 : 1 + len(expected)], expected)
