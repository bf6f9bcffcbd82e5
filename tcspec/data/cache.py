"""The acts stage: cache a model's hook activations (`cache_activations`), and stream them
back (`ActivationReader`). The folder's format: `tcspec.data.cache_format`; writing it:
`tcspec.data.cache_writer`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from tcspec.data.cache_format import ACTS_FORMAT, CHECKSUM, MANIFEST, STORAGE, CacheError
from tcspec.data.cache_writer import Layout, host_arrays, write_cache
from tcspec.data.positions import counted, keep_mask
from tcspec.models.hooks import split_name


def _check_hooks(model: Any, hooks: list[str]) -> None:
    if not hooks:
        raise ValueError("no hooks to cache")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"hooks listed twice: {sorted({h for h in hooks if hooks.count(h) > 1})}")
    for h in hooks:
        if h not in model.hook_dict:
            near = difflib.get_close_matches(h, list(model.hook_dict), n=3)
            raise ValueError(f"the model has no hook {h!r}; close names: {near}")


def _stop_layer(hooks: list[str]) -> int | None:
    """Blocks to run: one past the last block a hook sits in; None when a hook is outside
    the blocks (e.g. ``ln_final.hook_normalized``) and the whole model must run."""
    layers = [split_name(h) for h in hooks]
    if not all(layers):
        return None
    return max(layer for layer, _ in layers) + 1


def _check_cache_args(model: Any, tokens: np.ndarray, hooks: list[str], dtype: str) -> None:
    if dtype not in STORAGE:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {list(STORAGE)}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_contexts, context], got shape {tokens.shape}")
    _check_hooks(model, hooks)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"context {tokens.shape[1]} is longer than the model's n_ctx {model.cfg.n_ctx}"
        )


def cache_activations(
    model: Any,
    tokens: np.ndarray,
    hooks: list[str],
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    batch_contexts: int = 32,
    shard_tokens: int = 65536,
    exclude_tokens: Sequence[int] = (),
    progress: bool = True,
    meta: dict | None = None,
) -> dict:
    """Run ``model`` over ``tokens`` [n_contexts, context] and cache every hook in ``hooks``
    (full TransformerLens names) to ``out_dir``; one forward pass per batch serves all hooks,
    and only the blocks up to the last hooked one run. Returns the manifest.

    ``dtype`` is the storage dtype (float32, float16, bfloat16). Positions whose token is in
    ``exclude_tokens`` are not stored (see the module doc). ``meta`` (e.g. model and
    tokens ids) is stored in the manifest as is. Raises ValueError before any work when a
    hook is unknown or the estimated size exceeds the free disk space.
    """
    _check_cache_args(model, tokens, hooks, dtype)
    exclude = tuple(int(t) for t in exclude_tokens)
    (n_contexts, context), total_rows = tokens.shape, counted(tokens, exclude)
    if total_rows == 0:
        raise ValueError("no token positions to cache")
    device, stop = model.cfg.device, _stop_layer(hooks)
    store: dict[str, torch.Tensor] = {}

    def save(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, n_contexts, batch_contexts):
            chunk = np.asarray(tokens[start : start + batch_contexts])  # [b, ctx]
            store.clear()
            batch = torch.as_tensor(chunk, dtype=torch.long, device=device)
            model(batch, return_type=None, stop_at_layer=stop)  # hooks fill store
            yield host_arrays(store, widths, keep_mask(batch, exclude), dtype), chunk.size

    with torch.inference_mode(), model.hooks(fwd_hooks=[(h, save) for h in hooks]):
        probe = torch.as_tensor(np.asarray(tokens[:1, :2]), dtype=torch.long, device=device)
        model(probe, return_type=None, stop_at_layer=stop)  # fills store: the widths
        widths = {h: int(store[h].shape[-1]) for h in hooks}
        layout = Layout(widths, total_rows, tokens.shape, exclude, dtype, shard_tokens)
        return write_cache(out_dir, layout, batches(), n_contexts * context, meta, progress)


# ---------------------------------------------------------------------------------- reading
def read_acts_manifest(cache_dir: str | Path) -> dict:
    """The manifest of a complete cache folder (CacheError if there is none)."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path} not found: {cache_dir} is not a complete activation cache")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != ACTS_FORMAT:
        raise CacheError(f"{path}: format {manifest.get('format')!r}, expected {ACTS_FORMAT}")
    return manifest


