"""The trainer: one pass over the activation batches trains a whole group of dictionaries.

Every member of a group (the points of a sweep, which may differ in d_sae, l1, lr and k)
sees every batch: the batch is read and moved to the device once, then each member takes
one optimizer step on it. Gradients are written out by hand (no autograd graph on the hot
path), into work buffers shared by members of equal shape.

Loss of one member on a batch of B tokens, x [B, d_in], y [B, d_out] (y = x for an SAE):

    e     = y_hat - y                                              [B, d_out]
    rec   = squared_error:  (1/B) sum_b sum_j e_bj^2                (paper: ||y - y_hat||^2)
            normalized_mse: (1/(B d_out)) sum_b sum_j e_bj^2 / ||y_b||_2   (released code)
    l1    = lambda_t * (1/B) sum_b sum_i |z_bi|      lambda_t = l1 * min(1, (t+1)/l1_warmup)
    loss  = rec + l1 (+ ghost-grad term) (+ aux_k_coef * aux-k term)

The dead-feature terms are `ghost_term` and `aux_k_term` below. After the gradient, the
component of each decoder row's gradient parallel to the row is removed, Adam steps with
lr_t (`lr_factor`), and decoder rows are renormalized to unit norm.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import xxhash
from safetensors.torch import save_file
from torch import Tensor

from tcspec import coders
from tcspec.atomic import atomic_write as _atomic
from tcspec.coders import Coder, CoderConfig
from tcspec.spec import SAESpec, SkipTranscoderSpec, TranscoderSpec

CHECKPOINT = "train.ckpt"
CHECKPOINT_MAGIC = b"tcspec.ckpt/1 xxh3_128 "  # + 32 hex digits + newline, then torch.save bytes
ADAM_EPS = 1e-8
RESAMPLE_ENC_SCALE = 0.2  # resampled encoder columns: 0.2 x mean norm of live columns


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


# ------------------------------------------------------------------------------ schedules
def lr_factor(step: int, steps: int, warmup: int, decay: str, decay_start: float) -> float:
    """Multiplier of the learning rate at 0-based `step` of `steps`.

    Linear warm-up min(1, (step+1)/warmup); then, from step t0 = floor(decay_start * steps),
    with p = (step - t0) / (steps - t0): `linear` multiplies by 1 - p, `cosine` by
    (1 + cos(pi p)) / 2, `none` by 1.
    """
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t0 = int(decay_start * steps)
    if decay != "none" and step >= t0 and steps > t0:
        p = (step - t0) / (steps - t0)
        f *= 1.0 - p if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return f


def l1_factor(step: int, warmup: int) -> float:
    """Multiplier of the L1 coefficient: linear warm-up min(1, (step+1)/warmup)."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


# --------------------------------------------------------------------- dead-feature terms
def ghost_term(pre_dead: Tensor, W_dec_dead: Tensor, e: Tensor, rec_elem: Tensor, loss: str):
    """Ghost-grad loss (Anthropic, as in the paper's released code), for the dead features.

    r = y - y_hat = -e (no gradient), g = exp(pre_dead) W_dec_dead  [B, d_out],
    g <- g * ||r|| / (2 ||g|| + 1e-6) (scale without gradient),
    q = (g - r)^2 / ||r||  [B, d_out],  term = reduce(sg(rec_elem / (q + 1e-6)) * q), with
    rec_elem the reconstruction loss's per-element term and reduce its reduction (mean over
    elements for normalized_mse, sum over dims and mean over tokens for squared_error).
    The released code used the transcoder's *input* x in r; here r is the output residual.
    """
    r = -e  # [B, d_out]
    ghost = torch.exp(pre_dead) @ W_dec_dead  # [B, n_dead] @ [n_dead, d_out] -> [B, d_out]
    r_norm = r.norm(dim=1, keepdim=True)  # [B, 1]
    scale = r_norm / (1e-6 + 2 * ghost.norm(dim=1, keepdim=True))
    ghost = ghost * scale.detach()
    q = (ghost - r).square() / r_norm  # [B, d_out]
    q = (rec_elem / (q + 1e-6)).detach() * q
    return q.mean() if loss == "normalized_mse" else q.sum() / q.shape[0]


