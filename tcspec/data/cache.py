"""The acts stage: cache hook activations to memory-mappable shards, and stream them back.

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

import difflib
import io
import json
import math
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from tqdm.auto import tqdm

from tcspec.atomic import atomic_dir
from tcspec.data.positions import counted, keep_mask
from tcspec.models.hooks import split_name

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


# ---------------------------------------------------------------------------------- writing
class _ShardWriter:
    """Appends rows to one .npy file per (shard, hook), hashing as it writes (no re-read)."""

    def __init__(
        self, root: Path, widths: dict[str, int], np_dtype: np.dtype, shard_rows: list[int]
    ):
        self.root, self.widths, self.np_dtype = root, widths, np_dtype
        self.shard_rows = shard_rows  # rows of each shard
        self.shards: list[dict] = []
        self.shard, self.filled = -1, 0
        self.files: dict[str, Any] = {}
        self.hashers: dict[str, Any] = {}
        self._open_next()

    def _open_next(self) -> None:
        self.shard += 1
        self.filled = 0
        if self.shard == len(self.shard_rows):
            return
        rows = self.shard_rows[self.shard]
        folder = self.root / shard_name(self.shard)
        folder.mkdir()
        for hook, d in self.widths.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header,
                {
                    "descr": np.lib.format.dtype_to_descr(self.np_dtype),
                    "fortran_order": False,
                    "shape": (rows, d),
                },
            )
            self.files[hook] = open(folder / f"{hook}.npy", "wb")
            self.hashers[hook] = xxhash.xxh3_128()
            self._put(hook, header.getvalue())

    def _put(self, hook: str, data: bytes | memoryview) -> None:
        self.files[hook].write(data)
        self.hashers[hook].update(data)

    def _close_current(self) -> None:
        name = shard_name(self.shard)
        files = {}
        for hook, f in self.files.items():
            files[hook] = {
                "file": f"{name}/{hook}.npy",
                "bytes": f.tell(),
                "checksum": self.hashers[hook].hexdigest(),
            }
            f.close()
        self.shards.append({"name": name, "rows": self.filled, "files": files})
        self.files, self.hashers = {}, {}

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the same number of rows of every hook ([rows, d] each), across shards."""
        n = len(next(iter(arrays.values())))
        start = 0
        while start < n:
            if self.shard == len(self.shard_rows):
                raise ValueError("more rows written than the cache was sized for")
            take = min(n - start, self.shard_rows[self.shard] - self.filled)
            for hook, a in arrays.items():
                self._put(hook, memoryview(np.ascontiguousarray(a[start : start + take])))
            start, self.filled = start + take, self.filled + take
            if self.filled == self.shard_rows[self.shard]:
                self._close_current()
                self._open_next()

    def abort(self) -> None:
        for f in self.files.values():
            f.close()


