"""Training precision on this CPU: tcspec's bf16 step against its fp32 step and the peers'.

At d_in = d_out 768, d_sae 8,192, batch 4,096 tokens, k = 32, torch's thread count (the cores):

  ReLU + L1 SAE      tcspec fp32, tcspec bf16, SAELens `SAETrainer.step` with its bf16
                     autocast (`SAETrainerConfig.autocast`)
  TopK transcoder    tcspec fp32, tcspec bf16, sparsify as it runs on a CPU (fp32: its
                     `SparseCoder.forward` autocasts on CUDA only) and under a CPU bf16
                     autocast (what its forward does on CUDA)

(the step builders of `bench.peers`). Each group's steps interleave; the TopK group runs
before SAELens ever steps (see `bench.peers.compare`). On a CPU without native bf16
(`tcspec.compute.native_bf16`: no avx512_bf16 or amx_bf16) bf16 GEMMs run ~100x slower
than fp32, so only the fp32 rows run, and the section says so.
"""

from __future__ import annotations

import torch

from bench.common import interleaved, markdown_table, threads
from bench.peers import K, saelens_step, sparsify_step, tcspec_step
from bench.train_throughput import make_batches
from tcspec.compute import cpu_features, cpu_model, native_bf16

GOALS = [
    ("tcspec relu bf16", "tcspec relu fp32", 2.0),
    ("tcspec topk bf16", "tcspec topk fp32", 2.0),
    ("tcspec relu bf16", "saelens relu bf16 autocast", 1.5),
    ("tcspec topk bf16", "sparsify topk fp32", 1.0),
    ("tcspec topk bf16", "sparsify topk bf16 autocast", 1.0),
]
"""(ours, theirs, goal): theirs' step time / ours' should reach the goal."""
FP32_ONLY = [
    ("tcspec relu fp32", "saelens relu fp32", 1.5),
    ("tcspec topk fp32", "sparsify topk fp32", 1.0),
]
"""The comparisons a CPU without native bf16 runs."""


def steps(d: int, d_sae: int, data: list[tuple], bf16: bool) -> tuple[dict, dict]:
    """(TopK group, ReLU group): name -> one training step per call."""
    topk = {"tcspec topk fp32": tcspec_step("transcoder", "topk", d, d_sae, data)}
    relu = {"tcspec relu fp32": tcspec_step("sae", "relu", d, d_sae, data)}
    if bf16:
        topk["tcspec topk bf16"] = tcspec_step("transcoder", "topk", d, d_sae, data, "bf16")
        relu["tcspec relu bf16"] = tcspec_step("sae", "relu", d, d_sae, data, "bf16")
    topk["sparsify topk fp32"] = sparsify_step(d, d_sae, data)
    if bf16:
        topk["sparsify topk bf16 autocast"] = sparsify_step(d, d_sae, data, autocast=True)
        relu["saelens relu bf16 autocast"] = saelens_step(d, d_sae, data, autocast=True)
    else:
        relu["saelens relu fp32"] = saelens_step(d, d_sae, data)
    return topk, relu


def run(tiny: bool = False) -> tuple[str, dict]:
    """The section's Markdown and headline numbers."""
    d, d_sae, batch, rounds = (32, 512, 256, 2) if tiny else (768, 8192, 4096, 3)
    n_threads, bf16 = torch.get_num_threads(), native_bf16()
    data = make_batches(d, d, batch)
    with threads(n_threads):
        topk, relu = steps(d, d_sae, data, bf16)
        t = interleaved(topk, rounds, warmup=1)  # before SAELens steps (bench.peers.compare)
        t |= interleaved(relu, rounds, warmup=1)
    rows = [[name, tm.wall("min") * 1e3, tm.wall("median") * 1e3, batch / tm.wall("min")]
            for name, tm in t.items()]  # fmt: skip
    ratio_rows, headline = [], {}
    for ours, theirs, goal in GOALS if bf16 else FP32_ONLY:
        r_min, r_med = (t[theirs].wall(h) / t[ours].wall(h) for h in ("min", "median"))
        ratio_rows.append([f"{ours} / {theirs}", r_min, r_med, goal,
                           "yes" if r_min >= goal else "**no**"])  # fmt: skip
        headline[f"precision: {theirs} / {ours} (wall min)"] = r_min
    flags = ", ".join(cpu_features()) or "none found"
    native = (
        "native bf16: yes (avx512_bf16 / amx_bf16), so the bf16 rows run"
        if bf16
        else "**native bf16: no** (no avx512_bf16 or amx_bf16): bf16 GEMMs run ~100x slower "
        "than fp32 on this CPU, so only the fp32 rows run; `precision: auto` stays fp32 here"
    )
    text = "\n\n".join([
        f"CPU: {cpu_model()}; flags: {flags}; {native}.",
        f"Shapes: d_in = d_out {d}, d_sae {d_sae}, batch {batch} tokens, k = {K} for TopK, "
        f"torch threads {n_threads}. {rounds} interleaved rounds per group after 1 warm-up step "
        "each; times are per training step.",
        markdown_table(["step", "wall min ms", "wall median ms", "tokens/s (wall min)"], rows),
        "Speed-ups (the other's step time / ours; > 1: ours is faster):",
        markdown_table(["pair", "by wall min", "by wall median", "goal", "met"], ratio_rows),
    ])  # fmt: skip
    return text, headline
