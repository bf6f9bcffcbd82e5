"""Writing an activation cache (`tcspec.data.cache_format`): rows into shards, hashed as
they are written, by a writer thread that overlaps the next batch's work, atomically (into a
hidden temporary sibling, renamed into place at the end), after a check of the free disk.
"""

from __future__ import annotations

import io
import json
import math
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from tqdm.auto import tqdm

from tcspec.atomic import atomic_dir
from tcspec.data.cache_format import ACTS_FORMAT, CHECKSUM, MANIFEST, STORAGE, shard_name


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


def host_arrays(store: dict[str, torch.Tensor], widths: dict[str, int], keep: torch.Tensor,
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


class Layout:
    """What a cache holds: hook widths, rows, the token shape and what was left out."""

    def __init__(self, widths: dict[str, int], total_rows: int, shape: tuple[int, int],
                 exclude: tuple, dtype: str, shard_tokens: int):  # fmt: skip
        self.widths, self.total_rows, self.shape, self.exclude = widths, total_rows, shape, exclude
        self.dtype, self.shard_tokens = dtype, shard_tokens


def write_cache(out_dir: str | Path, layout: Layout, batches: Iterator, units: int,
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
            yield host_arrays(r, widths, keep, dtype), n

    layout = Layout(dict(widths), total_rows, (total_rows, 1), (), dtype, shard_tokens)
    return write_cache(out_dir, layout, batches(), total_rows, meta, progress)
