"""Resumable checkpoints of a training group: one checksummed file, written atomically.

The file is CHECKPOINT_MAGIC + the xxh3_128 hex digest of the payload + a newline, then the
`torch.save` bytes of {step, wall_s, members (their identities), runs (each member's
`state_dict`), source (the data source's `state_dict`, or None), rng (every generator's
state: Python's, torch's CPU and each CUDA device's, `tcspec.compute.determinism.rng_state`)}.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
import xxhash

from tcspec.atomic import write_bytes
from tcspec.compute.determinism import rng_state, set_rng_state
from tcspec.training.member import Member, MemberRun

CHECKPOINT = "train.ckpt"
CHECKPOINT_MAGIC = b"tcspec.ckpt/3 xxh3_128 "  # + 32 hex digits + newline, then torch.save bytes
_ANY_MAGIC = b"tcspec.ckpt/"


def identity(m: Member) -> dict:
    """What must match for a checkpoint to belong to this group."""
    return {
        "name": m.name,
        "seed": m.seed,
        "config": dataclasses.asdict(m.config),
        "opts": m.opts.model_dump(mode="json"),
    }


def save_checkpoint(
    path: Path, runs: list[MemberRun], step: int, wall: float, source_state: dict | None
) -> None:
    """Write the group's state after `step` steps atomically to `path`."""
    state = {
        "step": step,
        "wall_s": wall,
        "members": [identity(r.member) for r in runs],
        "runs": [r.state_dict() for r in runs],
        "source": source_state,
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


def load_checkpoint(path: Path, runs: list[MemberRun], steps: int) -> dict:
    """Restore the runs and the RNGs from `path`; returns the state (step, wall_s, source)."""
    state = read_checkpoint(path)
    if state["members"] != [identity(r.member) for r in runs]:
        raise ValueError(f"{path} was written by a different group of dictionaries; delete it")
    if state["step"] > steps:
        raise ValueError(f"{path} is at step {state['step']}, past the {steps} steps asked for")
    for run, s in zip(runs, state["runs"]):
        run.load_state_dict(s)
    set_rng_state(state["rng"])
    return state
