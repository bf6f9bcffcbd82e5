"""Checksums of the files in a folder, and the check of a folder against them.

``record(folder)`` maps each file's path (relative, POSIX) to its size and xxh3-128 digest;
``damaged(folder, recorded)`` lists what no longer matches: missing files, files whose size
changed (truncated, or grown), and files of the recorded size whose digest changed (bytes
overwritten in place). Sizes are compared first, for every file, so a truncation is found
without reading anything. xxh3-128 is the activation cache's checksum too; ``bench/faults.py
--only hash`` measures its throughput here against reading the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
CHUNK = 8 << 20  # bytes read per call


class DamagedFile(ValueError):
    """A file that differs from its recorded size or checksum (or is gone)."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")


def file_checksum(path: Path) -> str:
    """The xxh3-128 hex digest of a file, streamed through one reused buffer."""
    h = xxhash.xxh3_128()
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def record(folder: Path, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, dict]:
    """{relative path: {"bytes": size, ALGORITHM: digest}} of every file under ``folder``
    (sorted by path) whose relative path ``skip`` does not reject."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if not skip(rel):
            out[rel] = {"bytes": path.stat().st_size, ALGORITHM: file_checksum(path)}
    return out


def damaged(
    folder: Path,
    recorded: dict[str, dict],
    deep: bool = True,
    hashed: Callable[[str], bool] | None = None,
) -> list[DamagedFile]:
    """What under ``folder`` differs from ``recorded`` (``record``'s output): every missing
    or resized file, then (with ``deep``) every file of the right size whose digest differs,
    of those whose relative path ``hashed`` accepts (all without it). Files that are not
    recorded are not looked at."""
    folder = Path(folder)
    found, same_size = [], []
    for rel, entry in recorded.items():
        path = folder / rel
        if not path.is_file():
            found.append(DamagedFile(path, "missing"))
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            what = "truncated" if size < entry["bytes"] else "grown"
            found.append(
                DamagedFile(path, f"{what} to {size:,} bytes ({entry['bytes']:,} recorded)")
            )
        elif hashed is None or hashed(rel):
            same_size.append((path, entry[ALGORITHM]))
    if deep:
        found += [
            DamagedFile(path, f"its {ALGORITHM} checksum differs from the one recorded")
            for path, digest in same_size
            if file_checksum(path) != digest
        ]
    return found


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file at ``path`` (a file, or a folder's files), by relative name;
    empty when nothing is there (the checks report it)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = {}
    for f in files:
        if f.is_file():
            name = f.name if f == path else str(f.relative_to(path))
            out[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out
