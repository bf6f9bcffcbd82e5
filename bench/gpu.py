"""bf16 against fp32 on one device: the training step of per-layer ReLU and TopK
transcoders and of a CLT (ReLU and TopK), and the stream job, each with its peak memory.

    bench/gpu.sh                   # a CUDA GPU: under 5 minutes on an H100; figures to $OUT
    bench/gpu.sh --tiny            # anywhere: tiny shapes on the CPU, seconds (smoke test)

Shapes on CUDA: a per-layer transcoder at d_in = d_out 768, d_sae 24,576 (gpt2-small's
paper width), batch 4,096, ReLU + L1 or TopK (k 32); a CLT of 12 layers, d_model 768,
8,192 features a layer, batch 4,096, ReLU or TopK (k 32 a layer); the stream job of
`bench.gpu_stream` (gpt2-shaped, 12 transcoders from one stream, the model in bf16) for
``--stream-seconds`` of training in each precision.

Each step variant is built afresh (CUDA's peak-memory counter reset), stepped ``--warmup``
times, then ``--steps`` times timed (synchronised), and freed. Reported: ms a step,
tokens/s, TFLOP/s (the plan's FLOP count: 6 B F (d_in + d_out) a per-layer dictionary,
`tcspec.plan.cost.clt_cost` for a CLT; dense, so TopK's is an upper bound of what it executes),
bf16's speed-up over fp32, and peak memory above what was held before the variant was
built (the batches; CUDA: ``max_memory_allocated``, CPU: the process's peak resident
memory). Expected on an H100: ~20 s of start-up, ~1 minute of step variants (building a
CLT on the CPU takes seconds), 2 x (30 s + set-up) of stream: ~3 minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gpu_stream  # noqa: E402
from bench.clt import clt_stepper, config_of, reset_peak, rss_kb  # noqa: E402
from bench.common import markdown_table  # noqa: E402
from bench.peers import tcspec_step  # noqa: E402
from tcspec.compute import cpu_features, cpu_model  # noqa: E402
from tcspec.plan import cost  # noqa: E402

FULL = dict(d=768, d_sae=24576, batch=4096, clt=dict(n_layers=12, d_model=768, d_sae=8192,
            batch=4096, k=32))  # fmt: skip
TINY = dict(d=32, d_sae=256, batch=256, clt=dict(n_layers=3, d_model=32, d_sae=64, batch=256,
            k=8))  # fmt: skip
PRECISIONS = ("fp32", "bf16")


def peak_meter(device: str):
    """(start, read): start resets the peak; read gives the peak GB above the start."""
    if device.startswith("cuda"):

        def start():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()

        return start, lambda base: (torch.cuda.max_memory_allocated() - base) / 1e9

    def start_cpu():
        gc.collect()
        reset_peak()
        return rss_kb()[0]

    return start_cpu, lambda base: (rss_kb()[1] - base) * 1024 / 1e9


def measure(make, device: str, warmup: int, steps: int) -> dict:
    """ms a step and peak GB of the step ``make()`` builds."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start, read = peak_meter(device)
    base = start()
    step = make()
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    ms = (time.perf_counter() - t0) / steps * 1e3
    peak = read(base)
    del step
    gc.collect()
    return {"ms": ms, "peak_gb": peak}


def variants(shape: dict, device: str) -> list[tuple[str, str, object, int, int]]:
    """(what, precision, make, tokens, FLOPs) of each step variant, fp32 then bf16."""
    g = torch.Generator().manual_seed(0)
    d, F, B, c = shape["d"], shape["d_sae"], shape["batch"], shape["clt"]
    data = [tuple(torch.randn(B, d, generator=g).to(device) for _ in "xy") for _ in range(2)]
    xs, ys = (torch.randn(c["n_layers"], c["batch"], c["d_model"], generator=g).to(device)
              for _ in "xy")  # fmt: skip
    out = []
    for p in PRECISIONS:
        for act in ("relu", "topk"):
            make = partial(tcspec_step, "transcoder", act, d, F, data, p)
            out.append((f"per-layer {act}", p, make, B, cost.train_flops(B, d, d, F)))
        for act in ("relu", "topk"):
            make = partial(clt_stepper, c, xs, ys, act == "topk", p)
            cfg = config_of(c, "clt_topk" if act == "topk" else "clt")
            out.append((f"CLT {act}", p, make, c["batch"], cost.clt_cost(cfg, c["batch"], 1).flops))
    return out