def _size(n: int) -> str:
    """Bytes for a person: ``1536 -> '1.5 kB'``."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _WriteQueue:
    """Hands batches to a writer thread (at most ``depth`` waiting), so that writing one
    batch overlaps computing the next; the writer's first error is raised in the caller."""

    def __init__(self, writer: _ShardWriter, depth: int = 2):
        self.writer, self.error = writer, None
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (arrays := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write(arrays)
                except BaseException as e:  # raised again in the caller's thread
                    self.error = e

    def put(self, arrays: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(arrays)

    def close(self, raise_error: bool = True) -> None:
        """Wait until everything queued is written (once; later calls only re-raise)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


def _free_disk(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


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


def _check_disk(out_dir: Path, total_rows: int, widths: dict[str, int], itemsize: int,
                n_shards: int) -> None:  # fmt: skip
    """ValueError when the cache would not fit in the free space beside ``out_dir``."""
    need = total_rows * sum(widths.values()) * itemsize + n_shards * len(widths) * 4096
    free = _free_disk(out_dir.parent)
    if need > free:
        raise ValueError(
            f"the activation cache needs about {_size(need)} but {out_dir.parent} "
            f"has {_size(free)} free ({total_rows:,} rows x {sum(widths.values())} "
            f"values x {itemsize} bytes); free space, use a smaller dtype or "
            f"fewer train_tokens"
        )


def _host_arrays(store: dict[str, torch.Tensor], widths: dict[str, int], keep: torch.Tensor,
                 dtype: str) -> dict[str, np.ndarray]:  # fmt: skip
    """One batch's hook activations at the counted positions `keep` [b, ctx] as
    storage-dtype numpy rows: {hook: [n counted, d]}."""
    torch_dtype, np_dtype = STORAGE[dtype]
    arrays = {}
    for h in widths:
        act = store[h][keep].to(torch_dtype).cpu()  # [n, d]
        if dtype == "bfloat16":
            act = act.view(torch.int16)  # the bits; numpy has no bfloat16
        arrays[h] = act.numpy().view(np_dtype)
    return arrays


def _manifest(dtype: str, widths: dict[str, int], shape: tuple[int, int], exclude: tuple,
              total_rows: int, shard_tokens: int, shards: list) -> dict:  # fmt: skip
    n_contexts, context = shape
    return {
        "format": ACTS_FORMAT, "dtype": dtype, "storage_dtype": STORAGE[dtype][1].name,
        "checksum": CHECKSUM, "hooks": {h: {"width": w} for h, w in widths.items()},
        "context": context, "n_contexts": n_contexts, "exclude_tokens": list(exclude),
        "total_rows": total_rows, "shard_tokens": shard_tokens, "shards": shards,
    }  # fmt: skip


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
            yield _host_arrays(store, widths, keep_mask(batch, exclude), dtype), chunk.size

    with torch.inference_mode(), model.hooks(fwd_hooks=[(h, save) for h in hooks]):
        probe = torch.as_tensor(np.asarray(tokens[:1, :2]), dtype=torch.long, device=device)
        model(probe, return_type=None, stop_at_layer=stop)  # fills store: the widths
        widths = {h: int(store[h].shape[-1]) for h in hooks}
        layout = _Layout(widths, total_rows, tokens.shape, exclude, dtype, shard_tokens)
        return write_cache(out_dir, layout, batches(), n_contexts * context, meta, progress)


class _Layout:
    """What a cache holds: hook widths, rows, the token shape and what was left out."""

    def __init__(self, widths: dict[str, int], total_rows: int, shape: tuple[int, int],
                 exclude: tuple, dtype: str, shard_tokens: int):  # fmt: skip
        self.widths, self.total_rows, self.shape, self.exclude = widths, total_rows, shape, exclude
        self.dtype, self.shard_tokens = dtype, shard_tokens


def write_cache(out_dir: str | Path, layout: _Layout, batches: Iterator, units: int,
                meta: dict | None, progress: bool = True) -> dict:  # fmt: skip
    """Write the rows of `batches` (pairs of {hook: [n, d] storage-dtype numpy rows} and the
    progress units they account for, `units` in all) as a cache in `out_dir` described by
    `layout`, atomically; returns the manifest. Raises ValueError before writing when the
    cache would not fit on disk."""
    if layout.dtype not in STORAGE:
        raise ValueError(f"unknown storage dtype {layout.dtype!r}; expected one of {list(STORAGE)}")
    np_dtype, out_dir, shard = STORAGE[layout.dtype][1], Path(out_dir), layout.shard_tokens
    n_shards = math.ceil(layout.total_rows / shard)
    shard_rows = [shard] * (n_shards - 1) + [layout.total_rows - shard * (n_shards - 1)]
    _check_disk(out_dir, layout.total_rows, layout.widths, np_dtype.itemsize, n_shards)
    bar = tqdm(total=units, unit="tok", unit_scale=True, desc="acts", disable=not progress)
    with atomic_dir(out_dir) as tmp:
        writer = _ShardWriter(tmp, layout.widths, np_dtype, shard_rows)
        writes = _WriteQueue(writer)  # file writes and hashing overlap the next batch
        try:
            for arrays, done in batches:
                writes.put(arrays)
                bar.update(done)
            writes.close()
        except BaseException:
            writes.close(raise_error=False)
            writer.abort()
            raise
        bar.close()
        manifest = _manifest(
            layout.dtype, layout.widths, layout.shape, layout.exclude, layout.total_rows,
            shard, writer.shards,
        )  # fmt: skip
        manifest["meta"] = meta or {}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def cache_rows(rows: Iterator[dict[str, torch.Tensor]], total_rows: int, widths: dict[str, int],
               out_dir: str | Path, *, dtype: str = "float32", shard_tokens: int = 65536,
               meta: dict | None = None, progress: bool = True) -> dict:  # fmt: skip
    """Cache activation rows that come without tokens (a synthetic source): `rows` yields
    {hook: [n, d]} tensors, `total_rows` rows in all, in the format `cache_activations`
    writes (context 1: one row a "context"); returns the manifest."""

    def batches() -> Iterator:
        for r in rows:
            n = len(next(iter(r.values())))
            keep = torch.ones(n, dtype=torch.bool)
            yield _host_arrays(r, widths, keep, dtype), n

    layout = _Layout(dict(widths), total_rows, (total_rows, 1), (), dtype, shard_tokens)
    return write_cache(out_dir, layout, batches(), total_rows, meta, progress)


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
