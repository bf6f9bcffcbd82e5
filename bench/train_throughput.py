"""Training throughput of one transcoder against this machine's fp32 matmul peak.

Shapes (defaults): d_in = d_out = 256, d_sae = 8192, batch 4096, fp32, CPU. Batches come
from memory (a few pre-made ones, cycled), so the figure is the trainer's own cost.

FLOPs of one step, counted two ways:
  executed     2 B d_sae (2 d_in + 3 d_out): the five matmuls the step runs (encoder
               forward, decoder forward, dL/dz, dL/dW_dec, dL/dW_enc; no dL/dx is needed)
  conventional 6 B d_sae (d_in + d_out): forward + backward incl. an input gradient
Everything else (ReLU, masks, sums, Adam on 4.2M parameters) is O(B d_sae) or less and is
counted as overhead, not work.

The peak is measured here, on the same shapes: the same five torch.mm/addmm calls (with
preallocated outputs, as the trainer uses them) timed back to back. Step and peak timings
are interleaved and their medians taken, by wall clock and by this process's CPU time (on
a shared machine, CPU time with `--threads 1` is what other jobs disturb least).

    python bench/train_throughput.py            # full shapes (~1 s per step on 2 cores)
    python bench/train_throughput.py --tiny     # seconds, for a smoke test
    python bench/train_throughput.py --profile  # torch.profiler table of one step
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tcspec.dictionaries.coders import CoderConfig
from tcspec.spec import TranscoderSpec
from tcspec.training import Member, MemberRun, Workspace

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


def make_run(d_in: int, d_out: int, d_sae: int, batch: int) -> MemberRun:
    opts = TranscoderSpec(
        kind="transcoder", d_sae=d_sae, l1=1e-4, batch_size=batch, lr_warmup_steps=10
    )
    cfg = CoderConfig("transcoder", d_in, d_out, d_sae, in_hook=IN, out_hook=OUT, layer=0)
    m = Member("bench", opts, cfg, IN, OUT, Path(tempfile.mkdtemp()), seed=0)
    return MemberRun(m, steps=10**6, batch_size=batch, device="cpu")


def make_batches(d_in: int, d_out: int, batch: int, n: int = 3) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(d_in, d_out, generator=g) / d_in**0.5
    out = []
    for _ in range(n):
        x = torch.randn(batch, d_in, generator=g)
        out.append((x, torch.relu(x @ A)))
    return out


def matmul_chain(d_in: int, d_out: int, d_sae: int, batch: int):
    """The step's five matmuls on fresh operands, outputs preallocated."""
    x, g = torch.randn(batch, d_in), torch.randn(batch, d_out)
    W_enc, W_dec, b = torch.randn(d_in, d_sae), torch.randn(d_sae, d_out), torch.randn(d_sae)
    z, dz = torch.randn(batch, d_sae).relu_(), torch.empty(batch, d_sae)
    y, gWe, gWd = torch.empty(batch, d_out), torch.empty(d_in, d_sae), torch.empty(d_sae, d_out)
    pre = torch.empty(batch, d_sae)

    def run():
        torch.addmm(b, x, W_enc, out=pre)  # encoder forward   [B, S]
        torch.mm(z, W_dec, out=y)  # decoder forward            [B, d_out]
        torch.addmm(b, g, W_dec.t(), out=dz)  # dL/dz           [B, S]
        torch.mm(z.t(), g, out=gWd)  # dL/dW_dec                [S, d_out]
        torch.mm(x.t(), dz, out=gWe)  # dL/dW_enc               [d_in, S]

    return run


def timed(fn) -> tuple[float, float]:
    """(wall, CPU time of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes, runs in seconds")
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=5, help="interleaved step/peak measurements")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.d_in, a.d_sae, a.batch, a.rounds = 32, 512, 256, 3
    if a.threads or a.tiny:  # tiny ops on a busy machine: one thread avoids thread thrash
        torch.set_num_threads(a.threads or 1)
    d_in = d_out = a.d_in
    B, S = a.batch, a.d_sae

    run = make_run(d_in, d_out, S, B)
    data = make_batches(d_in, d_out, B)
    ws = Workspace("cpu")
    run.init_biases(*data[0])
    step = [0]

    def train_step():
        x, y = data[step[0] % len(data)]
        run.step(step[0], x, y, ws)
        step[0] += 1

    chain = matmul_chain(d_in, d_out, S, B)
    train_step(), chain()  # warm-up: buffers allocated, pages touched
    t_step, t_peak = [], []
    for _ in range(a.rounds):
        t_step.append(timed(train_step))
        t_peak.append(timed(chain))

    executed = 2 * B * S * (2 * d_in + 3 * d_out)
    conventional = 6 * B * S * (d_in + d_out)
    print(
        f"shapes: d_in {d_in}, d_out {d_out}, d_sae {S}, batch {B}, fp32, "
        f"{torch.get_num_threads()} threads; medians of {a.rounds} interleaved rounds"
    )
    for i, clock in enumerate(("wall", "cpu")):
        ts = statistics.median(t[i] for t in t_step)
        tp = statistics.median(t[i] for t in t_peak)
        peak = executed / tp
        print(f"[{clock} time]")
        print(f"  step: {ts * 1e3:.1f} ms  ->  {B / ts:,.0f} tokens/s")
        print(f"  matmul peak (the 5 matmuls alone): {tp * 1e3:.1f} ms = {peak / 1e9:.1f} GFLOP/s")
        print(
            f"  executed FLOPs {executed / 1e9:.2f} G/step: {executed / ts / 1e9:.1f} GFLOP/s "
            f"= {executed / ts / peak:.2f} of peak"
        )
        print(
            f"  conventional 6BS(d_in+d_out) {conventional / 1e9:.2f} G/step: "
            f"{conventional / ts / 1e9:.1f} GFLOP/s = {conventional / ts / peak:.2f} of peak"
        )

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
