"""Read third-party ``torch.save`` checkpoints without running code from them.

A ``.pt`` file written by ``torch.save`` is a zip archive: ``<name>/data.pkl`` (a pickle) and
``<name>/data/<key>`` (the raw bytes of each tensor storage). A pickle may name any Python
callable and call it while loading (``os.system`` included), so `load_checkpoint` reads
``data.pkl`` with an unpickler that resolves only the names in `ADMITTED` and refuses every
other one before anything is called:

- tensor reconstruction (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``),
  rebuilt here from the archive's storage bytes with ``torch.as_strided``;
- ``collections.OrderedDict`` (a state dict), ``torch.device`` and dtypes (kept as strings);
- the known config classes in `CONFIG_CLASSES`, mapped to `PickledRecord`: an empty object
  whose pickled fields land in ``.fields``; the class's own code never runs.

Tensor storages are read with ``persistent_load`` straight from the archive; nothing goes
through ``torch.load``, so TorchScript archives and the legacy (pre-zip) format, which
``torch.load`` would hand to other loaders, are refused here.

``trust=True`` admits every global (the plain pickle behaviour, for a file whose origin the
user vouches for); the config classes still map to `PickledRecord` so a checkpoint loads
without the package that wrote it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

# Storage class names in persistent ids -> element dtype
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}

# Pickled config classes admitted as plain records (module, class name)
CONFIG_CLASSES: frozenset[tuple[str, str]] = frozenset(
    {
        # the transcoder paper's training code (transcoder_circuits, sae_training/config.py)
        ("sae_training.config", "LanguageModelSAERunnerConfig"),
        # the older SAELens training code the paper's code derives from
        ("sae_lens.training.config", "LanguageModelSAERunnerConfig"),
    }
)

DTYPE_NAMES = frozenset(n for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype))


class UnsafePickleError(ValueError):
    """A pickle asked for a global that is not admitted."""


class PickledRecord:
    """The fields of a pickled object of an admitted config class (see the module docstring).

    ``pickled_name`` is the class's ``module.name``; ``fields`` its pickled attributes.
    """

    pickled_name = ""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.pickled_name}: expected a dict of fields, got {type(state).__name__}"
            )
        self.fields = dict(state)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"{self.pickled_name} has no field `{name}`")

    def __repr__(self) -> str:
        return f"PickledRecord({self.pickled_name}, {self.fields!r})"


_RECORD_TYPES: dict[str, type[PickledRecord]] = {}


def _record_type(module: str, name: str) -> type[PickledRecord]:
    full = f"{module}.{name}"
    if full not in _RECORD_TYPES:
        _RECORD_TYPES[full] = type(name, (PickledRecord,), {"pickled_name": full})
    return _RECORD_TYPES[full]


def _reconstructor(cls, base, state):
    """Protocol 0/1 object creation (``copyreg._reconstructor``), for records only."""
    if not (isinstance(cls, type) and issubclass(cls, PickledRecord)) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is admitted for config records only")
    return cls()


def _device(*args) -> str:
    return str(torch.device(*args))


class _StorageKind:
    """What an admitted ``torch.<Name>Storage`` global resolves to: its element dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    """``torch._utils._rebuild_tensor_v2`` over a flat storage tensor, bounds checked."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor's storage must come from the archive")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError(f"bad tensor geometry {size} {stride} +{offset}")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in rank")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise pickle.UnpicklingError(
                f"tensor {size} at +{offset} reads past its storage of {storage.numel()}"
            )
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


ADMITTED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "device"): _device,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, file: Path, trust: bool):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.archive, self.prefix, self.file, self.trust = archive, prefix, file, trust
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocols < 3 write Python 2 names (`__builtin__`); read them as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ADMITTED:
            return ADMITTED[(module, name)]
        if (module, name) in CONFIG_CLASSES:
            return _record_type(module, name)
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return _StorageKind(STORAGE_DTYPES[name])
        if module == "torch" and name in DTYPE_NAMES:
            return f"torch.{name}"
        if self.trust:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.file}: refused to load the pickled global `{module}.{name}`: without "
            "trust_pickle only tensors and the known config classes "
            f"({', '.join(sorted(f'{m}.{n}' for m, n in CONFIG_CLASSES))}) are read. "
            "Set trust_pickle: true only for a file whose origin you trust (loading it runs "
            "code the file names)."
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageKind):
            raise pickle.UnpicklingError(f"storage type {kind!r:.80} is not a torch storage")
        key = str(key)
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except KeyError:
                raise pickle.UnpicklingError(f"no storage record `{name}`") from None
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if len(raw) % itemsize:
                raise pickle.UnpicklingError(f"storage `{name}` is not whole {kind.dtype}s")
            self.storages[key] = (
                torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            )
        storage = self.storages[key]
        if isinstance(numel, int) and storage.numel() < numel:
            raise pickle.UnpicklingError(f"storage `{key}` holds fewer than {numel} elements")
        return storage


def load_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """The object a ``torch.save`` zip checkpoint holds, read as the module docstring says.

    Raises `UnsafePickleError` (a ValueError) naming the file and the global for a refused
    global, and ValueError for a file that is not a plain ``torch.save`` zip archive.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a torch.save zip archive (the legacy pre-zip format is not read; "
            "re-save it with a current torch.save)"
        )
    try:
        return _load_archive(path, trust)
    except (UnsafePickleError, ValueError) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable checkpoint: {e}") from e
    except CORRUPT as e:  # a damaged archive: zip, deflate or pickle stream
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


# what a truncated or damaged archive raises from zipfile, zlib, struct and pickle
CORRUPT = (
    zipfile.BadZipFile, zlib.error, struct.error, EOFError, KeyError, IndexError,
    OverflowError, RecursionError, AttributeError, TypeError, pickle.UnpicklingError,
    NotImplementedError, OSError,
)  # fmt: skip


def _load_archive(path: Path, trust: bool) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a torch.save archive (no single `<name>/data.pkl`)")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
            raise ValueError(f"{path}: a TorchScript archive, not a checkpoint of tensors")
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode(errors="replace").strip()
            if order != "little":
                raise ValueError(f"{path}: byte order `{order}` is not read (only little)")
        unpickler = _Unpickler(archive.read(pickles[0]), archive, prefix, path, trust)
        try:
            return unpickler.load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
            raise ValueError(f"{path}: unreadable pickle: {e}") from e
