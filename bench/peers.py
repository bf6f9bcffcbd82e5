"""Training throughput against the peer tools, at equal shapes, on the same activation batches.

Two pairings, each a training step on batches of B tokens, fp32, CPU:

  ReLU + L1 SAE       tcspec (kind sae, relu, its default options)
                      vs SAELens `StandardTrainingSAE` driven by its `SAETrainer.step`
                      (training_forward_pass, firing statistics, backward, grad-norm clip,
                      Adam, LR and coefficient schedulers: what `SAETrainer.fit` runs per step)
  TopK transcoder     tcspec (kind transcoder, topk, k = 32, its default options)
                      vs sparsify `SparseCoder(transcode=True)`: forward with y, fvu loss,
                      backward, Adam + linear warm-up schedule (`TrainConfig(optimizer="adam")`),
                      and the did-fire bookkeeping, as `Trainer.fit` does per step; also with
                      sparsify's default optimizer (schedule-free SignSGD, "signum").

tcspec runs `tcspec.training.MemberRun.step`, the body of `train_group`'s loop (gradients by hand,
decoder renormalization and parallel-gradient removal on, which its peers skip for a
transcoder / a standard SAE). Every tool gets the same in-memory batches (a few pre-made ones,
cycled), the same thread count; warm-up steps are excluded and the steps of the tools of one
pairing interleave.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import Timing, interleaved, markdown_table, threads
from bench.train_throughput import make_batches
from tcspec.dictionaries.coders import CoderConfig
from tcspec.spec import SAESpec, TranscoderSpec
from tcspec.training import Member, MemberRun, Workspace

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
K = 32  # TopK's active features per token
L1 = 1e-3
LR = 4e-4


# --------------------------------------------------------------------------- the steps
def cycle(data: list[tuple]) -> Callable[[], tuple]:
    """Returns a function that hands out the batches in turn, forever."""
    i = [0]

    def nxt():
        b = data[i[0] % len(data)]
        i[0] += 1
        return b

    return nxt


def tcspec_step(
    kind: str, activation: str, d: int, d_sae: int, data: list[tuple], precision: str = "fp32"
):
    """One step of tcspec's trainer per call (x, y from `data`; an SAE reads x only)."""
    B = data[0][0].shape[0]
    spec_cls = SAESpec if kind == "sae" else TranscoderSpec
    opts = spec_cls(
        kind=kind, d_sae=d_sae, activation=activation, k=K if activation == "topk" else None,
        l1=L1 if activation == "relu" else 0.0, lr=LR, batch_size=B, lr_warmup_steps=10,
        precision=precision,
    )  # fmt: skip
    out_key = IN if kind == "sae" else OUT
    cfg = CoderConfig(kind, d, d, d_sae, activation=opts.activation, k=opts.k)
    m = Member("bench", opts, cfg, IN, out_key, Path(tempfile.mkdtemp()), seed=0)
    device = str(data[0][0].device)  # where the batches are: cpu, or cuda (bench/gpu.py)
    run = MemberRun(m, steps=10**6, batch_size=B, device=device)
    ws = Workspace(device)
    x0, y0 = data[0]
    run.init_biases(x0, x0 if kind == "sae" else y0)
    nxt, t = cycle(data), [0]

    def step():
        x, y = nxt()
        run.step(t[0], x, x if kind == "sae" else y, ws)
        t[0] += 1

    return step


