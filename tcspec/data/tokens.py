"""The tokens stage: read a corpus, tokenize it, pack it into BOS-led contexts, split it.

Packing rule (the paper's): every document is preceded by BOS; documents are concatenated
and cut into rows of ``context`` tokens. Every row starts with BOS: a document that begins a
row brings its own BOS, and a document that overflows a row continues in the next row after
a new BOS. Documents with no tokens are skipped.

Split rule: the eval split takes the first documents of the corpus until ``eval_tokens`` are
filled; the rest of the document that overflows the last eval row is discarded, and the
train split starts with the next document. The splits are therefore disjoint by document,
deterministic, and stable: a larger ``train_tokens`` keeps the eval split identical and the
train split a prefix-extension of the smaller one. A corpus that keeps its own held-out
documents (the toy corpus) passes them as ``eval_docs`` instead; eval is then packed from
those, and train from the start of the main stream.

Outputs of :func:`build_token_splits` (one folder, written atomically)::

    train.npy  int32 [n_rows, context]   memory-mappable with np.load(mmap_mode="r")
    eval.npy   int32 [n_rows, context]
    manifest.json  rows, tokens, documents, sha256 of each file, context, bos id, vocab size
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tcspec.atomic import atomic_dir, read_json

TOKENS_FORMAT = "tcspec.tokens/1"
SPLITS = ("train", "eval")
MANIFEST = "manifest.json"
TOKENIZE_BATCH_DOCS = 256  # documents per batched tokenizer call

FORMAT_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


# -------------------------------------------------------------------------------- documents
def iter_documents(
    kind: str,
    *,
    name: str | None = None,
    config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = True,
    paths: list[str | Path] | None = None,
    format: str | None = None,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the corpus's documents in order.

    kind ``hub``: an HF hub dataset (``name``, ``config``, ``split``, ``streaming``).
    kind ``files``: local files read with ``datasets`` (format ``text``, ``json`` or
    ``parquet``, inferred from the suffix when None). Text files are split into documents at
    blank lines (``datasets``' ``sample_by="paragraph"``); JSON lines and Parquet rows are one
    document each, taken from ``text_column``.
    kind ``toy``: the offline toy corpus's endless, seeded stream for ``seed`` and ``split``
    (``train`` or ``eval``: the corpus keeps its own held-out documents, see
    ``tcspec.models.corpus``); pass its eval stream as ``eval_docs`` to
    :func:`build_token_splits`.

    Blank (whitespace-only) documents are skipped. Raises ValueError for a missing text
    column (naming the columns that exist) and, once the corpus is exhausted, for a corpus
    without a single non-blank document.
    """
    if kind == "toy":
        from tcspec.models.corpus import iter_documents as toy_stream

        rows: Iterable[Any] = ({"text": d} for d in toy_stream(seed, split=split))
        text_column, where = "text", f"the toy corpus (seed {seed}, split {split!r})"
    elif kind == "hub":
        if not name:
            raise ValueError("data kind `hub` needs a dataset `name`")
        import datasets

        rows = datasets.load_dataset(name, config, split=split, streaming=streaming)
        where = f"hub dataset {name!r} (config {config!r}, split {split!r})"
    elif kind == "files":
        rows, text_column, where = _load_files(paths, format, text_column)
    else:
        raise ValueError(f"unknown data kind {kind!r}; expected one of: toy, hub, files")
    yield from _texts(rows, text_column, where)


def _texts(rows: Iterable[Any], text_column: str, where: str) -> Iterator[str]:
    """The non-blank texts of ``rows``' ``text_column``; ValueError for a missing column, a
    column that is not text, or rows without a single non-blank text (``where`` names them)."""
    n = 0
    for row in rows:
        if text_column not in row:
            raise ValueError(
                f"{where} has no column {text_column!r}; columns are {sorted(row)}; "
                f"set `text_column` to one of them"
            )
        text = row[text_column]
        if not isinstance(text, str):
            raise ValueError(
                f"{where}: column {text_column!r} holds {type(text).__name__}, not text"
            )
        if not text.strip():
            continue  # blank documents carry nothing to pack
        n += 1
        yield text
    if n == 0:
        raise ValueError(f"{where} has no documents")


