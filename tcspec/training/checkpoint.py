"""Resumable checkpoints of a training pass: one checksummed file, written atomically.

The file is CHECKPOINT_MAGIC + the xxh3_128 hex digest of the payload + a newline, then the
`torch.save` bytes of {step, wall_s, members (each trainable's `identity()`), runs (each
trainable's `state_dict()`), source (the data source's `state_dict`, or None), rng (every
generator's state: Python's, torch's CPU and each CUDA device's,
`tcspec.compute.determinism.rng_state`)}. Per-layer dictionaries and CLTs alike.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import xxhash

from tcspec.atomic import write_bytes
from tcspec.compute.determinism import rng_state, set_rng_state

CHECKPOINT = "train.ckpt"
CHECKPOINT_MAGIC = b"tcspec.ckpt/4 xxh3_128 "  # + 32 hex digits + newline, then torch.save bytes
_ANY_MAGIC = b"tcspec.ckpt/"


def save_checkpoint(path: Path, runs: list, step: int, wall: float, source: dict | None) -> None:
    """Write the pass's state after `step` steps atomically to `path`; `runs`: the
    trainables (`tcspec.training.loop.Trainable`)."""
    state = {
        "step": step,
        "wall_s": wall,
        "members": [r.identity() for r in runs],
        "runs": [r.state_dict() for r in runs],
        "source": source,
        "rng": rng_state(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + xxhash.xxh3_128_hexdigest(payload).encode() + b"\n"
    write_bytes(path, header + payload)


def read_checkpoint(path: Path) -> dict:
    """The state in a checkpoint, after checking its checksum (ValueError naming the file
    if it is truncated or damaged: a damaged checkpoint is never used)."""
    data = Path(path).read_bytes()
    n = len(CHECKPOINT_MAGIC)
    digest, payload = data[n : n + 32], data[n + 33 :]
    if data.startswith(_ANY_MAGIC) and not data.startswith(CHECKPOINT_MAGIC):
        raise ValueError(
            f"{path} was written by another version of tcspec's trainer; delete it to train "
            "from step 0"
        )
    if not data.startswith(CHECKPOINT_MAGIC) or len(data) < n + 33:
        raise ValueError(
            f"{path} is not a complete tcspec checkpoint; delete it to train from step 0"
        )
    if xxhash.xxh3_128_hexdigest(payload).encode() != digest:
        raise ValueError(
            f"{path} is damaged (its xxh3_128 checksum differs); delete it to train from step 0"
        )
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def load_checkpoint(path: Path, runs: list, steps: int) -> dict:
    """Restore the trainables `runs` and the RNGs from `path`; returns the state (step,
    wall_s, source)."""
    state = read_checkpoint(path)
    if state["members"] != [r.identity() for r in runs]:
        raise ValueError(f"{path} was written by a different group of dictionaries; delete it")
    if state["step"] > steps:
        raise ValueError(f"{path} is at step {state['step']}, past the {steps} steps asked for")
    for run, s in zip(runs, state["runs"]):
        run.load_state_dict(s)
    set_rng_state(state["rng"])
    return state