class ActivationReader:
    """Streams shuffled float32 batches of cached activations, deterministic in ``seed``.

    Order of epoch ``e``: the shards in a permutation seeded by ``(seed, e)``, taken
    ``buffer_shards`` at a time; the rows of each group of shards are read into RAM (the
    only part of the cache held in memory: ``buffer_shards`` x shard rows x the keys' widths;
    128 MB for two d=128 float32 keys with the default 65,536-row shards) and permuted together with a permutation seeded by
    ``(seed, e, group)``. Batches cut this stream ``batch_size`` rows at a time; an epoch is
    ``steps_per_epoch = total_rows // batch_size`` batches (its last rows, different ones each
    epoch, are skipped), and the next epoch follows with new permutations.

    ``iter_batches(s)`` yields exactly the batches ``iter_batches(0)`` yields from step ``s``
    on, without reading the groups before the one that holds step ``s``.

    On open every file must exist with the size in the manifest; with ``verify`` each file's
    checksum is checked the first time it is read. Either failure raises CacheError naming
    the file.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        keys: list[str],
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        verify: bool = True,
        buffer_shards: int = 2,
    ):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_acts_manifest(cache_dir)
        missing = [k for k in keys if k not in self.manifest["hooks"]]
        if missing or not keys:
            raise ValueError(
                f"cache {cache_dir} has no hooks {missing}; it holds {list(self.manifest['hooks'])}"
            )
        self.keys, self.batch_size, self.seed = list(keys), batch_size, seed
        self.device, self.verify = torch.device(device), verify
        self.buffer_shards = buffer_shards
        self.dtype = self.manifest["dtype"]
        self.np_dtype = STORAGE[self.dtype][1]
        self.widths = {k: self.manifest["hooks"][k]["width"] for k in keys}
        self.shards = self.manifest["shards"]
        self.total_rows = self.manifest["total_rows"]
        self.steps_per_epoch = self.total_rows // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"cache {cache_dir} holds {self.total_rows} rows, fewer than one batch of "
                f"{batch_size}"
            )
        self._verified: set[str] = set()
        for shard in self.shards:
            for k in keys:
                self._check_size(shard["files"][k])

    def _check_size(self, entry: dict) -> Path:
        path = self.cache_dir / entry["file"]
        if not path.is_file():
            raise CacheError(f"{path} is missing from the activation cache")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheError(
                f"{path} is truncated or damaged: {size} bytes, the manifest says {entry['bytes']}"
            )
        return path

    def _read_into(self, shard: dict, key: str, out: np.ndarray) -> None:
        """Read one shard file's rows into ``out`` [rows, d] (stored dtype), checking its
        checksum the first time this reader reads it."""
        entry = shard["files"][key]
        path = self._check_size(entry)
        header_bytes = entry["bytes"] - out.nbytes
        data = out.reshape(-1).view(np.uint8)  # the same memory, as bytes
        with open(path, "rb") as f:
            header = f.read(header_bytes)
            if f.readinto(memoryview(data)) != out.nbytes:
                raise CacheError(f"{path} is truncated: short read")
        if self.verify and entry["file"] not in self._verified:
            h = xxhash.xxh3_128(header)
            h.update(memoryview(data))
            if h.hexdigest() != entry["checksum"]:
                raise CacheError(f"{path} is corrupted: its {CHECKSUM} checksum differs")
            self._verified.add(entry["file"])

    def _read_group(
        self, ids: list[int], rows: int, buffers: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The rows of shards ``ids``, one after another: {key: [rows, d] stored dtype}.

        The arrays are views of ``buffers``, allocated on the first group of an iterator and
        reused for the next ones (fresh allocations of this size page-fault every time)."""
        if not buffers or len(buffers[self.keys[0]]) < rows:
            cap = max(rows, self.buffer_shards * max(s["rows"] for s in self.shards))
            for k in self.keys:
                buffers[k] = np.empty((cap, self.widths[k]), dtype=self.np_dtype)
        buf = {k: buffers[k][:rows] for k in self.keys}
        for k in self.keys:
            at = 0
            for i in ids:
                n = self.shards[i]["rows"]
                self._read_into(self.shards[i], k, buf[k][at : at + n])
                at += n
        return buf

    def _groups(self, epoch: int) -> list[tuple[list[int], int, int]]:
        """The epoch's shard groups: (shard indices, first stream row, end stream row)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        groups, lo = [], 0
        for g in range(0, len(order), self.buffer_shards):
            ids = [int(i) for i in order[g : g + self.buffer_shards]]
            hi = lo + sum(self.shards[i]["rows"] for i in ids)
            groups.append((ids, lo, hi))
            lo = hi
        return groups

    def _to_tensor(self, a: np.ndarray) -> torch.Tensor:
        """[n, d] stored dtype -> float32 tensor on the reader's device (converted there)."""
        if self.dtype == "bfloat16":
            t = torch.from_numpy(a.view(np.int16)).to(self.device).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a).to(self.device)
        return t.float()

    def _epoch(
        self, epoch: int, first_step: int, buffers: dict[str, np.ndarray]
    ) -> Iterator[dict[str, torch.Tensor]]:
        pos, end = first_step * self.batch_size, self.steps_per_epoch * self.batch_size
        parts: list[dict[str, np.ndarray]] = []
        need = self.batch_size
        for g, (ids, lo, hi) in enumerate(self._groups(epoch)):
            if hi <= pos:
                continue  # a skipped group is never read
            if lo >= end:
                break
            buf = self._read_group(ids, hi - lo, buffers)  # {key: [hi - lo, d]}
            perm = np.random.default_rng([self.seed, epoch, g]).permutation(hi - lo)
            local = pos - lo
            while local < hi - lo and pos < end:
                take = min(need, hi - lo - local)
                idx = perm[local : local + take]
                parts.append({k: np.take(buf[k], idx, axis=0) for k in self.keys})  # [take, d]
                local, pos, need = local + take, pos + take, need - take
                if need == 0:
                    yield {
                        k: self._to_tensor(
                            parts[0][k]
                            if len(parts) == 1
                            else np.concatenate([p[k] for p in parts])
                        )
                        for k in self.keys
                    }  # [batch_size, d] float32 each
                    parts, need = [], self.batch_size

    def iter_batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches {key: float32 [batch_size, d]} from step ``start_step`` on."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        epoch, step = divmod(start_step, self.steps_per_epoch)
        buffers: dict[str, np.ndarray] = {}  # this iterator's own read buffers
        while True:
            yield from self._epoch(epoch, step, buffers)
            epoch, step = epoch + 1, 0