def _load_files(
    paths: list[str | Path] | None, format: str | None, text_column: str
) -> tuple[Iterable[dict], str, str]:
    """Open local files with ``datasets``; returns (rows, text column, description)."""
    if not paths:
        raise ValueError("data kind `files` needs at least one path")
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"data files not found: {', '.join(missing)}")
    if format is None:
        formats = {FORMAT_BY_SUFFIX.get(p.suffix.lower()) for p in paths}
        if None in formats or len(formats) != 1:
            suffixes = sorted({p.suffix or "(none)" for p in paths})
            raise ValueError(
                f"cannot infer one file format from suffixes {suffixes}; set `format` to "
                f"text, json or parquet (known suffixes: {', '.join(FORMAT_BY_SUFFIX)})"
            )
        (format,) = formats
    if format not in ("text", "json", "parquet"):
        raise ValueError(f"unknown file format {format!r}; expected text, json or parquet")

    import datasets

    files = [str(p) for p in paths]
    kwargs: dict[str, Any] = {"sample_by": "paragraph"} if format == "text" else {}
    ds = datasets.load_dataset(format, data_files=files, split="train", **kwargs)
    if format == "text":
        text_column = "text"  # the text loader's one column
    elif text_column not in ds.column_names:
        raise ValueError(
            f"files {files} have no column {text_column!r}; columns are {ds.column_names}; "
            f"set `text_column` to one of them"
        )
    return ds, text_column, f"files {files}"


# ---------------------------------------------------------------------------------- packing
def encode_documents(
    docs: Iterable[str], tokenizer: Any, batch_docs: int = TOKENIZE_BATCH_DOCS
) -> Iterator[np.ndarray]:
    """Tokenize documents in batches (no special tokens); yields one int32 array per doc.

    ``tokenizer`` is an HF tokenizer (fast ones use their Rust backend's batch encoder) or a
    ``tokenizers.Tokenizer``. Documents are read lazily, ``batch_docs`` at a time.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_docs:
            yield from _encode_batch(backend, tokenizer, batch)
            batch = []
    if batch:
        yield from _encode_batch(backend, tokenizer, batch)


def _encode_batch(backend: Any, tokenizer: Any, texts: list[str]) -> Iterator[np.ndarray]:
    if hasattr(backend, "encode_batch_fast"):
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
    elif hasattr(backend, "encode_batch"):
        ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    else:  # a slow (pure Python) HF tokenizer
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for doc_ids in ids:
        yield np.asarray(doc_ids, dtype=np.int32)


def pack_rows(
    out: np.ndarray, doc_ids: Iterator[np.ndarray], bos_token_id: int, bar: tqdm | None = None
) -> tuple[int, int]:
    """Fill ``out`` [n_rows, context] with BOS-led rows from ``doc_ids`` (see module doc).

    Returns (rows filled, documents used). Stops as soon as ``out`` is full; the rest of the
    document being packed is discarded. Fewer rows than ``out`` holds means the documents ran
    out (the last partial row is not counted).
    """
    n_rows, context = out.shape
    row, col, n_docs = 0, 0, 0
    if n_rows == 0:
        return 0, 0
    for ids in doc_ids:
        if len(ids) == 0:
            continue
        n_docs += 1
        out[row, col] = bos_token_id  # the document's own BOS
        col += 1
        p = 0  # next token of this document
        while True:
            if col == context:
                row, col = row + 1, 0
                if bar is not None:
                    bar.update(context)
                if row == n_rows:
                    return row, n_docs
                if p < len(ids):  # overflow: continue after a new BOS
                    out[row, 0] = bos_token_id
                    col = 1
            if p == len(ids):
                break
            take = min(context - col, len(ids) - p)
            out[row, col : col + take] = ids[p : p + take]  # [take]
            col, p = col + take, p + take
    return row, n_docs


def rows_for(n_tokens: int, context: int) -> int:
    """Rows needed to hold at least ``n_tokens`` tokens (BOS included)."""
    return math.ceil(n_tokens / context)


# ----------------------------------------------------------------------------------- splits
def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def vocab_size_of(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can produce (added tokens included)."""
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size(with_added_tokens=True))
    return len(tokenizer)


