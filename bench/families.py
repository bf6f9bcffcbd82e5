"""Training step time of each dictionary family against the fp32 matmul roofline.

Families: ReLU + L1, TopK, JumpReLU, BatchTopK, Matryoshka BatchTopK (4 prefixes), each a
transcoder at d_in = d_out = 768, d_sae = 8192, batch 4096 (defaults), fp32. Batches come
from memory (a few pre-made ones, cycled), so the figure is the trainer's own cost.

The roofline is the step's five matmuls (encoder forward, decoder forward, dL/dz,
dL/dW_dec, dL/dW_enc; `train_throughput.matmul_chain`) timed on the same shapes and device:
2 B d_sae (2 d_in + 3 d_out) FLOPs. A family's "of peak" is that work over its step time;
what it spends beyond the five matmuls (top-k selection, thresholds, Matryoshka prefix
terms, aux-k) shows as the gap. Step and peak timings are interleaved; medians of wall time
(CUDA synchronised).

    python bench/families.py                 # full shapes (CPU: seconds per step)
    python bench/families.py --device cuda   # on a GPU
    python bench/families.py --tiny          # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.train_throughput import IN, OUT, make_batches, matmul_chain
from tcspec.coders import CoderConfig
from tcspec.spec import TranscoderSpec
from tcspec.train import Member, MemberRun, Workspace


def families(d_sae: int, k: int) -> dict[str, dict]:
    """Family name -> the spec options that make it."""
    quarter = [d_sae // 8, d_sae // 4, d_sae // 2]
    return {
        "relu": {"activation": "relu", "l1": 1e-4},
        "topk": {"activation": "topk", "k": k},
        "jumprelu": {"activation": "jumprelu", "l0_coef": 1e-3},
        "batchtopk": {"activation": "batchtopk", "k": k},
        "matryoshka": {"activation": "batchtopk", "k": k, "matryoshka": quarter},
    }


def make_run(opts: dict, d_in: int, d_sae: int, batch: int, device: str) -> MemberRun:
    spec = TranscoderSpec(
        kind="transcoder", d_sae=d_sae, batch_size=batch, lr_warmup_steps=10, **opts
    )
    act = opts["activation"]
    cfg = CoderConfig("transcoder", d_in, d_in, d_sae, act, opts.get("k"), IN, OUT, 0)
    m = Member("bench", spec, cfg, IN, OUT, Path(tempfile.mkdtemp()), seed=0)
    return MemberRun(m, steps=10**6, batch_size=batch, device=device)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_family(opts, d_in, d_sae, batch, rounds, device) -> tuple[float, float]:
    """(median step time, median matmul-chain time) in seconds."""
    run = make_run(opts, d_in, d_sae, batch, device)
    data = [(x.to(device), y.to(device)) for x, y in make_batches(d_in, d_in, batch)]
    ws = Workspace(device)
    run.init_biases(*data[0])
    step = [0]

    def train_step():
        x, y = data[step[0] % len(data)]
        run.step(step[0], x, y, ws)
        step[0] += 1

    with torch.device(device):
        chain = matmul_chain(d_in, d_in, d_sae, batch)
    train_step(), train_step(), chain()  # warm-up
    t_step, t_peak = [], []
    for _ in range(rounds):
        t_step.append(timed(train_step, device))
        t_peak.append(timed(chain, device))
    return statistics.median(t_step), statistics.median(t_peak)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes, runs in seconds")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.tiny:
        a.d_in, a.d_sae, a.batch, a.k, a.rounds = 32, 256, 128, 8, 2
    if a.threads or a.tiny:
        torch.set_num_threads(a.threads or 1)
    B, S, d = a.batch, a.d_sae, a.d_in
    work = 2 * B * S * (2 * d + 3 * d)
    print(f"shapes: d_in = d_out {d}, d_sae {S}, batch {B}, fp32, {a.device}; median of {a.rounds}")
    print("| family | step ms | tokens/s | matmul peak ms | of peak |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name, opts in families(S, a.k).items():
        ts, tp = bench_family(opts, d, S, B, a.rounds, a.device)
        rows.append({"family": name, "step_s": ts, "peak_s": tp, "of_peak": tp / ts})
        print(f"| {name} | {ts * 1e3:.1f} | {B / ts:,.0f} | {tp * 1e3:.1f} | {tp / ts:.2f} |")
    print(f"(executed matmul work {work / 1e9:.1f} GFLOP per step)")
    return rows


if __name__ == "__main__":
    main()
