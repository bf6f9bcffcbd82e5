"""Training a cross-layer transcoder from activation batches, with bitwise resume.

A batch is a dict {full hook name: float32 [B, d]} holding every CLT layer's input and output
hook (what `tcspec.data.cache.ActivationReader.iter_batches(start_step)` yields for those
keys, or one forward pass of the model read at all layers); it is stacked to xs, ys
[L, B, d]. Each step (`tcspec.training.clt_step.train_step`): the loss of `tcspec.dictionaries.clt.clt_loss`
with the sparsity coefficient warmed up by `l1_factor(step, coef_warmup_steps)`, its
gradients written out by hand, and Adam (`tcspec.training.adam`, torch.optim.Adam's arithmetic)
at lr * `lr_factor(step, ...)` (the schedules of `tcspec.training`).

`batches` is a callable `batches(s)`, or a `tcspec.training.BatchSource` (a stream,
`tcspec.data.stream.ActivationStream`), whose `state_dict()` then goes in each checkpoint and is
loaded back on resume before `iter_batches(step)` (so a stream rebuilds its shuffle buffer
instead of replaying the steps before it).

Every `checkpoint_every` steps the whole state (step, weights, Adam state, torch RNG state,
curve, wall time, the source's state) goes atomically to the checkpoint file, checksummed in tcspec's checkpoint
format; a rerun resumes from it and ends bitwise identical to an uninterrupted run on CPU.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import xxhash
from torch import Tensor

from tcspec.atomic import atomic_write
from tcspec.compute import (
    PRECISIONS,
    Precision,
    gemm_dtype,
    gemm_mode,
    resolve_precision,
    slow_precision,
)
from tcspec.compute.determinism import rng_state, set_rng_state
from tcspec.compute.workspace import Workspace
from tcspec.dictionaries.clt import CLT, CLTConfig, CLTLoss
from tcspec.training import CHECKPOINT_MAGIC, BatchSource, l1_factor, lr_factor, read_checkpoint
from tcspec.training.adam import AdamState
from tcspec.training.clt_step import Hyper, train_step

Batches = Callable[[int], Iterator[dict[str, Tensor]]]
"""`batches(s)` yields the batches of steps s, s + 1, ... (dicts full hook name -> [B, d])."""


@dataclass(frozen=True)
class CLTTrainConfig:
    """How to train one CLT."""

    steps: int
    """Optimizer steps (one batch each)."""
    batch_size: int
    """Tokens per batch."""
    lr: float = 2e-4
    """Adam learning rate (peak)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Decay after `lr_decay_start` x steps."""
    lr_decay_start: float = 0.8
    """Fraction of the steps after which the learning rate decays."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2); eps 1e-8, no weight decay."""
    loss: CLTLoss = field(default_factory=CLTLoss)
    """The sparsity penalty and its coefficients."""
    coef_warmup_steps: int = 0
    """Linear warm-up of the sparsity coefficient."""
    seed: int = 0
    """Seeds the initial weights."""
    init_threshold: float = 0.03
    """JumpReLU initial threshold."""
    init_b_dec_from_mean: bool = True
    """Set b_dec[m] to the mean of y_m over the first batch."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    log_every: int = 0
    precision: Precision = "fp32"
    """What the dense GEMMs compute in (`tcspec.compute`): fp32, tf32 (CUDA), bf16 (bfloat16
    operands, float32 master weights and Adam moments), auto (the device's default)."""
    """Steps between curve rows; 0: steps // 200 (at least 1)."""

    def __post_init__(self):
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        for f in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_decay not in ("none", "linear", "cosine"):
            raise ValueError(f"lr_decay `{self.lr_decay}` is not none, linear or cosine")
        if self.init_threshold <= 0:
            raise ValueError(f"init_threshold must be positive, got {self.init_threshold}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision `{self.precision}` is not auto or one of {PRECISIONS}")


@dataclass
class CLTTrainResult:
    """A trained CLT and how its training went."""

    clt: CLT
    curve: list[dict]
    """One row per `log_every` steps: step, loss, mse, penalty, pre_act, fvu (of the batch,
    all layers pooled), l0 (active features per token, all layers), lr."""
    wall_s: float
    tokens_per_s: float


def stack_batch(cfg: CLTConfig, raw: dict[str, Tensor], B: int, device) -> tuple[Tensor, Tensor]:
    """{full hook name: [B, d]} -> (xs, ys) float32 [L, B, d] on `device`."""
    names = cfg.in_names + cfg.out_names
    missing = [n for n in names if n not in raw]
    if missing:
        raise ValueError(f"batch lacks hooks {missing}; it has {sorted(raw)}")
    for n in names:
        if tuple(raw[n].shape) != (B, cfg.d_model):
            raise ValueError(f"`{n}` has shape {tuple(raw[n].shape)}, want [{B}, {cfg.d_model}]")

    def stack(keys):
        return torch.stack([raw[n] for n in keys]).to(device=device, dtype=torch.float32)

    return stack(cfg.in_names), stack(cfg.out_names)


def train_clt(
    cfg: CLTConfig,
    train: CLTTrainConfig,
    batches: Batches | BatchSource,
    ckpt_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> CLTTrainResult:
    """Train a CLT for `train.steps` batches of `batches(start)`; resume from `ckpt_path`
    when it holds a checkpoint of this (cfg, train). The checkpoint is left in place for the
    caller to remove once the result is saved."""
    precision = resolve_precision(train.precision, device)
    if why := slow_precision(precision, device):
        log(f"warning: {why}")
    clt = CLT(cfg, seed=train.seed, threshold=train.init_threshold).to(device)
    clt.requires_grad_(False)
    opt = AdamState.zeros(dict(clt.named_parameters()))
    ws = Workspace(device)
    ckpt = Path(ckpt_path) if ckpt_path is not None else None
    start, wall_before, curve = 0, 0.0, []
    source = batches if isinstance(batches, BatchSource) else None
    if ckpt is not None and ckpt.exists():
        start, wall_before, curve = _load(ckpt, clt, opt, cfg, train, source)
        log(f"resuming from {ckpt} at step {start}/{train.steps}")
    log_every = train.log_every or max(1, train.steps // 200)
    t0 = time.perf_counter()
    it = iter(source.iter_batches(start) if source is not None else batches(start))
    for step in range(start, train.steps):
        raw = next(it, None)
        if raw is None:
            raise ValueError(f"batches ran out at step {step} of {train.steps}")
        xs, ys = stack_batch(cfg, raw, train.batch_size, device)
        if step == 0 and train.init_b_dec_from_mean:
            with torch.no_grad():
                clt.b_dec.copy_(ys.mean(1))
        with gemm_mode(precision, device):
            row = _step(clt, opt, train, step, xs, ys, ws, gemm_dtype(precision, xs.dtype))
        if (step + 1) % log_every == 0 or step + 1 == train.steps:
            curve.append(row)
        done = step + 1
        if ckpt is not None and done % train.checkpoint_every == 0 and done < train.steps:
            wall = wall_before + time.perf_counter() - t0
            _save(ckpt, clt, opt, cfg, train, done, wall, curve, _source_state(source))
    wall = wall_before + time.perf_counter() - t0
    tokens = (train.steps - start) * train.batch_size
    rate = tokens / (time.perf_counter() - t0) if train.steps > start else math.nan
    return CLTTrainResult(clt=clt, curve=curve, wall_s=wall, tokens_per_s=rate)


@torch.no_grad()
def _step(clt: CLT, opt: AdamState, train: CLTTrainConfig, step: int, xs, ys, ws, gemm) -> dict:
    """One Adam step; returns the step's curve row."""
    lr = train.lr * lr_factor(step, train.steps, train.lr_warmup_steps, train.lr_decay,
                              train.lr_decay_start)  # fmt: skip
    h = Hyper(train.loss, l1_factor(step, train.coef_warmup_steps), step + 1, lr,
              train.adam_betas, gemm=gemm)  # fmt: skip
    var = (ys - ys.mean(1, keepdim=True)).square().sum()
    terms = train_step(clt, opt, xs, ys, h, ws, check=lambda loss: _finite(loss, step))
    B = xs.shape[1]
    row = {"step": step + 1, "lr": lr}
    row |= {k: terms[k].item() for k in ("loss", "mse", "penalty", "pre_act")}
    row["fvu"] = (terms["mse"] * B / var).item()
    row["l0"] = (terms["count"] / B).item()
    return row


def _finite(loss: Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(
            f"step {step}: the CLT's loss is {loss.item()}; training stopped, the last good "
            "checkpoint is kept"
        )


# ---------------------------------------------------------------------------- checkpoints
def _identity(cfg: CLTConfig, train: CLTTrainConfig) -> dict:
    """What must match for a checkpoint to belong to this run (format 2: the moments of
    `AdamState`; 1 held torch.optim.Adam's)."""
    return {"cfg": dataclasses.asdict(cfg), "train": dataclasses.asdict(train), "format": 2}


def _source_state(source) -> dict | None:
    fn = getattr(source, "state_dict", None)
    return fn() if fn is not None else None


def _save(path: Path, clt, opt, cfg, train, step: int, wall: float, curve: list, source) -> None:
    state = {
        "step": step,
        "wall_s": wall,
        "identity": _identity(cfg, train),
        "weights": {k: v.detach().cpu() for k, v in clt.state_dict().items()},
        "adam": {n: _cpu(getattr(opt, n)) for n in ("exp_avg", "exp_avg_sq")},
        "rng": rng_state(),
        "curve": curve,
        "source": source,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + xxhash.xxh3_128_hexdigest(payload).encode() + b"\n"
    atomic_write(path, lambda p: p.write_bytes(header + payload))


def _cpu(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.cpu() for k, v in d.items()}


def _load(path: Path, clt, opt, cfg, train, source) -> tuple[int, float, list]:
    state = read_checkpoint(path)
    if state.get("identity") != _identity(cfg, train):
        raise ValueError(f"{path} was written for a different CLT or training; delete it")
    if state.get("source") is not None:
        fn = getattr(source, "load_state_dict", None)
        if fn is None:
            raise ValueError(f"{path} holds a data source's state, but this source cannot load it")
        fn(state["source"])
    clt.load_state_dict(state["weights"])
    for name in ("exp_avg", "exp_avg_sq"):
        for k, v in getattr(opt, name).items():
            v.copy_(state["adam"][name][k])
    set_rng_state(state["rng"])
    return state["step"], state["wall_s"], state["curve"]
