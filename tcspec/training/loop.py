"""The loop: one pass over the batches trains a whole group of dictionaries.

What it drives are trainables (`Trainable`): a per-layer dictionary of a group
(`tcspec.training.member.MemberRun`) or a cross-layer transcoder
(`tcspec.training.clt.CLTRun`). Every trainable sees every batch: the batch is read and
moved to the device once, then each takes one optimizer step on it. The loop owns the
schedule of the pass: batching (from the cache or a stream), checkpoints with every RNG
state and the source's position, resume, progress and the curves' cadence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from tcspec.compute import slow_precision
from tcspec.compute.workspace import Workspace
from tcspec.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from tcspec.training.member import Member, MemberRun, check_resolved
from tcspec.vocab import d_sae_of

Batches = Callable[[int], Iterator[dict[str, Tensor]]]


@runtime_checkable
class BatchSource(Protocol):
    """A data source whose position can live in the trainer's checkpoint.

    `iter_batches(start_step)` yields batch start_step, start_step + 1, ...: dicts hook name
    -> Tensor [batch, width]. Optionally `state_dict() -> dict` (tensors allowed), called at
    each checkpoint after the batches up to it were consumed, and `load_state_dict(dict)`,
    called on resume before `iter_batches(start_step)`.
    """

    def iter_batches(self, start_step: int) -> Iterator[dict[str, Tensor]]: ...


class Trainable(Protocol):
    """One dictionary in training, as the loop drives it."""

    name: str
    hooks: list[str]  # the batch keys it reads
    batch_size: int
    checkpoint_every: int
    precision: str  # resolved: fp32 | tf32 | bf16

    def identity(self) -> dict:
        """What must match for a checkpoint to belong to it."""

    def begin(self, batch: dict[str, Tensor]) -> None:
        """Before step 0, on the first batch (biases from its means)."""

    def update(self, step: int, batch: dict[str, Tensor], ws: Workspace) -> None:
        """One optimizer step on batch `step` (hook name -> [B, width] on the device)."""

    def record(self, step: int) -> None:
        """Append the last step's row to the curve."""

    def latest(self) -> tuple[float, float]:
        """(loss, L0) of the last step, for the progress bar."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def finish(self, steps: int, wall: float) -> dict:
        """Save the outputs; returns the training summary (name, final row, tokens_per_s)."""


def train_group(
    members: list[Member],
    batches: Batches | BatchSource,
    steps: int,
    ckpt_dir: Path,
    device="cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    log_every: int | None = None,
) -> list[dict]:
    """Train every per-layer member in one pass (`train`). Each member's outputs go to its
    `out_dir`: `cfg.json` + `weights.safetensors`, `training.json` (curves and throughput)
    and `density.safetensors`. Returns the members' training summaries."""
    _check_members(members)
    runs = [MemberRun(m, steps, m.opts.batch_size, device) for m in members]
    return train(runs, batches, steps, ckpt_dir, device, progress, log, log_every)


def train(
    runs: list[Trainable],
    batches: Batches | BatchSource,
    steps: int,
    ckpt_dir: Path,
    device="cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    log_every: int | None = None,
) -> list[dict]:
    """Train every trainable in one pass over `steps` batches; resume from `ckpt_dir`.

    `batches` is a `BatchSource`, or a callable `batches(i)` yielding batch i, i+1, ... Every
    `checkpoint_every` steps the full state (each trainable's `state_dict`, the step, RNG
    states, the source's `state_dict()`) goes atomically to `ckpt_dir/train.ckpt`; a rerun
    resumes from it and ends bitwise-identical to an uninterrupted run on CPU. Returns the
    trainables' summaries (`Trainable.finish`); the checkpoint is removed once they are
    saved.
    """
    B, every = _common(runs, steps)
    log_every = log_every or max(1, steps // 200)
    ckpt_path = Path(ckpt_dir) / CHECKPOINT
    ws = Workspace(device)
    for why in sorted({slow_precision(r.precision, device) for r in runs} - {None}):
        log(f"warning: {why}")
    start, wall_before = _resume(ckpt_path, runs, steps, batches, log)

    keys = sorted({k for r in runs for k in r.hooks})
    bar = _progress(progress, steps, start)
    t0 = time.perf_counter()
    it = iter(batches.iter_batches(start) if isinstance(batches, BatchSource) else batches(start))
    for step in range(start, steps):
        batch = _to_device(_next(it, step, steps), keys, B, device, step)
        if step == 0:
            for run in runs:
                run.begin(batch)
        for run in runs:
            run.update(step, batch, ws)
        logged = (step + 1) % log_every == 0 or step + 1 == steps
        if logged:
            for run in runs:
                run.record(step)
        if bar is not None:
            bar.update(1)
            if logged:
                tps = (step + 1 - start) * B / (time.perf_counter() - t0)
                bar.set_postfix_str(_postfix(runs, tps))
        if (step + 1) % every == 0 and step + 1 < steps:
            wall = wall_before + time.perf_counter() - t0
            save_checkpoint(ckpt_path, runs, step + 1, wall, _source_state(batches))
    if bar is not None:
        bar.close()

    wall = wall_before + time.perf_counter() - t0
    summaries = [run.finish(steps, wall) for run in runs]
    ckpt_path.unlink(missing_ok=True)
    for s in summaries:
        log(_summary_line(s))
    return summaries


def _common(runs: list[Trainable], steps: int) -> tuple[int, int]:
    """(batch size, steps between checkpoints) of a pass, after checking it."""
    if not runs:
        raise ValueError("a training pass needs at least one dictionary")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"member names repeat: {names}")
    if len({r.batch_size for r in runs}) > 1:
        raise ValueError("members of one group must share batch_size")
    return runs[0].batch_size, min(r.checkpoint_every for r in runs)


