"""Training step time of each dictionary family: against the fp32 matmul roofline, and
JumpReLU and BatchTopK against SAELens's trainers for those families.

Families: ReLU + L1, TopK, JumpReLU, BatchTopK, Matryoshka BatchTopK (4 prefixes), each a
transcoder at d_in = d_out = 768, d_sae = 8192, batch 4096 (defaults), fp32. Batches come
from memory (a few pre-made ones, cycled), so the figure is the trainer's own cost.

The roofline is the step's five matmuls (encoder forward, decoder forward, dL/dz,
dL/dW_dec, dL/dW_enc; `train_throughput.matmul_chain`) timed on the same shapes and device:
2 B d_sae (2 d_in + 3 d_out) FLOPs. A family's "of peak" is that work over its step time;
what it spends beyond the five matmuls (top-k selection, thresholds, Matryoshka prefix
terms, aux-k) shows as the gap. Step and peak timings are interleaved.

The peer pairings are SAEs (SAELens trains SAEs): tcspec's `MemberRun.step` against
SAELens's `SAETrainer.step` on `JumpReLUTrainingSAE` (the step L0 form, l0_coefficient,
bandwidth 0.05 and init threshold 0.01 on both sides) and on `BatchTopKTrainingSAE` (k; its
aux loss beside tcspec's aux-k), interleaved in one process after the roofline table (once
SAELens has stepped, later steps in a process run slower; `bench.peers`).

    python -m bench --only families [--tiny]     # the section, CPU, one thread
    python bench/families.py --device cuda       # the roofline table on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import interleaved, markdown_table, threads
from bench.peers import cycle, saelens_trainer_step
from bench.train_throughput import IN, OUT, make_batches, matmul_chain
from tcspec.dictionaries.coders import CoderConfig
from tcspec.spec import SAESpec, TranscoderSpec
from tcspec.training import Member, MemberRun, Workspace

L0_COEF = 1e-3  # JumpReLU's L0 coefficient in both tools


def families(d_sae: int, k: int) -> dict[str, dict]:
    """Family name -> the spec options that make it."""
    quarter, aux = [d_sae // 8, d_sae // 4, d_sae // 2], {"dead_features": "aux_k"}
    return {
        "relu": {"activation": "relu", "l1": 1e-4},
        "topk": {"activation": "topk", "k": k},
        "jumprelu": {"activation": "jumprelu", "l0_coef": L0_COEF},
        "batchtopk": {"activation": "batchtopk", "k": k} | aux,
        "matryoshka": {"activation": "batchtopk", "k": k, "matryoshka": quarter} | aux,
    }


def make_run(opts: dict, d_in: int, d_sae: int, batch: int, device: str, kind="transcoder"):
    """A `MemberRun` of one family (a transcoder d_in -> d_in, or an SAE on d_in)."""
    spec_cls = SAESpec if kind == "sae" else TranscoderSpec
    spec = spec_cls(kind=kind, d_sae=d_sae, batch_size=batch, lr_warmup_steps=10, **opts)
    out = IN if kind == "sae" else OUT
    cfg = CoderConfig(kind, d_in, d_in, d_sae, opts["activation"], opts.get("k"), IN, out, 0)
    m = Member("bench", spec, cfg, IN, out, Path(tempfile.mkdtemp()), seed=0)
    return MemberRun(m, steps=10**6, batch_size=batch, device=device)


def step_fn(run: MemberRun, data: list[tuple], device: str = "cpu"):
    """One `MemberRun.step` per call on the batches in turn (an SAE reads x only)."""
    sae = run.member.config.kind == "sae"
    data = [(x.to(device), x.to(device) if sae else y.to(device)) for x, y in data]
    ws, nxt, t = Workspace(device), cycle(data), [0]
    run.init_biases(*data[0])

    def step():
        run.step(t[0], *nxt(), ws)
        t[0] += 1

    return step


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
    train_step = step_fn(run, make_batches(d_in, d_in, batch), device)
    with torch.device(device):
        chain = matmul_chain(d_in, d_in, d_sae, batch)
    train_step(), train_step(), chain()  # warm-up
    t_step, t_peak = [], []
    for _ in range(rounds):
        t_step.append(timed(train_step, device))
        t_peak.append(timed(chain, device))
    return statistics.median(t_step), statistics.median(t_peak)


def roofline_rows(d: int, S: int, B: int, k: int, rounds: int, device: str) -> list[list]:
    """[family, step ms, tokens/s, matmul peak ms, of peak] per family."""
    rows = []
    for name, opts in families(S, k).items():
        ts, tp = bench_family(opts, d, S, B, rounds, device)
        rows.append([name, ts * 1e3, B / ts, tp * 1e3, tp / ts])
    return rows


def saelens_sae(family: str, d: int, d_sae: int, k: int):
    """SAELens's training SAE of `family` (jumprelu or batchtopk), at its defaults."""
    if family == "jumprelu":
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

        cfg = JumpReLUTrainingSAEConfig(d_in=d, d_sae=d_sae, l0_coefficient=L0_COEF)
        return JumpReLUTrainingSAE(cfg)
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=k))