def step_rows(shape: dict, device: str, warmup: int, steps: int) -> list[dict]:
    """Per-layer ReLU and TopK transcoder steps and CLT steps, fp32 and bf16."""
    rows = []
    for what, p, make, tokens, flops in variants(shape, device):
        r = measure(make, device, warmup, steps)
        rate = {"tokens_per_s": tokens / (r["ms"] / 1e3), "tflop_per_s": flops / r["ms"] / 1e9}
        rows.append({"what": what, "precision": p, "tokens": tokens, "flops": flops} | r | rate)
    return rows


def stream_rows(tiny: bool, device: str, seconds: float, steps: int | None) -> list[dict]:
    """The stream job (`bench.gpu_stream`) in fp32 and in bf16."""
    import dataclasses

    s = gpu_stream.TINY if tiny else gpu_stream.GPT2
    if steps:
        s = dataclasses.replace(s, steps=max(3, steps))
    dtype = torch.float32 if tiny else torch.bfloat16
    rows = []
    for p in PRECISIONS:
        start, read = peak_meter(device)
        base = start()
        r = gpu_stream.run(s, device, dtype, seconds, precision=p)
        rows.append({"what": "stream (12 transcoders)", "precision": p,
                     "tokens_per_s": r["train_tokens_per_s"],
                     "tflop_per_s": r["effective_tflop_per_s"], "peak_gb": read(base),
                     "estimated_gb": r["estimated_memory_gb"], "steps": r["steps"]})  # fmt: skip
    return rows


def speedups(rows: list[dict]) -> dict[str, float]:
    """bf16 tokens/s over fp32 tokens/s, by what was measured."""
    by = {(r["what"], r["precision"]): r["tokens_per_s"] for r in rows}
    return {w: by[(w, "bf16")] / by[(w, "fp32")] for w, p in by if p == "fp32"}


def report(info: dict, rows: list[dict]) -> str:
    up = speedups(rows)
    table = markdown_table(
        ["measure", "precision", "ms a step", "tokens/s", "TFLOP/s", "peak GB", "bf16 / fp32"],
        [[r["what"], r["precision"], f"{r['ms']:.1f}" if "ms" in r else "",
          f"{r['tokens_per_s']:,.0f}", f"{r['tflop_per_s']:.2f}", f"{r['peak_gb']:.2f}",
          f"{up[r['what']]:.2f}x" if r["precision"] == "bf16" else ""] for r in rows],
    )  # fmt: skip
    head = (f"{info['device']}, torch {info['torch']}, shapes {info['shapes']}; CPU "
            f"{info['cpu']} ({', '.join(info['cpu_features']) or 'no listed features'})")  # fmt: skip
    return f"## bf16 against fp32: {info['device']}\n\n{head}\n\n{table}\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke test)")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps a step variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--stream-seconds", type=float, default=30.0, help="stream training budget")
    p.add_argument("--stream-steps", type=int, default=None, help="at most this many steps")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/gpu-out")))
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if not device.startswith("cuda") and not a.tiny:
        print("no CUDA device: running the tiny shapes on the CPU", flush=True)
    tiny = a.tiny or not device.startswith("cuda")
    t0 = time.perf_counter()
    rows = step_rows(TINY if tiny else FULL, device, a.warmup, a.steps)
    rows += stream_rows(tiny, device, a.stream_seconds, a.stream_steps)
    info = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "shapes": "tiny" if tiny else "full",
        "cpu": cpu_model(), "cpu_features": cpu_features(),
        "total_s": time.perf_counter() - t0,
    }  # fmt: skip
    result = {"info": info, "rows": rows, "bf16_over_fp32": speedups(rows)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu.json").write_text(json.dumps(result, indent=1))
    (a.out / "gpu.md").write_text(report(info, rows))
    print(report(info, rows), flush=True)
    print(f"figures in {a.out / 'gpu.json'} and {a.out / 'gpu.md'} ({info['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