def _resume(ckpt_path: Path, runs: list[Trainable], steps: int, batches, log) -> tuple:
    """(start step, wall seconds so far): from the checkpoint if there is one, else 0."""
    if not ckpt_path.exists():
        return 0, 0.0
    state = load_checkpoint(ckpt_path, runs, steps)
    _load_source(batches, state["source"], ckpt_path)
    log(f"resuming from {ckpt_path} at step {state['step']}/{steps}")
    return state["step"], state["wall_s"]


def _summary_line(s: dict) -> str:
    live = f" live {s['live_fraction']:.3f}" if "live_fraction" in s else ""
    return (
        f"{s['name']}: loss {s['final'].get('loss', float('nan')):.4g} "
        f"L0 {s['final'].get('l0', float('nan')):.1f}{live} ({s['tokens_per_s']:.0f} tokens/s)"
    )


def _next(it: Iterator, step: int, steps: int) -> dict:
    try:
        return next(it)
    except StopIteration:
        raise ValueError(f"batches ran out at step {step} of {steps}") from None


def _source_state(batches) -> dict | None:
    fn = getattr(batches, "state_dict", None) if isinstance(batches, BatchSource) else None
    return fn() if fn is not None else None


def _load_source(batches, state: dict | None, path: Path) -> None:
    if state is None:
        return
    fn = getattr(batches, "load_state_dict", None) if isinstance(batches, BatchSource) else None
    if fn is None:
        raise ValueError(f"{path} holds a data source's state, but this source cannot load it")
    fn(state)


def _check_members(members: list[Member]) -> None:
    if not members:
        raise ValueError("train_group needs at least one member")
    for m in members:
        o, c = m.opts, m.config
        check_resolved(m.name, o)
        if o.kind != c.kind or o.activation != c.activation or o.k != c.k:
            raise ValueError(f"member `{m.name}`: options and CoderConfig disagree on kind/k")
        d_sae = d_sae_of(c.d_in, o.d_sae, o.expansion)
        if d_sae != c.d_sae:
            raise ValueError(f"member `{m.name}`: options say d_sae {d_sae}, config {c.d_sae}")
        if c.kind == "sae" and m.in_key != m.out_key:
            raise ValueError(f"member `{m.name}`: an SAE reads and writes one hook")


def _to_device(raw: dict, keys: list[str], B: int, device, step: int) -> dict[str, Tensor]:
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ValueError(f"batch {step} lacks hooks {missing}; it has {sorted(raw)}")
    out = {}
    for k in keys:
        t = raw[k]
        if t.ndim != 2 or t.shape[0] != B:
            raise ValueError(f"batch {step}: `{k}` has shape {tuple(t.shape)}, want [{B}, d]")
        out[k] = t.to(device=device, dtype=torch.float32, non_blocking=True)
    return out


def _progress(progress: bool, steps: int, start: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)


def _postfix(runs: list[Trainable], tokens_per_s: float) -> str:
    parts = [f"{tokens_per_s:.3g} tok/s"]
    for r in runs:
        loss, l0 = r.latest()
        parts.append(f"{r.name[:12]} {loss:.3g}/{l0:.3g}")
    return " | ".join(parts)