def peer_rows(d: int, S: int, B: int, k: int, rounds: int) -> tuple[list[list], dict]:
    """Interleaved tcspec / SAELens SAE steps per family: rows and SAELens / tcspec ratios."""
    data = make_batches(d, d, B)
    rows, ratios = [], {}
    for family in ("jumprelu", "batchtopk"):
        opts = families(S, k)[family]
        fns = {
            f"tcspec sae {family}": step_fn(make_run(opts, d, S, B, "cpu", "sae"), data),
            f"saelens {family}": saelens_trainer_step(saelens_sae(family, d, S, k), data),
        }
        t = interleaved(fns, rounds, warmup=1)
        for name, tm in t.items():
            rows.append([name, tm.wall("min") * 1e3, tm.wall("median") * 1e3,
                         tm.cpu("min") * 1e3, B / tm.wall("min")])  # fmt: skip
        ours, peer = t[f"tcspec sae {family}"], t[f"saelens {family}"]
        ratios[f"saelens {family} / tcspec (wall min)"] = peer.wall("min") / ours.wall("min")
        ratios[f"saelens {family} / tcspec (cpu min)"] = peer.cpu("min") / ours.cpu("min")
    return rows, ratios


def run(tiny: bool = False) -> tuple[str, dict]:
    """The section of `python -m bench`: (Markdown, headline numbers); one thread, CPU."""
    d, S, B, k, rounds = (32, 256, 128, 8, 2) if tiny else (768, 8192, 4096, 64, 3)
    with threads(1):
        roof = roofline_rows(d, S, B, k, rounds, "cpu")
        peers, ratios = peer_rows(d, S, B, k, rounds)
    work = 2 * B * S * 5 * d
    headline = {f"{r[0]} step of fp32 matmul peak (transcoder)": r[4] for r in roof} | ratios
    text = "\n\n".join([
        f"Shapes: d_in = d_out {d}, d_sae {S}, batch {B} tokens, fp32, CPU, 1 thread; k = {k} "
        f"for the TopK families, l0_coef {L0_COEF:g} for JumpReLU. Transcoders against the "
        f"step's five matmuls ({work / 1e9:.1f} GFLOP; medians of {rounds} interleaved rounds):",
        markdown_table(["family", "step ms", "tokens/s", "matmul peak ms", "of peak"], roof),
        f"SAEs against SAELens's `SAETrainer.step` ({rounds} interleaved rounds after 1 "
        "warm-up step each):",
        markdown_table(["tool", "wall min ms", "wall median ms", "cpu min ms",
                        "tokens/s (wall min)"], peers),  # fmt: skip
        "SAELens's step time over tcspec's (> 1: tcspec is faster):",
        markdown_table(["pair", "ratio"], [[n, r] for n, r in ratios.items()]),
    ])  # fmt: skip
    return text, headline


def main(argv: list[str] | None = None) -> list[list]:
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
    print(f"shapes: d_in = d_out {a.d_in}, d_sae {a.d_sae}, batch {a.batch}, fp32, {a.device}")
    rows = roofline_rows(a.d_in, a.d_sae, a.batch, a.k, a.rounds, a.device)
    print(markdown_table(["family", "step ms", "tokens/s", "matmul peak ms", "of peak"], rows))
    return rows


if __name__ == "__main__":
    main()