def _pack_file(
    path: Path, shape: tuple[int, int], doc_ids, bos_token_id: int, bar
) -> tuple[int, int]:
    """Pack ``doc_ids`` into a new int32 ``.npy`` of ``shape`` [rows, context]: (rows, docs)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=shape)
    packed = pack_rows(out, doc_ids, bos_token_id, bar)
    out.flush()
    del out
    return packed


def build_token_splits(
    docs: Iterable[str],
    tokenizer: Any,
    *,
    context: int,
    bos_token_id: int,
    train_tokens: int,
    eval_tokens: int,
    out_dir: str | Path,
    progress: bool = True,
    eval_docs: Iterable[str] | None = None,
    meta: dict | None = None,
) -> dict:
    """Pack the corpus into disjoint eval and train splits (see the module doc) in ``out_dir``.

    Each split holds ``ceil(tokens / context)`` rows. With ``eval_docs`` (a corpus that keeps
    its own held-out documents, like the toy corpus), eval is packed from ``eval_docs`` and
    train from the start of ``docs``; disjointness is then the corpus's promise. ``meta``
    (e.g. corpus and tokenizer ids) is stored in the manifest as is. Returns the manifest.
    Raises ValueError when the corpus is too small, with the tokens it gave and the tokens
    asked for.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 (BOS + one token), got {context}")
    n_rows = {"eval": rows_for(eval_tokens, context), "train": rows_for(train_tokens, context)}
    asked = sum(n_rows.values()) * context
    # one stream for both splits: train continues with the document after eval's last one
    train_ids = encode_documents(docs, tokenizer)
    sources = {"eval": train_ids if eval_docs is None else encode_documents(eval_docs, tokenizer)}
    sources["train"] = train_ids
    one_stream = eval_docs is None
    with atomic_dir(Path(out_dir)) as tmp:
        bar = tqdm(total=asked, unit="tok", unit_scale=True, desc="tokens", disable=not progress)
        splits = _pack_splits(tmp, sources, n_rows, context, bos_token_id, bar, one_stream)
        bar.close()
        manifest = _manifest(splits, context, bos_token_id, tokenizer, one_stream, meta)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _pack_splits(
    tmp: Path,
    sources: dict[str, Iterator[np.ndarray]],
    n_rows: dict[str, int],
    context: int,
    bos_token_id: int,
    bar: tqdm,
    one_stream: bool,
) -> dict[str, dict]:
    """Pack eval, then train, each into ``tmp/<split>.npy`` int32 [n_rows[split], context]:
    split -> its manifest entry. ``one_stream``: both splits read one document stream, so
    train's first document is the one after eval's last. ValueError when the documents run
    out before every row is filled."""
    splits: dict[str, dict] = {}
    first_doc = 0
    for split in ("eval", "train"):
        path = tmp / f"{split}.npy"
        rows, n_docs = _pack_file(path, (n_rows[split], context), sources[split], bos_token_id, bar)
        if rows < n_rows[split]:
            got = sum(s["rows"] for s in splits.values()) * context + rows * context
            raise ValueError(
                f"the corpus packs into {got:,} tokens of context {context}, fewer than "
                f"the {sum(n_rows.values()) * context:,} asked for (eval "
                f"{n_rows['eval'] * context:,} + train {n_rows['train'] * context:,}); lower "
                f"train_tokens/eval_tokens or use a larger corpus"
            )
        splits[split] = {
            "file": path.name,
            "rows": rows,
            "tokens": rows * context,
            "documents": n_docs,
            "first_document": first_doc,
            "sha256": sha256_file(path),
        }
        first_doc = first_doc + n_docs if one_stream else 0
    return splits


def _manifest(
    splits: dict[str, dict],
    context: int,
    bos_token_id: int,
    tokenizer: Any,
    one_stream: bool,
    meta: dict | None,
) -> dict:
    """The tokens folder's manifest.json: format, packing, the splits' entries, ``meta``."""
    return {
        "format": TOKENS_FORMAT,
        "context": context,
        "bos_token_id": int(bos_token_id),
        "vocab_size": vocab_size_of(tokenizer),
        "split_rule": (
            "eval = first documents; train = the documents after them"
            if one_stream
            else "eval and train from the corpus's own held-out and training documents"
        ),
        "splits": {s: splits[s] for s in SPLITS},
        "meta": meta or {},
    }


def read_manifest(dir: str | Path) -> dict:
    """The manifest.json of a tokens folder."""
    path = Path(dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: {dir} is not a complete tokens folder")
    return read_json(path)


def load_tokens(dir: str | Path, split: str, verify: bool = True) -> np.ndarray:
    """Memory-map one split, int32 [n_rows, context]; checks shape and, if ``verify``, the
    sha256 recorded in the manifest (raising ValueError naming the file on a mismatch)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = read_manifest(dir)
    entry = manifest["splits"][split]
    path = Path(dir) / entry["file"]
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    if verify and sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{path} is corrupted: its sha256 differs from the manifest's")
    tokens = np.load(path, mmap_mode="r")
    if tokens.shape != (entry["rows"], manifest["context"]) or tokens.dtype != np.int32:
        raise ValueError(
            f"{path} holds {tokens.dtype} {tokens.shape}, the manifest says int32 "
            f"{(entry['rows'], manifest['context'])}"
        )
    return tokens