def aux_k_term(pre_dead: Tensor, W_dec_dead: Tensor, e: Tensor, k_aux: int) -> Tensor:
    """Aux-k loss (Gao et al. 2024) on the dead features, before its coefficient.

    r = y - y_hat = -e (no gradient); z_aux keeps the k_aux largest dead pre-activations per
    token (ReLU'd); r_hat = z_aux W_dec_dead;  term = sum (r_hat - r)^2 / sum (r - mean_b r)^2.
    """
    r = -e
    k = min(k_aux, pre_dead.shape[1])
    vals, idx = pre_dead.topk(k, dim=1)  # [B, k]
    z_aux = torch.zeros_like(pre_dead).scatter(1, idx, torch.relu(vals))  # [B, n_dead]
    r_hat = z_aux @ W_dec_dead  # [B, d_out]
    return (r_hat - r).square().sum() / (r - r.mean(0)).square().sum()


def reference_loss(coder: Coder, x: Tensor, y: Tensor, opts, l1: float, dead: Tensor | None):
    """The loss with autograd through `coder` (slow; the formula `loss_and_grads` follows).

    Returns a dict of scalar tensors: loss, rec, l1, aux. `dead` is a bool mask [d_sae].
    """
    cfg = coder.cfg
    pre = coder.pre_acts(x)  # [B, d_sae]
    z = coder.activate(pre)
    e = coder.decode(z, x) - y  # [B, d_out]
    B = x.shape[0]
    if opts.loss == "squared_error":
        rec_elem = e.square()
        rec = rec_elem.sum() / B
    else:
        rec_elem = e.square() / y.norm(dim=1, keepdim=True)
        rec = rec_elem.mean()
    l1_term = l1 * z.abs().sum() / B
    aux = torch.zeros((), dtype=x.dtype)
    if dead is not None and dead.any():
        if opts.dead_features == "ghost_grads":
            aux = ghost_term(
                pre[:, dead], coder.W_dec[dead], e.detach(), rec_elem.detach(), opts.loss
            )
        elif opts.dead_features == "aux_k":
            k_aux = opts.aux_k or cfg.d_in // 2
            aux = opts.aux_k_coef * aux_k_term(pre[:, dead], coder.W_dec[dead], e.detach(), k_aux)
    return {"loss": rec + l1_term + aux, "rec": rec, "l1": l1_term, "aux": aux}


