"""Atomic writes: the one module that renames files into place, so a killed job never leaves
a file (or folder) that looks complete; and `read_json`, the reader of what `write_json`
writes (and of any JSON object file).

Every writer takes the final path, writes to a per-process temporary name beside it
(``.{name}.tmp{pid}``), and renames it over the final path only when writing succeeded; on
failure the temporary is removed and the final path is left as it was. What is renamed into
place has the modes the user's umask gives a new file or folder, whatever the writer chose
(safetensors creates its files 0600, which a shared folder's other readers cannot open).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The per-process temporary sibling of ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def is_temp(name: str) -> bool:
    """Whether a file or folder name is a writer's temporary (``temp_name``'s form)."""
    stem, _, pid = name.rpartition(".tmp")
    return name.startswith(".") and bool(stem) and pid.isdigit()


def clear_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by processes that no longer run (a killed job's
    half-written file or folder); a live process's temporary is left alone."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask_modes(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a new file (0666) or
    folder (0777) gets under the process's umask."""
    mask = os.umask(0o022)  # reading the umask sets it: put it back at once
    os.umask(mask)
    path = Path(path)
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary name in ``path``'s folder, then rename it over
    ``path``; on failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        _umask_modes(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data, indent: int = 1) -> Path:
    """JSON with sorted keys (stable bytes for the same data); non-JSON values via str()."""
    text = json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n"
    return write_text(path, text)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; a ValueError naming the file (on one line) when it cannot
    be read or parsed, or holds something other than an object."""
    try:
        raw = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = " ".join(str(e).split()) or type(e).__name__  # parsers' messages span lines
        raise ValueError(f"{path}: unreadable JSON: {why}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically; the format comes from the suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to write into; on success it replaces
    ``out_dir`` (whose old contents are removed). On an exception the temporary folder is
    removed and ``out_dir`` is left untouched."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(out_dir)
    tmp = temp_name(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _umask_modes(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
