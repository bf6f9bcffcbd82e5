"""What makes a run repeatable: every random generator's state, for checkpoints, and torch's
deterministic settings, made before a task runs and recorded in its task.json.

RNG state (``rng_state`` / ``set_rng_state``): Python's, torch's CPU generator and the
generator of every CUDA device (``torch.cuda.get_rng_state_all``; none where CUDA is absent
or was never initialised). A checkpoint written on CUDA and resumed without it restores the
CPU and Python generators and leaves CUDA's, which do not exist there.

Settings (``make_deterministic``, on CUDA only): cuDNN's deterministic algorithms and no
autotuning (``cudnn.deterministic``, ``cudnn.benchmark = False``), cuBLAS's fixed workspace
(``CUBLAS_WORKSPACE_CONFIG=:4096:8``, effective only if set before CUDA's first GEMM in the
process, which a task's start is), and ``torch.use_deterministic_algorithms(True,
warn_only=True)``: an op with no deterministic CUDA kernel (such as ``index_add_`` and the
scatters, which add in the order the GPU's atomics land) warns instead of failing, and its
results may differ in the last bits from run to run. So a run resumed on CUDA restores the
same weights, optimizer, data position and generators, but its later steps are bitwise
identical to an uninterrupted run's only where every op it runs is deterministic; on a CPU
at a fixed thread count they are (tested). On a CPU nothing is changed: its kernels are
deterministic at a fixed thread count (the toy model's training loop, which is not, turns
deterministic algorithms on itself).
"""

from __future__ import annotations

import os
import random

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""The cuBLAS workspace setting that makes its GEMMs deterministic."""


def rng_state() -> dict:
    """Every generator's state: ``python``, ``cpu`` and ``cuda`` (one per device)."""
    cuda = torch.cuda.get_rng_state_all() if _cuda_ready() else []
    return {"python": random.getstate(), "cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA's where this process has those devices)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], device=i)


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def make_deterministic(device: str) -> None:
    """torch's deterministic settings for work on ``device`` (see the module doc)."""
    if not str(device).startswith("cuda"):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def settings() -> dict:
    """The settings in effect, for a task's provenance."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "bitwise_resume": "cpu" if not _cuda_ready() else "deterministic ops only",
    }
