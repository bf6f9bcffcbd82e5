"""The activation cache's format: its folder layout, manifest, storage dtypes and checksums
(written by `tcspec.data.cache_writer`, read by `tcspec.data.cache.ActivationReader`).

Layout of a cache folder (written atomically: into a hidden temporary sibling, renamed into
place at the end, so a killed job leaves nothing that looks complete)::

    manifest.json
    shard_00000/blocks.0.ln2.hook_normalized.npy   [rows, d_model]
    shard_00000/blocks.0.hook_mlp_out.npy          [rows, d_model]
    shard_00001/...

Rows are the counted token positions in token order (context 0's, then context 1's, ...):
every position but those whose token is in ``exclude_tokens`` (the BOS convention
``exclude`` passes the BOS id: every document's BOS, at the start of a row or inside it, is
left out, as evaluation leaves it out; see `tcspec.data.positions`). Shards hold
``shard_tokens`` rows each (the last holds the rest). ``bfloat16`` is stored as its
``uint16`` bit pattern (numpy has no bfloat16); the manifest records the dtype.

Every file's size and xxh3-128 checksum are in the manifest: xxh3 hashed 7-15 GB/s where
sha256 managed 0.35-1.4 GB/s on the machines measured, so verifying a cache costs little
next to reading it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

ACTS_FORMAT = "tcspec.acts/1"
MANIFEST = "manifest.json"
CHECKSUM = "xxh3_128"
# storage dtype name -> (torch dtype to convert to, numpy dtype of the stored bits)
STORAGE = {
    "float32": (torch.float32, np.dtype(np.float32)),
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.uint16)),
}


class CacheError(ValueError):
    """An activation cache that is incomplete, truncated or corrupted."""


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def read_by(keys: Sequence[str]) -> Callable[[str], bool]:
    """Whether a file of a cache folder (its path relative to the folder) is one that an
    ``ActivationReader`` of hooks ``keys`` opens: the manifest, and those hooks' shards."""
    files = {f"{k}.npy" for k in keys}
    return lambda rel: rel == MANIFEST or rel.rpartition("/")[2] in files
