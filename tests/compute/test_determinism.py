"""Repeatable runs: every generator's state in checkpoints, and torch's deterministic
settings made for CUDA work and recorded (the CUDA kernels themselves need a GPU:
bench/gpu.sh)."""

from __future__ import annotations

import random

import torch

from tcspec.compute import determinism
from tcspec.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint


def draws() -> tuple:
    return torch.rand(4).tolist(), random.random(), torch.randint(0, 10**6, (2,)).tolist()


def test_a_checkpoint_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    path = tmp_path / "train.ckpt"
    save_checkpoint(path, [], 0, 0.0, None)
    after_save = draws()
    assert draws() != after_save  # the generators moved on
    state = read_checkpoint(path)
    assert set(state["rng"]) == {"python", "cpu", "cuda"}
    assert state["rng"]["cuda"] == []  # no CUDA here: nothing to save
    load_checkpoint(path, [], 0)
    assert draws() == after_save


def test_cuda_settings_are_made_for_cuda_work_and_recorded(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = determinism.settings()
    assert before["bitwise_resume"] == "cpu" and not before["deterministic_algorithms"]
    determinism.make_deterministic("cpu")
    assert determinism.settings() == before  # a CPU's kernels are left as they are
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        determinism.make_deterministic("cuda:0")
        s = determinism.settings()
        assert s["deterministic_algorithms"] and s["deterministic_warn_only"]
        assert s["cudnn_deterministic"] and not s["cudnn_benchmark"]
        assert s["cublas_workspace_config"] == determinism.CUBLAS_WORKSPACE
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
