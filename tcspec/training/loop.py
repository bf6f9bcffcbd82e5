"""The loop: one pass over the batches trains a whole group of dictionaries.

Every member of a group (the points of a sweep, which may differ in d_sae, l1, lr and k)
sees every batch: the batch is read and moved to the device once, then each member takes
one optimizer step on it (`MemberRun.step`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import save_file
from torch import Tensor

from tcspec.atomic import atomic_write, write_text
from tcspec.compute import slow_precision
from tcspec.compute.workspace import Workspace
from tcspec.dictionaries import coders
from tcspec.spec import SWEEP_FIELDS
from tcspec.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from tcspec.training.member import Member, MemberRun
from tcspec.vocab import DENSITY_FILE, TRAINING_FILE, d_sae_of, is_live, never_fires

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
    """Train every member in one pass over `steps` batches; resume from `ckpt_dir`.

    `batches` is a `BatchSource`, or a callable `batches(i)` yielding batch i, i+1, ... Every
    `checkpoint_every` steps the full state (weights, Adam moments, step, RNG states,
    feature statistics, curves, the source's `state_dict()`) goes atomically to
    `ckpt_dir/train.ckpt`; a rerun resumes from it and ends bitwise-identical to an
    uninterrupted run on CPU. Each member's outputs go to its `out_dir`: `cfg.json` +
    `weights.safetensors`, `training.json` (curves and throughput) and `density.safetensors`.
    Returns the members' training summaries.
    """
    _check_members(members, steps)
    B = members[0].opts.batch_size
    every = min(m.opts.checkpoint_every for m in members)
    log_every = log_every or max(1, steps // 200)
    ckpt_path = Path(ckpt_dir) / CHECKPOINT
    ws = Workspace(device)
    runs = [MemberRun(m, steps, B, device) for m in members]
    for why in sorted({slow_precision(r.precision, device) for r in runs} - {None}):
        log(f"warning: {why}")
    start, wall_before = _resume(ckpt_path, runs, steps, batches, log)

    keys = sorted({k for m in members for k in (m.in_key, m.out_key)})
    bar = _progress(progress, steps, start)
    t0 = time.perf_counter()
    it = iter(batches.iter_batches(start) if isinstance(batches, BatchSource) else batches(start))
    for step in range(start, steps):
        batch = _to_device(_next(it, step, steps), keys, B, device, step)
        if step == 0:
            for run in runs:
                run.init_biases(batch[run.member.in_key], batch[run.member.out_key])
        for run in runs:
            run.step(step, batch[run.member.in_key], batch[run.member.out_key], ws)
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
    summaries = [_finish(run, steps, B, wall, device) for run in runs]
    ckpt_path.unlink(missing_ok=True)
    for s in summaries:
        log(_summary_line(s))
    return summaries


def _resume(ckpt_path: Path, runs: list[MemberRun], steps: int, batches, log) -> tuple:
    """(start step, wall seconds so far): from the checkpoint if there is one, else 0."""
    if not ckpt_path.exists():
        return 0, 0.0
    state = load_checkpoint(ckpt_path, runs, steps)
    _load_source(batches, state["source"], ckpt_path)
    log(f"resuming from {ckpt_path} at step {state['step']}/{steps}")
    return state["step"], state["wall_s"]


def _summary_line(s: dict) -> str:
    return (
        f"{s['name']}: loss {s['final'].get('loss', float('nan')):.4g} "
        f"L0 {s['final'].get('l0', float('nan')):.1f} live {s['live_fraction']:.3f} "
        f"({s['tokens_per_s']:.0f} tokens/s)"
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


def _check_members(members: list[Member], steps: int) -> None:
    if not members:
        raise ValueError("train_group needs at least one member")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"member names repeat: {names}")
    if len({m.opts.batch_size for m in members}) > 1:
        raise ValueError("members of one group must share batch_size")
    for m in members:
        o, c = m.opts, m.config
        for f in SWEEP_FIELDS:
            if isinstance(getattr(o, f), list):
                raise ValueError(f"member `{m.name}`: `{f}` is a sweep list; resolve it first")
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


def _postfix(runs: list[MemberRun], tokens_per_s: float) -> str:
    parts = [f"{tokens_per_s:.3g} tok/s"]
    for r in runs:
        last = r.log.last
        parts.append(f"{r.member.name[:12]} {float(last['loss']):.3g}/{float(last['l0']):.3g}")
    return " | ".join(parts)


def _finish(run: MemberRun, steps: int, B: int, wall: float, device) -> dict:
    m = run.member
    density = run.density().cpu()
    extra = {"name": m.name, "seed": m.seed, "training": m.opts.model_dump(mode="json")}
    coders.save(run.coder, m.out_dir, extra=extra)
    summary = {
        "name": m.name,
        "steps": steps,
        "batch_size": B,
        "tokens": steps * B,
        "wall_s": wall,
        "tokens_per_s": steps * B / wall if wall > 0 else float("nan"),
        "live_fraction": float(is_live(density, m.opts.live_threshold).float().mean()),
        "dead_fraction": float(never_fires(density).float().mean()),
        "resampled": run.log.resampled,
        "device": str(device),
        "precision": run.precision,
        "final": run.log.curve[-1] if run.log.curve else {},
        "curve": run.log.curve,
    }
    out = Path(m.out_dir)
    write_text(out / TRAINING_FILE, json.dumps(summary, indent=1) + "\n")
    tensors = {"density": density, "log10_density": torch.log10(density + 1e-10)}
    atomic_write(out / DENSITY_FILE, lambda p: save_file(tensors, str(p)))
    return summary
