"""A cross-layer transcoder in training: `CLTRun`, a trainable of the one loop
(`tcspec.training.loop.train`), as `tcspec.training.member.MemberRun` is for a per-layer
dictionary.

A batch is a dict {full hook name: float32 [B, d]} holding every CLT layer's input and output
hook; it is stacked to xs, ys [L, B, d]. Each step (`tcspec.training.clt_step.train_step`):
the loss of `tcspec.dictionaries.clt.clt_loss` with the sparsity coefficient warmed up by
`l1_factor(step, l1_warmup_steps)`, its gradients written out by hand, and Adam
(`tcspec.training.adam`, torch.optim.Adam's arithmetic) at lr * `lr_factor(step, ...)`.
What it trains with is its spec's options (`tcspec.spec.CLTSpec` at one sweep point, the
seed and precision resolved), read as they are: no defaults of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from tcspec.atomic import write_text
from tcspec.compute import gemm_dtype, gemm_mode, resolve_precision
from tcspec.compute.workspace import Workspace
from tcspec.dictionaries import clt_io
from tcspec.dictionaries.clt import CLT, CLTConfig, CLTLoss
from tcspec.spec import CLTSpec
from tcspec.training import clt_layout
from tcspec.training.adam import AdamState
from tcspec.training.clt_step import Hyper, train_step
from tcspec.training.member import check_resolved
from tcspec.training.schedules import l1_factor, lr_factor
from tcspec.vocab import TRAINING_FILE, d_sae_of


def clt_loss_of(opts: CLTSpec) -> CLTLoss:
    """The training objective's sparsity terms of a CLT's options."""
    return CLTLoss(
        penalty=opts.penalty, coef=opts.l1, tanh_scale=opts.tanh_scale,
        pre_act_coef=opts.pre_act_coef, bandwidth=opts.jumprelu_bandwidth,
    )  # fmt: skip


def stack_batch(cfg: CLTConfig, raw: dict[str, Tensor], B: int) -> tuple[Tensor, Tensor]:
    """{full hook name: [B, d]} -> (xs, ys) float32 [L, B, d] on the batch's device."""
    names = cfg.in_names + cfg.out_names
    missing = [n for n in names if n not in raw]
    if missing:
        raise ValueError(f"batch lacks hooks {missing}; it has {sorted(raw)}")
    for n in names:
        if tuple(raw[n].shape) != (B, cfg.d_model):
            raise ValueError(f"`{n}` has shape {tuple(raw[n].shape)}, want [{B}, {cfg.d_model}]")

    def stack(keys):
        return torch.stack([raw[n] for n in keys]).to(dtype=torch.float32)

    return stack(cfg.in_names), stack(cfg.out_names)


class CLTRun:
    """Training state of one CLT (weights, Adam's moments, curve); the loop's trainable."""

    def __init__(self, name: str, opts: CLTSpec, cfg: CLTConfig, steps: int, out_dir, device):
        _check(name, opts, cfg)
        self.name, self.opts, self.cfg, self.steps = name, opts, cfg, steps
        self.out_dir, self.device = Path(out_dir), device
        self.hooks = sorted(cfg.in_names + cfg.out_names)
        self.batch_size, self.checkpoint_every = opts.batch_size, opts.checkpoint_every
        self.precision = resolve_precision(opts.precision, device)  # fp32 | tf32 | bf16
        self.loss = clt_loss_of(opts)
        self.clt = CLT(cfg, seed=opts.seed, threshold=opts.jumprelu_init_threshold).to(device)
        self.clt.requires_grad_(False)
        self.adam = AdamState.zeros(dict(self.clt.named_parameters()))
        self.width = clt_layout.hold_for_training(self.clt, self.adam)
        """The part width its decoders are held at while it trains (None: [F, m, d])."""
        self.curve: list[dict] = []
        """One row per logged step: step, lr, loss, mse, penalty, pre_act, fvu (of the batch,
        all layers pooled), l0 (active features per token, all layers)."""
        self.last: dict = {}

    # -- state for checkpoints
    def identity(self) -> dict:
        """What must match for a checkpoint to belong to this CLT."""
        return {
            "name": self.name,
            "seed": self.opts.seed,
            "config": dataclasses.asdict(self.cfg),
            "opts": self.opts.model_dump(mode="json"),
        }

    def state_dict(self) -> dict:
        return {
            "weights": {k: v.detach().cpu() for k, v in self.clt.state_dict().items()},
            "adam": {n: _cpu(getattr(self.adam, n)) for n in ("exp_avg", "exp_avg_sq")},
            "curve": self.curve,
            "part_width": self.width,
        }

    def load_state_dict(self, s: dict) -> None:
        """The state of `state_dict`, its decoders held as this run holds them (a
        checkpoint of another CPU's part width, or of none, is converted)."""
        saved = s.get("part_width")

        def held(k: str, v: Tensor) -> Tensor:
            return clt_layout.relayout(v, saved, self.width) if k.startswith("W_dec.") else v

        self.clt.load_state_dict({k: held(k, v) for k, v in s["weights"].items()})
        for name in ("exp_avg", "exp_avg_sq"):
            for k, v in getattr(self.adam, name).items():
                v.copy_(held(k, s["adam"][name][k]))
        self.curve = s["curve"]

    # -- training
    @torch.no_grad()
    def begin(self, batch: dict[str, Tensor]) -> None:
        """b_dec[m] <- the mean of y_m over the first batch."""
        if self.opts.init_bias_from_mean:
            _, ys = stack_batch(self.cfg, batch, self.batch_size)
            self.clt.b_dec.copy_(ys.mean(1))

    def update(self, step: int, batch: dict[str, Tensor], ws: Workspace) -> None:
        """One Adam step on batch `step`; its row is `self.last`."""
        xs, ys = stack_batch(self.cfg, batch, self.batch_size)
        with gemm_mode(self.precision, self.device):
            self.last = self._step(step, xs, ys, ws, gemm_dtype(self.precision, xs.dtype))

    @torch.no_grad()
    def _step(self, step: int, xs: Tensor, ys: Tensor, ws: Workspace, gemm) -> dict:
        """One Adam step; returns the step's curve row."""
        o = self.opts
        lr = o.lr * lr_factor(step, self.steps, o.lr_warmup_steps, o.lr_decay, o.lr_decay_start)
        h = Hyper(self.loss, l1_factor(step, o.l1_warmup_steps), step + 1, lr, o.adam_betas,
                  gemm=gemm)  # fmt: skip
        var = (ys - ys.mean(1, keepdim=True)).square().sum()
        terms = train_step(self.clt, self.adam, xs, ys, h, ws, check=lambda x: _finite(x, step))
        B = xs.shape[1]
        row = {"step": step + 1, "lr": lr}
        row |= {k: terms[k].item() for k in ("loss", "mse", "penalty", "pre_act")}
        row["fvu"] = (terms["mse"] * B / var).item()
        row["l0"] = (terms["count"] / B).item()
        return row

    def record(self, step: int) -> None:
        self.curve.append(self.last)

    def latest(self) -> tuple[float, float]:
        return self.last["loss"], self.last["l0"]

    def finish(self, steps: int, wall: float) -> dict:
        """Write the CLT (`tcspec.dictionaries.clt_io.save`) and `training.json` to its
        folder; the summary."""
        tokens = steps * self.batch_size
        final = self.curve[-1]
        summary = {
            "name": self.name,
            "steps": steps,
            "tokens": tokens,
            "tokens_per_s": tokens / wall if wall > 0 else math.nan,
            "wall_s": wall,
            "fvu": final["fvu"],
            "l0": final["l0"],
            "precision": self.precision,
            "final": final,
            "curve": self.curve,
        }
        clt_layout.hold(self.clt, self.adam, self.width, None)  # the CLT's own layout, to save
        self.width = None
        clt_io.save(self.clt, self.out_dir)
        write_text(self.out_dir / TRAINING_FILE, json.dumps(summary, indent=1) + "\n")
        return summary


def _check(name: str, opts: CLTSpec, cfg: CLTConfig) -> None:
    check_resolved(name, opts)
    if opts.seed is None:
        raise ValueError(f"CLT `{name}`: its training seed is unset; resolve it first")
    if opts.activation != cfg.activation or opts.k != cfg.k or opts.skip != cfg.skip:
        raise ValueError(f"CLT `{name}`: options and CLTConfig disagree on activation/k/skip")
    d_sae = d_sae_of(cfg.d_model, opts.d_sae, opts.expansion)
    if d_sae != cfg.d_sae:
        raise ValueError(f"CLT `{name}`: options say d_sae {d_sae}, config {cfg.d_sae}")


def _finite(loss: Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(
            f"step {step}: the CLT's loss is {loss.item()}; training stopped, the last good "
            "checkpoint is kept"
        )


def _cpu(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.cpu() for k, v in d.items()}