def saelens_step(d: int, d_sae: int, data: list[tuple], autocast: bool = False):
    """One SAELens `SAETrainer.step` of a standard (ReLU + L1) SAE per call; `autocast`:
    its bf16 autocast (`SAETrainerConfig.autocast`)."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=d_sae, l1_coefficient=L1))
    return saelens_trainer_step(sae, data, autocast)


def saelens_trainer_step(sae, data: list[tuple], autocast: bool = False):
    """One SAELens `SAETrainer.step` of the training SAE `sae` per call (x from `data`)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    B = data[0][0].shape[0]
    cfg = SAETrainerConfig(
        total_training_samples=10**6 * B,
        train_batch_size_samples=B,
        lr=LR,
        lr_end=LR / 10,
        lr_warm_up_steps=10,
        autocast=autocast,
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    nxt = cycle(data)

    def step():
        trainer.maybe_reset_sparsity()
        trainer.step(nxt()[0])
        trainer.n_training_steps += 1

    return step


def sparsify_step(
    d: int, d_sae: int, data: list[tuple], optimizer: str = "adam", autocast: bool = False
):
    """One sparsify TopK-transcoder training step per call, as `Trainer.fit` runs it;
    `autocast`: its forward under bf16 autocast, as `SparseCoder.forward` has on CUDA (on a
    CPU it runs in fp32)."""
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU: the eager sparse decoder
    from sparsify.config import TranscoderConfig
    from sparsify.sparse_coder import SparseCoder

    B = data[0][0].shape[0]
    torch.manual_seed(0)
    sae = SparseCoder(d, TranscoderConfig(num_latents=d_sae, k=K), device="cpu")
    if optimizer == "adam":
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.Adam(sae.parameters(), lr=LR)
        schedulers = [get_linear_schedule_with_warmup(opt, 10, 10**6)]
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=5e-3 / (d_sae / 2**14) ** 0.5),
                                  momentum=0.95)  # fmt: skip
        opt.train()
        schedulers = []
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    did_fire = torch.zeros(d_sae, dtype=torch.bool)
    x0, y0 = data[0]
    with torch.no_grad():  # first-step bias init, as Trainer's hook does for transcoders
        sae.encoder.bias.data = -x0.mean(0) @ sae.encoder.weight.data.T
        sae.b_dec.data = y0.mean(0)
    nxt = cycle(data)

    def step():
        x, y = nxt()
        total_variance = (y - y.mean(0)).pow(2).sum()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = sae(x=x, y=y, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # the running average Trainer logs
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            since_fired.add_(B)
            since_fired[did_fire] = 0
            did_fire.zero_()

    return step


# ---------------------------------------------------------------------------- the runs
def compare(d: int, d_sae: int, batch: int, n_threads: int, rounds: int) -> dict[str, Timing]:
    """Step timings of all tools at one shape and thread count, interleaved within each
    pairing. The TopK tools run before SAELens's step is ever taken: once SAELens has
    stepped, every later step in the process runs about 2-3x slower (tcspec's and
    sparsify's alike, measured at d_in 768), so the pairings do not share a process state."""
    data = make_batches(d, d, batch)
    with threads(n_threads):
        topk = {
            "tcspec transcoder topk": tcspec_step("transcoder", "topk", d, d_sae, data),
            "sparsify topk adam": sparsify_step(d, d_sae, data, "adam"),
            "sparsify topk signum": sparsify_step(d, d_sae, data, "signum"),
        }
        out = interleaved(topk, rounds, warmup=1)
        relu = {
            "tcspec sae relu": tcspec_step("sae", "relu", d, d_sae, data),
            "saelens standard": saelens_step(d, d_sae, data),
        }
        return interleaved(relu, rounds, warmup=1) | out


PAIRS = [
    ("tcspec sae relu", "saelens standard", 1.5),
    ("tcspec transcoder topk", "sparsify topk adam", 1.0),
    ("tcspec transcoder topk", "sparsify topk signum", 1.0),
]


def run(tiny: bool = False) -> tuple[str, dict]:
    """All shapes and thread counts; returns (Markdown section, headline numbers)."""
    if tiny:
        shapes, batch, d_sae, rounds, thread_counts = [32], 256, 512, 2, [1]
    else:
        shapes, batch, d_sae, rounds, thread_counts = [256, 768], 4096, 8192, 3, [1, 2]
    rows, ratio_rows, headline = [], [], {}
    for d in shapes:
        for n in thread_counts:
            t = compare(d, d_sae, batch, n, rounds)
            for name, tm in t.items():
                rows.append([d, n, name, tm.wall("min") * 1e3, tm.wall("median") * 1e3,
                             tm.cpu("min") * 1e3, batch / tm.wall("min")])  # fmt: skip
            for ours, peer, goal in PAIRS:
                r_min = t[peer].wall("min") / t[ours].wall("min")
                r_med = t[peer].wall("median") / t[ours].wall("median")
                r_cpu = t[peer].cpu("min") / t[ours].cpu("min")
                ok = "yes" if r_min >= goal else "**no**"
                ratio_rows.append([d, n, f"{ours} / {peer}", r_min, r_med, r_cpu, goal, ok])
                headline[f"{ours} vs {peer}, d_in {d}, {n} thr (wall min)"] = r_min
                if n == 1:  # one thread: CPU time is the work, least disturbed by other jobs
                    headline[f"{ours} vs {peer}, d_in {d}, {n} thr (cpu min)"] = r_cpu
    text = "\n\n".join([
        f"Shapes: d_in = d_out in {shapes}, d_sae {d_sae}, batch {batch} tokens, fp32, CPU; "
        f"k = {K} for TopK. {rounds} interleaved rounds after 1 warm-up step each; "
        "times are per training step.",
        markdown_table(["d_in", "threads", "tool", "wall min ms", "wall median ms",
                        "cpu min ms", "tokens/s (wall min)"], rows),  # fmt: skip
        "Speed-up of tcspec (peer's step time / tcspec's; > 1 means tcspec is faster):",
        markdown_table(["d_in", "threads", "pair", "by wall min", "by wall median",
                        "by cpu min", "goal", "met"], ratio_rows),  # fmt: skip
    ])  # fmt: skip
    return text, headline
