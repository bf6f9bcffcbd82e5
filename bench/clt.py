"""A cross-layer transcoder's training step against the fp32 matmul roofline, and against
n_layers per-layer transcoders of the same width.

Shapes (defaults, gpt2-like): 12 layers, d_model 768, 8192 features per layer, batch 4096
tokens, fp32, CPU. Batches are random and held in memory, so the figure is the step's own
cost: `tcspec.clt.model.clt_loss` (tanh penalty), autograd, torch.optim.Adam.

- CLT: one `CLT` over all layers (decoders to that and every later layer).
- per-layer: n_layers CLTs of one layer each (exactly per-layer transcoders with the same
  loss and code), each with its own Adam, stepped one after another on the same batch.

FLOPs, counted two ways (P = L (L + 1) / 2 decoder blocks):
  executed      2 B F d (2 L + 3 P): per source layer the encoder forward, the decoder
                forward, dL/da, dL/dW_dec, dL/dW_enc (no input gradient is needed)
  conventional  6 B F d (L + P) (`tcspec.clt.cost.clt_cost`, what the planner uses)
The roofline is measured here: the same executed matmuls on fresh operands, back to back,
interleaved with the steps (peak, CLT, per-layer, peak, ...; the least disturbed round of
each, by wall clock and by this process's CPU time).
Memory: each variant's peak RSS in its own subprocess (two steps), next to the estimate of
`clt_cost` (fp32 weights, gradients, Adam moments, activations).

    python bench/clt.py                # full shapes (needs ~20 GB and minutes per step)
    python bench/clt.py --tiny         # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleaved  # noqa: E402
from tcspec.clt.cost import clt_cost  # noqa: E402
from tcspec.clt.model import CLT, CLTConfig, CLTLoss, clt_loss  # noqa: E402

FULL = dict(n_layers=12, d_model=768, d_sae=8192, batch=4096)
TINY = dict(n_layers=3, d_model=32, d_sae=128, batch=256)
LOSS = CLTLoss("tanh", coef=1e-3)


def stepper(n_layers: int, d_model: int, d_sae: int, batch: int, variant: str):
    """One training step (closure) of `variant` ("clt" or "per_layer") on a fixed batch."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_layers, batch, d_model, generator=g)  # [L, B, d]
    ys = torch.randn(n_layers, batch, d_model, generator=g)
    if variant == "clt":
        parts = [(CLT(CLTConfig(n_layers, d_model, d_sae)), slice(0, n_layers))]
    else:
        parts = [
            (CLT(CLTConfig(1, d_model, d_sae), seed=i), slice(i, i + 1)) for i in range(n_layers)
        ]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-4) for m, _ in parts]

    def step():
        for (m, layers), opt in zip(parts, opts):
            loss = clt_loss(m, xs[layers], ys[layers], LOSS)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def matmuls(n_layers: int, d_model: int, d_sae: int, batch: int):
    """The CLT step's executed matmuls on fresh operands, outputs preallocated."""
    L, d, F, B = n_layers, d_model, d_sae, batch
    x, a = torch.randn(B, d), torch.randn(B, F)
    W_enc, pre, gWe = torch.randn(d, F), torch.empty(B, F), torch.empty(d, F)
    per = []
    for i in range(L):
        W = torch.randn(F, (L - i) * d)
        per.append(
            (W, torch.randn(B, (L - i) * d), torch.empty(B, (L - i) * d), torch.empty_like(W))
        )

    def run():
        for W, g, y, gW in per:
            torch.mm(x, W_enc, out=pre)  # encoder forward        [B, F]
            torch.mm(a, W, out=y)  # decoder forward              [B, (L - i) d]
            torch.mm(g, W.t(), out=pre)  # dL/da                  [B, F]
            torch.mm(a.t(), g, out=gW)  # dL/dW_dec               [F, (L - i) d]
            torch.mm(x.t(), pre, out=gWe)  # dL/dW_enc            [d, F]

    return run


def executed_flops(n_layers: int, d_model: int, d_sae: int, batch: int) -> int:
    P = n_layers * (n_layers + 1) // 2
    return 2 * batch * d_sae * d_model * (2 * n_layers + 3 * P)


def vm_hwm_kb() -> int:
    """This process's peak resident memory (kB), from /proc (ru_maxrss survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_mb(shape: dict, variant: str | None) -> float:
    """Peak RSS (MB) of a fresh process that builds `variant` and runs two steps (None:
    imports only, the baseline)."""
    code = (
        "import json, sys;"
        "import bench.clt as b; s = json.loads(sys.stdin.read());"
        "f = b.stepper(**s) if s['variant'] else (lambda: None); f(); f();"
        "print(b.vm_hwm_kb())"
    )
    root = Path(__file__).resolve().parent.parent
    arg = json.dumps(shape | {"variant": variant})
    out = subprocess.run([sys.executable, "-c", code], input=arg, capture_output=True, text=True,
                         cwd=root, check=True)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess RSS runs")
    for name in FULL:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"override {name}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = dict(TINY if args.tiny else FULL)
    shape |= {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    fns = {
        "peak": matmuls(**shape),
        "clt": stepper(**shape, variant="clt"),
        "per_layer": stepper(**shape, variant="per_layer"),
    }
    t = interleaved(fns, args.rounds)  # A, B, C, A, B, C, ...; min over rounds
    L = shape["n_layers"]
    one = executed_flops(1, shape["d_model"], shape["d_sae"], shape["batch"])
    flops = {"peak": executed_flops(**shape), "clt": executed_flops(**shape), "per_layer": L * one}
    peak = flops["peak"] / t["peak"].wall()
    cost = clt_cost(CLTConfig(L, shape["d_model"], shape["d_sae"]), shape["batch"], 1)
    rows = {}
    for variant in ("clt", "per_layer"):
        wall, cpu = t[variant].wall(), t[variant].cpu()
        rows[variant] = {
            "step_s": wall,
            "step_cpu_s": cpu,
            "tokens_per_s": shape["batch"] / wall,
            "executed_gflops": flops[variant] / 1e9,
            "fraction_of_peak": flops[variant] / wall / peak,
            "fraction_of_peak_cpu": flops[variant] / cpu / (flops["peak"] / t["peak"].cpu()),
            "peak_rss_mb": None if args.no_memory else peak_rss_mb(shape, variant),
        }
    result = {
        "shape": shape,
        "threads": args.threads,
        "matmul_peak_gflops_s": peak / 1e9,
        "matmul_peak_gflops_cpu_s": flops["peak"] / t["peak"].cpu() / 1e9,
        "clt_cost_estimate_mb": cost.mem_mb,
        "baseline_rss_mb": None if args.no_memory else peak_rss_mb(shape, None),
        "clt_conventional_gflops": cost.flops_per_step / 1e9,
        "clt_vs_per_layer_time": rows["clt"]["step_s"] / rows["per_layer"]["step_s"],
        "variants": rows,
        "this_process_peak_rss_mb": vm_hwm_kb() / 1024,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