# ------------------------------------------------------------------------- the hot path
class Workspace:
    """Reusable buffers by (name, shape): members of equal shape share them."""

    def __init__(self, device, dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        key = (name, tuple(shape))
        if key not in self.buffers:
            self.buffers[key] = torch.empty(shape, device=self.device, dtype=self.dtype)
        return self.buffers[key]


@torch.no_grad()
def loss_and_grads(
    coder: Coder, x: Tensor, y: Tensor, opts, l1: float, dead_idx: Tensor | None, ws: Workspace
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """One member's loss terms and parameter gradients on a batch, without autograd.

    Returns (grads by parameter name, terms {loss, rec, l1, aux} as 0-d tensors,
    z [B, d_sae], e = y_hat - y [B, d_out]); all of these live in `ws` and are overwritten
    by the next call of the same shape. `dead_idx` lists the dead features (long [n_dead]).
    """
    cfg = coder.cfg
    B, S = x.shape[0], cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = coder.W_enc, coder.b_enc, coder.W_dec, coder.b_dec

    # forward
    xc = torch.sub(x, b_dec, out=ws.get("xc", x.shape))  # [B, d_in]
    z = torch.addmm(b_enc, xc, W_enc, out=ws.get("z", (B, S)))  # [B, S] pre-activations
    dead_mode = opts.dead_features if dead_idx is not None and len(dead_idx) else "none"
    pre_dead = z.index_select(1, dead_idx) if dead_mode in ("ghost_grads", "aux_k") else None
    if cfg.activation == "relu":
        z.clamp_min_(0)  # [B, S]
        y_hat = torch.addmm(coder.b_out, z, W_dec, out=ws.get("y_hat", y.shape))  # [B, d_out]
    else:
        # TopK: only k of S features are nonzero per token, so the decoder and every
        # gradient below touch those rows alone (gathers instead of dense matmuls)
        vals, idx = z.topk(cfg.k, dim=1)  # [B, k]
        vals.clamp_min_(0)
        z.zero_().scatter_(1, idx, vals)
        y_hat = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")  # [B, d_out]
        y_hat += coder.b_out
    if cfg.skip:
        y_hat.addmm_(x, coder.W_skip)
    e = torch.sub(y_hat, y, out=ws.get("e", y.shape))  # [B, d_out]

    # reconstruction loss and g = d rec / d y_hat
    if opts.loss == "squared_error":
        rec_elem = e.square()  # [B, d_out]
        rec = rec_elem.sum() / B
        g = e * (2.0 / B)
    else:
        inv_norm = y.norm(dim=1, keepdim=True).reciprocal_()  # [B, 1]
        rec_elem = e.square().mul_(inv_norm)
        rec = rec_elem.mean()
        g = (e * (2.0 / (B * cfg.d_out))).mul_(inv_norm)
    l1_term = z.sum() * (l1 / B)  # z >= 0, so sum |z| = sum z

    # backward into the pre-activations: dpre = (g W_dec^T + l1/B) * [z > 0]
    if cfg.activation == "relu":
        dz = ws.get("dz", (B, S))
        torch.addmm(
            torch.tensor(l1 / B, dtype=x.dtype, device=x.device), g, W_dec.t(), out=dz
        )  # [B, S]
        torch.ops.aten.threshold_backward.grad_input(dz, z, 0.0, grad_input=dz)
    else:
        rows = W_dec[idx]  # [B, k, d_out]
        dz_k = torch.bmm(rows, g.unsqueeze(2)).squeeze(2).add_(l1 / B)  # [B, k]
        dz_k.mul_(vals > 0)

    aux = torch.zeros((), dtype=x.dtype, device=x.device)
    gW_dec_dead = None
    if pre_dead is not None:
        pre_dead.requires_grad_()
        W_dec_dead = W_dec.index_select(0, dead_idx).requires_grad_()  # [n_dead, d_out]
        with torch.enable_grad():
            if dead_mode == "ghost_grads":
                aux = ghost_term(pre_dead, W_dec_dead, e, rec_elem, opts.loss)
            else:
                k_aux = opts.aux_k or cfg.d_in // 2
                aux = opts.aux_k_coef * aux_k_term(pre_dead, W_dec_dead, e, k_aux)
            gpre_dead, gW_dec_dead = torch.autograd.grad(aux, (pre_dead, W_dec_dead))
        if cfg.activation == "relu":
            dz.index_add_(1, dead_idx, gpre_dead)
        aux = aux.detach()

    # parameter gradients
    gr = {}
    if cfg.activation == "relu":
        gr["W_enc"] = torch.mm(xc.t(), dz, out=ws.get("gW_enc", W_enc.shape))  # [d_in, S]
        gr["b_enc"] = torch.sum(dz, 0, out=ws.get("gb_enc", b_enc.shape))  # [S]
        gr["W_dec"] = torch.mm(z.t(), g, out=ws.get("gW_dec", W_dec.shape))  # [S, d_out]
    else:
        flat = idx.reshape(-1)  # [B * k]
        gW_enc_t = ws.get("gW_enc_t", (S, cfg.d_in)).zero_()  # [S, d_in]
        gW_enc_t.index_add_(0, flat, (dz_k.unsqueeze(2) * xc.unsqueeze(1)).reshape(-1, cfg.d_in))
        gb_enc = ws.get("gb_enc", b_enc.shape).zero_().index_add_(0, flat, dz_k.reshape(-1))
        gW_dec = ws.get("gW_dec", W_dec.shape).zero_()  # [S, d_out]
        gW_dec.index_add_(0, flat, (vals.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, cfg.d_out))
        if pre_dead is not None:
            gW_enc_t.index_add_(0, dead_idx, torch.mm(gpre_dead.t(), xc))
            gb_enc.index_add_(0, dead_idx, gpre_dead.sum(0))
        gr["W_enc"], gr["b_enc"], gr["W_dec"] = gW_enc_t.t(), gb_enc, gW_dec
    if gW_dec_dead is not None:
        gr["W_dec"].index_add_(0, dead_idx, gW_dec_dead)
    g_out = g.sum(0)  # [d_out]
    gr["b_dec"] = torch.mv(W_enc, gr["b_enc"], out=ws.get("gb_dec", b_dec.shape)).neg_()
    if cfg.tied_bias:
        gr["b_dec"] += g_out
    else:
        gr["b_dec_out"] = g_out
    if cfg.skip:
        gr["W_skip"] = torch.mm(x.t(), g, out=ws.get("gW_skip", coder.W_skip.shape))
    terms = {"loss": rec + l1_term + aux, "rec": rec, "l1": l1_term, "aux": aux}
    return gr, terms, z, e


def remove_parallel_grad(grad: Tensor, W_dec: Tensor) -> None:
    """grad_i -= (grad_i . w_i / w_i . w_i) w_i for each decoder row w_i, in place."""
    coef = (grad * W_dec).sum(1, keepdim=True) / (W_dec * W_dec).sum(1, keepdim=True)  # [S, 1]
    grad.addcmul_(W_dec, coef, value=-1.0)


class _Run:
    """Training state of one member: its dictionary, Adam moments and feature statistics."""

    def __init__(self, m: Member, steps: int, batch_size: int, device):
        self.m, self.o, self.steps, self.B = m, m.opts, steps, batch_size
        self.coder = Coder(m.config, seed=m.seed).to(device).requires_grad_(False)
        self.params = dict(self.coder.named_parameters())
        self.exp_avg = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in self.params.items()}
        S = m.config.d_sae
        self.since_fired = torch.zeros(S, dtype=torch.long, device=device)
        self.window_counts = torch.zeros(S, dtype=torch.float64, device=device)
        self.window_steps = 0
        self.prev_counts = torch.zeros(S, dtype=torch.float64, device=device)
        self.prev_steps = 0
        self.gen = torch.Generator().manual_seed(m.seed + 1)  # resampling draws (CPU)
        self.curve: list[dict] = []
        self.resampled = 0
        self.last: dict[str, float] = {}

    # -- state for checkpoints
    def state_dict(self) -> dict:
        return {
            "params": {k: v.cpu() for k, v in self.params.items()},
            "exp_avg": {k: v.cpu() for k, v in self.exp_avg.items()},
            "exp_avg_sq": {k: v.cpu() for k, v in self.exp_avg_sq.items()},
            "since_fired": self.since_fired.cpu(),
            "window_counts": self.window_counts.cpu(),
            "window_steps": self.window_steps,
            "prev_counts": self.prev_counts.cpu(),
            "prev_steps": self.prev_steps,
            "gen": self.gen.get_state(),
            "curve": self.curve,
            "resampled": self.resampled,
            "last": self.last,
        }

    def load_state_dict(self, s: dict) -> None:
        for name in ("params", "exp_avg", "exp_avg_sq"):
            for k, v in getattr(self, name).items():
                v.copy_(s[name][k])
        for name in ("since_fired", "window_counts", "prev_counts"):
            getattr(self, name).copy_(s[name])
        self.window_steps, self.prev_steps = s["window_steps"], s["prev_steps"]
        self.gen.set_state(s["gen"])
        self.curve, self.resampled, self.last = s["curve"], s["resampled"], s["last"]

    # -- training
    @torch.no_grad()
    def init_biases(self, x: Tensor, y: Tensor) -> None:
        """b_dec <- mean of x, b_dec_out <- mean of y over the first batch."""
        if self.o.init_bias_from_mean:
            self.coder.b_dec.copy_(x.mean(0))
            if not self.m.config.tied_bias:
                self.coder.b_dec_out.copy_(y.mean(0))

    def dead_idx(self) -> Tensor | None:
        if self.o.dead_features not in ("ghost_grads", "aux_k"):
            return None
        return (self.since_fired > self.o.dead_window).nonzero().squeeze(1)

    @torch.no_grad()
    def step(self, step: int, x: Tensor, y: Tensor, ws: Workspace) -> None:
        o = self.o
        l1 = o.l1 * l1_factor(step, o.l1_warmup_steps)
        gr, terms, z, e = loss_and_grads(self.coder, x, y, o, l1, self.dead_idx(), ws)
        loss = terms["loss"].item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"step {step}: member `{self.m.name}`: loss is {loss}; training stopped, the "
                "last good checkpoint is kept"
            )
        if o.remove_parallel_grad:
            remove_parallel_grad(gr["W_dec"], self.coder.W_dec)
        lr = o.lr * lr_factor(step, self.steps, o.lr_warmup_steps, o.lr_decay, o.lr_decay_start)
        self.adam(gr, step + 1, lr, ws)
        if o.normalize_decoder:
            W = self.coder.W_dec
            W.div_(W.norm(dim=1, keepdim=True))

        # feature statistics: dz is free now, so it holds the firing indicator
        fired = torch.sign(z, out=ws.get("dz", z.shape)).sum(0)  # [S] tokens firing per feature
        self.since_fired.add_(1).masked_fill_(fired > 0, 0)
        self.window_counts += fired
        self.window_steps += 1
        if self.window_steps == o.density_window:
            self.prev_counts.copy_(self.window_counts)
            self.prev_steps = self.window_steps
            self.window_counts.zero_()
            self.window_steps = 0
        if o.dead_features == "resample" and (step + 1) % o.dead_window == 0:
            self.resample(x, y, e)
        self.last = {k: v for k, v in terms.items()} | {"l0": fired.sum() / x.shape[0], "lr": lr}

    @torch.no_grad()
    def adam(self, gr: dict[str, Tensor], t: int, lr: float, ws: Workspace) -> None:
        """Adam as torch.optim.Adam (no weight decay, eps 1e-8), in place."""
        b1, b2 = self.o.adam_betas
        bc1, bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
        for k, p in self.params.items():
            g, m, v = gr[k], self.exp_avg[k], self.exp_avg_sq[k]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = torch.sqrt(v, out=ws.get("denom", v.shape)).div_(bc2_sqrt).add_(ADAM_EPS)
            p.addcdiv_(m, denom, value=-lr / bc1)

    @torch.no_grad()
    def resample(self, x: Tensor, y: Tensor, e: Tensor) -> None:
        """Re-initialize features that have not fired for `dead_window` steps.

        Tokens are drawn with probability proportional to their squared error squared; a dead
        feature's encoder column becomes the token's unit (x - b_dec) times 0.2 x the mean
        norm of live encoder columns, its decoder row the token's unit (y - b_out), its b_enc
        0, and its Adam moments 0. The residual `e` is the batch's, before this step's update.
        (The released code's learning-rate warm-back after resampling is not reproduced.)
        """
        dead = self.since_fired >= self.o.dead_window  # [S]
        n = int(dead.sum())
        err = e.square().sum(1).square().cpu()  # [B]
        if n == 0 or not err.sum() > 0:
            return
        idx = dead.nonzero().squeeze(1)
        rows = torch.multinomial(err, n, replacement=True, generator=self.gen).to(x.device)
        c = self.coder
        xin = x[rows] - c.b_dec  # [n, d_in]
        xin /= xin.norm(dim=1, keepdim=True).clamp_min(1e-8)
        yout = y[rows] - c.b_out  # [n, d_out]
        yout /= yout.norm(dim=1, keepdim=True).clamp_min(1e-8)
        live = ~dead
        enc_norm = c.W_enc[:, live].norm(dim=0).mean() if live.any() else 1.0
        c.W_enc[:, idx] = (xin * enc_norm * RESAMPLE_ENC_SCALE).t()
        c.b_enc[idx] = 0.0
        c.W_dec[idx] = yout
        for state in (self.exp_avg, self.exp_avg_sq):
            state["W_enc"][:, idx] = 0.0
            state["b_enc"][idx] = 0.0
            state["W_dec"][idx] = 0.0
        self.since_fired[idx] = 0
        self.resampled += n

    # -- reporting
    def density(self) -> Tensor:
        """Firing frequency per feature over the last window: the last full window of
        `density_window` steps, joined by the current one while it is partial."""
        if self.window_steps == 0:
            counts, steps = self.prev_counts, self.prev_steps
        else:
            counts = self.window_counts + self.prev_counts
            steps = self.window_steps + self.prev_steps
        return (counts / max(steps * self.B, 1)).float()

    def live_fraction(self) -> float:
        return float((self.density() > self.o.live_threshold).float().mean())

    def record(self, step: int) -> dict:
        row = {"step": step + 1} | {k: float(v) for k, v in self.last.items()}
        row["live"] = self.live_fraction()
        row["dead"] = int((self.since_fired > self.o.dead_window).sum())
        self.curve.append(row)
        return row


# ---------------------------------------------------------------------------- the loop
def train_group(
    members: list[Member],
    batches: Callable[[int], Iterator[dict[str, Tensor]]],
    steps: int,
    ckpt_dir: Path,
    device="cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    log_every: int | None = None,
) -> list[dict]:
    """Train every member in one pass over `steps` batches; resume from `ckpt_dir`.

    `batches(i)` yields batch i, i+1, ...: dicts hook name -> Tensor [batch, width]. Every
    `checkpoint_every` steps the full state (weights, Adam moments, step, RNG states,
    feature statistics, curves) goes atomically to `ckpt_dir/train.ckpt`; a rerun resumes
    from it and ends bitwise-identical to an uninterrupted run on CPU. Each member's outputs
    go to its `out_dir`: `cfg.json` + `weights.safetensors`, `training.json` (curves and
    throughput) and `density.safetensors`. Returns the members' training summaries.
    """
    _check_members(members, steps)
    B = members[0].opts.batch_size
    every = min(m.opts.checkpoint_every for m in members)
    log_every = log_every or max(1, steps // 200)
    ckpt_dir = Path(ckpt_dir)
    ckpt_path = ckpt_dir / CHECKPOINT
    ws = Workspace(device)
    runs = [_Run(m, steps, B, device) for m in members]
    start, wall_before = 0, 0.0
    if ckpt_path.exists():
        start, wall_before = _load_checkpoint(ckpt_path, runs, members, steps)
        log(f"resuming from {ckpt_path} at step {start}/{steps}")

    keys = sorted({k for m in members for k in (m.in_key, m.out_key)})
    bar = _progress(progress, steps, start)
    t0 = time.perf_counter()
    it = iter(batches(start))
    for step in range(start, steps):
        try:
            raw = next(it)
        except StopIteration:
            raise ValueError(f"batches ran out at step {step} of {steps}") from None
        batch = _to_device(raw, keys, B, device, step)
        if step == 0:
            for run in runs:
                run.init_biases(batch[run.m.in_key], batch[run.m.out_key])
        for run in runs:
            run.step(step, batch[run.m.in_key], batch[run.m.out_key], ws)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            for run in runs:
                run.record(step)
        if bar is not None:
            bar.update(1)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                bar.set_postfix_str(
                    _postfix(runs, (step + 1 - start) * B / (time.perf_counter() - t0))
                )
        if (step + 1) % every == 0 and step + 1 < steps:
            _save_checkpoint(
                ckpt_path, runs, members, step + 1, wall_before + time.perf_counter() - t0
            )
    if bar is not None:
        bar.close()

    wall = wall_before + time.perf_counter() - t0
    summaries = [_finish(run, steps, B, wall, device) for run in runs]
    ckpt_path.unlink(missing_ok=True)
    for s in summaries:
        log(
            f"{s['name']}: loss {s['final'].get('loss', float('nan')):.4g} "
            f"L0 {s['final'].get('l0', float('nan')):.1f} live {s['live_fraction']:.3f} "
            f"({s['tokens_per_s']:.0f} tokens/s)"
        )
    return summaries


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
        for f in ("l1", "lr", "k", "d_sae", "expansion"):
            if isinstance(getattr(o, f), list):
                raise ValueError(f"member `{m.name}`: `{f}` is a sweep list; resolve it first")
        if o.kind != c.kind or o.activation != c.activation or o.k != c.k:
            raise ValueError(f"member `{m.name}`: options and CoderConfig disagree on kind/k")
        d_sae = o.d_sae if o.d_sae is not None else o.expansion * c.d_in
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


def _postfix(runs: list[_Run], tokens_per_s: float) -> str:
    parts = [f"{tokens_per_s:.3g} tok/s"]
    for r in runs:
        parts.append(f"{r.m.name[:12]} {float(r.last['loss']):.3g}/{float(r.last['l0']):.3g}")
    return " | ".join(parts)


def _save_checkpoint(path: Path, runs: list[_Run], members: list[Member], step: int, wall: float):
    state = {
        "step": step,
        "wall_s": wall,
        "members": [_identity(m) for m in members],
        "runs": [r.state_dict() for r in runs],
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + xxhash.xxh3_128_hexdigest(payload).encode() + b"\n"
    _atomic(path, lambda p: p.write_bytes(header + payload))


def read_checkpoint(path: Path) -> dict:
    """The state in a checkpoint, after checking its checksum (ValueError naming the file
    if it is truncated or damaged: a damaged checkpoint is never used)."""
    data = Path(path).read_bytes()
    n = len(CHECKPOINT_MAGIC)
    digest, payload = data[n : n + 32], data[n + 33 :]
    if not data.startswith(CHECKPOINT_MAGIC) or len(data) < n + 33:
        raise ValueError(
            f"{path} is not a complete tcspec checkpoint; delete it to train from step 0"
        )
    if xxhash.xxh3_128_hexdigest(payload).encode() != digest:
        raise ValueError(
            f"{path} is damaged (its xxh3_128 checksum differs); delete it to train from step 0"
        )
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def _load_checkpoint(path: Path, runs: list[_Run], members: list[Member], steps: int):
    state = read_checkpoint(path)
    if state["members"] != [_identity(m) for m in members]:
        raise ValueError(f"{path} was written by a different group of dictionaries; delete it")
    if state["step"] > steps:
        raise ValueError(f"{path} is at step {state['step']}, past the {steps} steps asked for")
    for run, s in zip(runs, state["runs"]):
        run.load_state_dict(s)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"], state["wall_s"]


def _identity(m: Member) -> dict:
    """What must match for a checkpoint to belong to this group."""
    return {
        "name": m.name,
        "seed": m.seed,
        "config": dataclasses.asdict(m.config),
        "opts": m.opts.model_dump(mode="json"),
    }


def _finish(run: _Run, steps: int, B: int, wall: float, device) -> dict:
    m = run.m
    density = run.density().cpu()
    coders.save(
        run.coder,
        m.out_dir,
        extra={"name": m.name, "seed": m.seed, "training": m.opts.model_dump(mode="json")},
    )
    summary = {
        "name": m.name,
        "steps": steps,
        "batch_size": B,
        "tokens": steps * B,
        "wall_s": wall,
        "tokens_per_s": steps * B / wall if wall > 0 else float("nan"),
        "live_fraction": float((density > m.opts.live_threshold).float().mean()),
        "dead_fraction": float((density == 0).float().mean()),
        "resampled": run.resampled,
        "device": str(device),
        "final": run.curve[-1] if run.curve else {},
        "curve": run.curve,
    }
    out = Path(m.out_dir)
    _atomic(out / "training.json", lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    tensors = {"density": density, "log10_density": torch.log10(density + 1e-10)}
    _atomic(out / "density.safetensors", lambda p: save_file(tensors, str(p)))
    return summary
