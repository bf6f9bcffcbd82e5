"""Where training runs and in what precision: the device, the precision, the CPU's features.

A trained dictionary's `precision` decides what its GEMMs compute in:

    fp32   float32 operands and results (TF32 off on CUDA)
    tf32   float32 operands and results, the GEMMs on TF32 tensor cores (CUDA only)
    bf16   bfloat16 operands with float32 accumulation, results rounded to bfloat16 (as
           `torch.autocast` does); float32 master weights, gradients and Adam moments
    auto   `DEFAULT_PRECISION` of the device the work runs on

`auto` is resolved when the plan is compiled (the spec's `device`, and for `device: auto`
whether this machine has CUDA), so a train task's id covers the precision its weights were
trained in; the library resolves it again for callers that build a trainer directly.

Defaults: on CUDA bf16, the peers' default (SAELens trains under bf16 autocast, sparsify's
`SparseCoder.forward` runs under bf16 autocast on CUDA), whose tensor cores have ~2x the peak
of TF32 and ~15x plain fp32's. On every CPU fp32: torch's bf16 GEMMs at the trainer's shapes
ran ~2-2.5x faster than fp32 on a Zen 4 with `avx512_bf16`, several times faster on an Intel
Xeon with AMX (`amx_bf16`: the ReLU step 3.0x, the TopK step 2.1x), and ~100x slower on a
Zen 3 with AVX2 only (0.5-1 against 86-94 GFLOP/s), so bf16 is opt-in where it is native,
and a spec compiles to the same ids on any kind of CPU (its numbers still move in the last
digits from one CPU to another: their kernels round differently). `python -m bench --only
precision` times the training step in both.

torch is imported where it is used: the spec imports this module for `Precision`.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "tf32", "bf16")
"""The precisions a dictionary trains in (`auto` resolves to one of them)."""
Precision = Literal["auto", "fp32", "tf32", "bf16"]
DEFAULT_PRECISION = {"cpu": "fp32", "cuda": "bf16"}
"""What `precision: auto` resolves to on each device kind."""
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
"""The /proc/cpuinfo flags that decide how fast a CPU runs fp32 and bf16 GEMMs."""
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
"""Flags of a CPU with bf16 dot-product instructions (without them bf16 GEMMs crawl)."""


# ----------------------------------------------------------------------------- devices
def resolve_device(device: str) -> str:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without CUDA is a ValueError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device}, but this torch has no CUDA device (use auto or cpu)")
    return device


def device_kind(device) -> str:
    """``cuda`` or ``cpu`` for a device (``auto``: where this machine would run)."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


# --------------------------------------------------------------------------- precision
def resolve_precision(precision: str, device) -> str:
    """A dictionary's precision on `device` (a spec's ``auto``/``cpu``/``cuda`` or a torch
    device): itself, or for ``auto`` the device kind's `DEFAULT_PRECISION` (fp32 on a GPU
    without native bf16, e.g. a V100, as sparsify's autocast decides)."""
    if precision != "auto":
        return precision
    kind = device_kind(device)
    return DEFAULT_PRECISION[kind] if kind == "cpu" or cuda_bf16() else "fp32"


def gemm_dtype(precision: str, master: torch.dtype) -> torch.dtype:
    """The dtype of a GEMM's operands and result: bfloat16 for bf16, else the master dtype."""
    import torch

    return torch.bfloat16 if precision == "bf16" else master


def precisions_on(device) -> tuple[str, ...]:
    """The precisions a dictionary trains in on `device`: `PRECISIONS`, tf32 on CUDA only."""
    return tuple(p for p in PRECISIONS if p != "tf32" or device_kind(device) == "cuda")


@contextlib.contextmanager
def gemm_mode(precision: str, device) -> Iterator[None]:
    """Run the block with CUDA's float32 GEMMs on TF32 tensor cores for ``tf32``, in full
    float32 otherwise (then restore the setting); ``tf32`` on a CPU is a ValueError."""
    if precision not in precisions_on(device):
        raise ValueError(f"precision: tf32 is a CUDA setting; this runs on {device} (use fp32)")
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def slow_precision(precision: str, device) -> str | None:
    """Why `precision` would run slower than fp32 on `device`, or None: bf16 on a CPU or a
    GPU without native bf16."""
    if precision != "bf16":
        return None
    if device_kind(device) == "cuda":
        return None if cuda_bf16() else "precision: bf16 on a GPU without native bf16"
    if native_bf16():
        return None
    return (
        "precision: bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 in "
        "/proc/cpuinfo): its bf16 GEMMs run ~100x slower than fp32 here; use precision: fp32"
    )


def cuda_bf16() -> bool:
    """Whether this machine's GPU runs bf16 natively (True where none is visible: a plan
    compiled for `device: cuda` elsewhere)."""
    import torch

    if not torch.cuda.is_available():
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


# ------------------------------------------------------------------------------- the CPU
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """Which of `CPU_FEATURES` this CPU has (/proc/cpuinfo flags; empty elsewhere)."""
    flags = set(_cpuinfo_field("flags").split())
    return [f for f in CPU_FEATURES if f in flags]


def cpu_vendor() -> str:
    """The CPU's vendor id (/proc/cpuinfo: GenuineIntel, AuthenticAMD), else ""."""
    return _cpuinfo_field("vendor_id")


def cache_bytes(level: int) -> int | None:
    """The size of the data (or unified) cache at `level` that CPU 0 sees, in bytes
    (/sys/devices/system/cpu/cpu0/cache), or None where it is not reported."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    for i in range(8):
        try:
            with open(f"{root}/index{i}/level") as f, open(f"{root}/index{i}/type") as t:
                if int(f.read()) != level or t.read().strip() == "Instruction":
                    continue
            with open(f"{root}/index{i}/size") as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        return int(size.rstrip("KMG")) * unit
    return None


def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (`NATIVE_BF16`)."""
    return any(f in NATIVE_BF16 for f in cpu_features())


def _cpuinfo_field(name: str) -> str:
    """The value of /proc/cpuinfo's first `name` line (its first CPU's), else ""."""
    for line in _cpuinfo():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return ""


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []
