"""One member of a training group: its options, and its state while it trains (a
`tcspec.training.loop.Trainable`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from tcspec.atomic import atomic_write, write_text
from tcspec.compute import gemm_dtype, gemm_mode, resolve_precision
from tcspec.compute.workspace import Workspace
from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.spec import SWEEP_FIELDS, SAESpec, SkipTranscoderSpec, TranscoderSpec
from tcspec.training.adam import AdamState
from tcspec.training.dead import DEAD_TERMS, resample
from tcspec.training.firing import FiringStats
from tcspec.training.loss import loss_and_grads, remove_parallel_grad
from tcspec.training.schedules import l1_factor, lr_factor
from tcspec.vocab import (
    DENSITY_FILE,
    TRAINING_FILE,
    TRANSPOSED_INITS,
    is_dead,
    is_live,
    never_fires,
)


@dataclass
class Member:
    """One dictionary of a group, with its resolved (scalar) options."""

    name: str
    opts: TranscoderSpec | SkipTranscoderSpec | SAESpec
    config: CoderConfig
    in_key: str
    out_key: str
    out_dir: Path
    seed: int


@dataclass
class RunLog:
    """What a member's training reports: the curve, the resampling count, the last step."""

    curve: list[dict] = field(default_factory=list)
    resampled: int = 0
    last: dict = field(default_factory=dict)  # terms (0-d tensors), l0, lr of the last step


class MemberRun:
    """Training state of one member; `state_dict` lists the state once, by component."""

    def __init__(self, m: Member, steps: int, batch_size: int, device):
        opts = m.opts.for_run(steps, m.config.d_in, m.config.d_out)
        m = replace(m, opts=opts)  # what the run's length and widths decide
        self.member, self.steps, self.batch_size = m, steps, batch_size
        self.name, self.hooks = m.name, sorted({m.in_key, m.out_key})
        self.checkpoint_every = m.opts.checkpoint_every
        self.device = device
        self.precision = resolve_precision(m.opts.precision, device)  # fp32 | tf32 | bf16
        self.coder = Coder(m.config, seed=m.seed).to(device).requires_grad_(False)
        self.ops = m.config.family.ops  # the activation family's module
        init_encoder(self.coder, m.opts.encoder_init)
        self.enc_scale = torch.ones((), dtype=torch.float64)  # s of `transpose_scaled`
        self.params = trainable(self.coder, m.opts)  # what Adam steps
        self.act_state = self.ops.state()  # e.g. BatchTopK's running threshold estimate
        self.sync_threshold()
        self.adam = AdamState.zeros(self.params)
        self.firing = FiringStats.zeros(m.config.d_sae, device)
        self.gen = torch.Generator().manual_seed(m.seed + 1)  # resampling draws (CPU)
        self.log = RunLog()

    # -- state for checkpoints
    def identity(self) -> dict:
        """What must match for a checkpoint to belong to this member."""
        m = self.member
        return {
            "name": m.name,
            "seed": m.seed,
            "config": dataclasses.asdict(m.config),
            "opts": m.opts.model_dump(mode="json"),
        }

    def state_dict(self) -> dict:
        return {
            "params": _cpu(self.params),
            "derived": _cpu(self.derived()),
            "act_state": _cpu(self.act_state),
            "enc_scale": self.enc_scale.clone(),
            "adam": _fields_state(self.adam),
            "firing": _fields_state(self.firing),
            "gen": self.gen.get_state(),
            "log": _fields_state(self.log),
        }

    def load_state_dict(self, s: dict) -> None:
        _copy_into(self.params, s["params"])
        _copy_into(self.derived(), s["derived"])
        _copy_into(self.act_state, s["act_state"])
        self.enc_scale.copy_(s.get("enc_scale", torch.ones(())))  # absent: saved before it
        _load_fields(self.adam, s["adam"])
        _load_fields(self.firing, s["firing"])
        self.gen.set_state(s["gen"])
        _load_fields(self.log, s["log"])

    # -- training
    def begin(self, batch: dict[str, Tensor]) -> None:
        x, y = batch[self.member.in_key], batch[self.member.out_key]
        self.init_biases(x, y)
        if self.member.opts.encoder_init == "transpose_scaled":
            self.enc_scale.fill_(output_scale(x, y))
            self.coder.W_enc.mul_(float(self.enc_scale))

    def update(self, step: int, batch: dict[str, Tensor], ws: Workspace) -> None:
        self.step(step, batch[self.member.in_key], batch[self.member.out_key], ws)

    @torch.no_grad()
    def init_biases(self, x: Tensor, y: Tensor) -> None:
        """b_dec <- mean of x, b_dec_out <- mean of y over the first batch."""
        if self.member.opts.init_bias_from_mean:
            self.coder.b_dec.copy_(x.mean(0))
            if not self.member.config.tied_bias:
                self.coder.b_dec_out.copy_(y.mean(0))

    def dead_idx(self) -> Tensor | None:
        """The dead features (long [n]) when a loss term acts on them: a dead-feature term
        or JumpReLU's pre-activation loss; else None."""
        o = self.member.opts
        if o.dead_features not in DEAD_TERMS and o.pre_act_coef is None:
            return None
        return self.firing.dead(o.dead_window).nonzero().squeeze(1)

    @torch.no_grad()
    def step(self, step: int, x: Tensor, y: Tensor, ws: Workspace) -> None:
        """One optimizer step on batch `step` (x [B, d_in], y [B, d_out])."""
        o = self.member.opts
        l1 = o.l1 * l1_factor(step, o.l1_warmup_steps)
        gemm = gemm_dtype(self.precision, x.dtype)
        with gemm_mode(self.precision, self.device):
            gr, terms, codes, e = loss_and_grads(self.coder, x, y, o, l1, self.dead_idx(), ws, gemm)
        loss = terms["loss"].item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"step {step}: member `{self.member.name}`: loss is {loss}; training stopped, "
                "the last good checkpoint is kept"
            )
        if o.remove_parallel_grad:
            remove_parallel_grad(gr["W_dec"], self.coder.W_dec, ws)
        factor = lr_factor(step, self.steps, o.lr_warmup_steps, o.lr_decay, o.lr_decay_start)
        lr, lr_of = o.lr * factor, self.ops.rates(o, factor) | self.encoder_rates(o.lr * factor)
        self.adam.step(self.params, gr, step + 1, lr, o.adam_betas, lr_of)
        if o.normalize_decoder:
            W = self.coder.W_dec
            W.div_(W.norm(dim=1, keepdim=True))
        self.ops.update(self.act_state, codes, o)
        self.sync_threshold()
        fired = codes.fired(ws)  # [S] tokens each feature fired on
        self.firing.update(fired, o.density_window)
        last = step + 1 == self.steps  # features resampled then would never train
        if o.dead_features == "resample" and (step + 1) % o.dead_window == 0 and not last:
            self.resample(x, y, e)
        self.log.last = dict(terms) | {"l0": fired.sum() / x.shape[0], "lr": lr}

    def encoder_rates(self, lr: float) -> dict[str, float]:
        """The encoder's own learning rates: s x lr for `transpose_scaled` (Adam steps in
        the units where W_enc = s W_dec^T starts at the scale of W_dec^T), else none."""
        if self.member.opts.encoder_init != "transpose_scaled":
            return {}
        return {"W_enc": lr * float(self.enc_scale), "b_enc": lr * float(self.enc_scale)}

    def derived(self) -> dict[str, Tensor]:
        """The coder's tensors that Adam does not step (a threshold set from others)."""
        return {k: v for k, v in self.coder.named_parameters() if k not in self.params}

    def sync_threshold(self) -> None:
        """coder.threshold <- exp(log_threshold) (JumpReLU) or the BatchTopK estimate."""
        self.ops.sync(self.coder, self.params, self.act_state)

    def resample(self, x: Tensor, y: Tensor, e: Tensor) -> None:
        """Re-initialize the dead features (`tcspec.training.dead.resample`)."""
        o = self.member.opts
        n = resample(self.coder, self.adam, self.firing, o.dead_window, self.gen, x, y, e)
        self.log.resampled += n

    # -- reporting
    def density(self) -> Tensor:
        """Firing frequency per feature [S] over the density window."""
        return self.firing.density(self.batch_size)

    def record(self, step: int) -> dict:
        """Append the last step's terms, live fraction and dead count to the curve."""
        o = self.member.opts
        row = {"step": step + 1} | {k: float(v) for k, v in self.log.last.items()}
        row["live"] = float(is_live(self.density(), o.live_threshold).float().mean())
        row["dead"] = int(is_dead(self.firing.since_fired, o.dead_window).sum())
        self.log.curve.append(row)
        return row

    def latest(self) -> tuple[float, float]:
        return float(self.log.last["loss"]), float(self.log.last["l0"])

    def finish(self, steps: int, wall: float) -> dict:
        """Write the coder (`cfg.json` + `weights.safetensors`), `training.json` (curves and
        throughput) and `density.safetensors` to the member's `out_dir`; the summary."""
        m, B = self.member, self.batch_size
        density = self.density().cpu()
        extra = {"name": m.name, "seed": m.seed, "training": m.opts.model_dump(mode="json")}
        coders.save(self.coder, m.out_dir, extra=extra)
        summary = {
            "name": m.name,
            "steps": steps,
            "batch_size": B,
            "tokens": steps * B,
            "wall_s": wall,
            "tokens_per_s": steps * B / wall if wall > 0 else float("nan"),
            "live_fraction": float(is_live(density, m.opts.live_threshold).float().mean()),
            "dead_fraction": float(never_fires(density).float().mean()),
            "resampled": self.log.resampled,
            "device": str(self.device),
            "precision": self.precision,
            "final": self.log.curve[-1] if self.log.curve else {},
            "curve": self.log.curve,
        }
        out = Path(m.out_dir)
        write_text(out / TRAINING_FILE, json.dumps(summary, indent=1) + "\n")
        tensors = {"density": density, "log10_density": torch.log10(density + 1e-10)}
        atomic_write(out / DENSITY_FILE, lambda p: save_file(tensors, str(p)))
        return summary


def check_resolved(name: str, opts) -> None:
    """A dictionary's options at one sweep point (no list left)."""
    for f in SWEEP_FIELDS:
        if isinstance(getattr(opts, f, None), list):
            raise ValueError(f"member `{name}`: `{f}` is a sweep list; resolve it first")


@torch.no_grad()
def init_encoder(coder: Coder, how: str) -> None:
    """`transpose` and `transpose_scaled`: W_enc <- W_dec^T (unit-norm columns [d_in,
    d_sae]; d_in = d_out; `transpose_scaled` multiplies it by s on the first batch,
    `MemberRun.begin`); `kaiming` keeps the coder's own draw."""
    if how in TRANSPOSED_INITS:
        coder.W_enc.copy_(coder.W_dec.t())


def output_scale(x: Tensor, y: Tensor) -> float:
    """s = rms ||y - mean y|| / rms ||x - mean x|| over a batch x [B, d_in], y [B, d_out]:
    how much larger the output is than the input (1 for an SAE, x = y)."""
    return _spread(y) / max(_spread(x), 1e-12)


def _spread(t: Tensor) -> float:
    """rms ||t_b - mean t|| over the batch."""
    return float((t - t.mean(0)).square().sum(1).mean().sqrt())


def trainable(coder: Coder, opts) -> dict[str, Tensor]:
    """The tensors Adam steps, by name: the coder's parameters, except that a JumpReLU
    trains log(threshold) in place of its threshold and a BatchTopK estimates its own (the
    family's `trained`)."""
    params = {k: v for k, v in coder.named_parameters() if k != "threshold"}
    return params | coder.cfg.family.ops.trained(coder, opts)


# ------------------------------------------------------------------ state, generically
def _cpu(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.cpu() for k, v in d.items()}


def _copy_into(d: dict[str, Tensor], s: dict[str, Tensor]) -> None:
    for k, v in d.items():
        v.copy_(s[k])


def _is_tensor_dict(v) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(t, Tensor) for t in v.values())


def _fields_state(obj) -> dict:
    """A dataclass's fields: tensors (and dicts of tensors) moved to the CPU, the rest as is."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = v.cpu() if isinstance(v, Tensor) else _cpu(v) if _is_tensor_dict(v) else v
    return out


def _load_fields(obj, s: dict) -> None:
    """Inverse of `_fields_state`: tensors and dicts of tensors (the buffers the trainer
    holds, e.g. Adam's moments) are copied into place, the rest assigned."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor):
            v.copy_(s[f.name])
        elif _is_tensor_dict(v):
            _copy_into(v, s[f.name])
        else:
            setattr(obj, f.name, s[f.name])
