"""bf16 and TF32 against fp32 on one device: the training step of per-layer ReLU and TopK
transcoders and of a CLT (ReLU and TopK), and the stream job, each with its peak memory;
then whether a stopped training pass resumes bitwise in each precision (`bench.resume`).

    bench/gpu.sh                   # a CUDA GPU: under 5 minutes on an H100; figures to $OUT
    bench/gpu.sh --tiny            # anywhere: tiny shapes on the CPU, seconds (smoke test)

Shapes on CUDA: a per-layer transcoder at d_in = d_out 768, d_sae 24,576 (gpt2-small's
paper width), batch 4,096, ReLU + L1 or TopK (k 32); a CLT of 12 layers, d_model 768,
8,192 features a layer, batch 4,096, ReLU or TopK (k 32 a layer), the TopK one also with
its decoders held in one column part a layer (`CLT topk, one part`: whole [F, d] blocks,
against the parts the CPU's caches size, which its trainer uses); the stream job of
`bench.gpu_stream` (gpt2-shaped, 12 transcoders from one stream, the model in bf16) for
``--stream-seconds`` of training in fp32 and bf16. Precisions: fp32, tf32 and bf16 on
CUDA; fp32 and bf16 on a CPU.

Each step variant is built afresh (CUDA's peak-memory counter reset), stepped ``--warmup``
times, then ``--steps`` times timed (synchronised), and freed. Reported: ms a step,
tokens/s, TFLOP/s of the FLOPs the step executes (`bench.clt.variant_flops`: TopK's
sparse products counted at their k active features, so TopK and ReLU compare per FLOP),
the speed-up over fp32, and peak memory above what was held before the variant was built
(the batches; CUDA: ``max_memory_allocated``, CPU: the process's peak resident memory). A
variant that fails (an op a device lacks) is reported with its error and the rest run on;
the figures are rewritten after every row, so a run cut short keeps what it measured (the
resume checks run first). Expected on an H100: ~20 s of start-up, seconds of resume
checks, ~2 minutes of step variants (building a CLT on the CPU takes seconds), 2 x (30 s +
set-up) of stream.
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

from bench import gpu_stream, resume  # noqa: E402
from bench.clt import clt_stepper, reset_peak, rss_kb, variant_flops  # noqa: E402
from bench.common import markdown_table  # noqa: E402
from bench.peers import K, tcspec_step  # noqa: E402
from tcspec.compute import cpu_features, cpu_model, precisions_on  # noqa: E402
from tcspec.compute.determinism import make_deterministic, settings  # noqa: E402
from tcspec.plan import cost  # noqa: E402

FULL = dict(d=768, d_sae=24576, batch=4096, clt=dict(n_layers=12, d_model=768, d_sae=8192,
            batch=4096, k=32))  # fmt: skip
TINY = dict(d=32, d_sae=256, batch=256, clt=dict(n_layers=3, d_model=32, d_sae=64, batch=256,
            k=8))  # fmt: skip
STREAM_PRECISIONS = ("fp32", "bf16")


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


def failed(e: Exception) -> str:
    """A failure in one line: its type and the first line of its message."""
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


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
    """(what, precision, make, tokens, executed FLOPs) of each step variant, precision by
    precision (fp32 first)."""
    g = torch.Generator().manual_seed(0)
    d, F, B, c = shape["d"], shape["d_sae"], shape["batch"], shape["clt"]
    data = [tuple(torch.randn(B, d, generator=g).to(device) for _ in "xy") for _ in range(2)]
    xs, ys = (torch.randn(c["n_layers"], c["batch"], c["d_model"], generator=g).to(device)
              for _ in "xy")  # fmt: skip
    one = dict(n_layers=1, d_model=d, d_sae=F, batch=B, k=K)  # a per-layer transcoder
    out = []
    for p in precisions_on(device):
        for act, sfx in (("relu", ""), ("topk", "_topk")):
            make = partial(tcspec_step, "transcoder", act, d, F, data, p)
            out.append((f"per-layer {act}", p, make, B, variant_flops(one, "per_layer" + sfx)))
        for what, topk, width in (("relu", False, None), ("topk", True, None),
                                  ("topk, one part", True, c["d_model"])):  # fmt: skip
            make = partial(clt_stepper, c, xs, ys, topk, p, width)
            flops = variant_flops(c, "clt_topk" if topk else "clt")
            out.append((f"CLT {what}", p, make, c["batch"], flops))
    return out


def step_rows(shape: dict, device: str, warmup: int, steps: int, done) -> list[dict]:
    """Per-layer ReLU and TopK transcoder steps and CLT steps in each precision; `done(rows)`
    after each."""
    rows = []
    for what, p, make, tokens, flops in variants(shape, device):
        row = {"what": what, "precision": p, "tokens": tokens, "flops": flops}
        if what == "per-layer relu":
            row["plan_flops"] = cost.train_flops(tokens, shape["d"], shape["d"], shape["d_sae"])
        try:
            r = measure(make, device, warmup, steps)
        except Exception as e:  # an op this device lacks: say which, and go on
            rows.append(row | {"error": failed(e)})
            gc.collect()  # what the failed step held (`measure` frees a step that ran)
        else:
            rate = {"tokens_per_s": tokens / (r["ms"] / 1e3), "tflop_per_s": flops / r["ms"] / 1e9}
            rows.append(row | r | rate)
        done(rows)
    return rows


def stream_rows(tiny: bool, device: str, seconds: float, steps: int | None, done) -> list[dict]:
    """The stream job (`bench.gpu_stream`) in fp32 and in bf16; `done(rows)` after each."""
    import dataclasses

    s = gpu_stream.TINY if tiny else gpu_stream.GPT2
    if steps:
        s = dataclasses.replace(s, steps=max(3, steps))
    dtype = torch.float32 if tiny else torch.bfloat16
    rows = []
    for p in STREAM_PRECISIONS:
        start, read = peak_meter(device)
        base = start()
        row = {"what": "stream (12 transcoders)", "precision": p}
        try:
            r = gpu_stream.run(s, device, dtype, seconds, precision=p)
        except Exception as e:
            rows.append(row | {"error": failed(e)})
        else:
            rows.append(row | {"tokens_per_s": r["train_tokens_per_s"],
                               "tflop_per_s": r["effective_tflop_per_s"], "peak_gb": read(base),
                               "estimated_gb": r["estimated_memory_gb"], "steps": r["steps"]})  # fmt: skip
        done(rows)
    return rows


def resume_rows(device: str) -> list[dict]:
    """`bench.resume.check` in each precision of the device (an error becomes its row)."""
    rows = []
    for p in precisions_on(device):
        try:
            rows.append(resume.check(device, p))
        except Exception as e:
            rows.append({"precision": p, "error": failed(e)})
    return rows


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Each precision's tokens/s over fp32's, by what was measured (rows that ran)."""
    by = {(r["what"], r["precision"]): r["tokens_per_s"] for r in rows if "error" not in r}
    return {p: {w: v / by[(w, "fp32")] for (w, q), v in by.items() if q == p and (w, "fp32") in by}
            for p in sorted({q for _, q in by} - {"fp32"})}  # fmt: skip


def sustained(rows: list[dict]) -> dict[str, float]:
    """A `sustained_tflops` for `tcspec plan`, by precision: the plan's FLOPs of the
    per-layer ReLU step (`tcspec.plan.cost.train_flops`) over its time."""
    return {r["precision"]: r["plan_flops"] / r["ms"] / 1e9 for r in rows
            if r["what"] == "per-layer relu" and "error" not in r}  # fmt: skip


def per_flop(rows: list[dict]) -> dict[str, float]:
    """The TopK CLT's TFLOP/s over the ReLU CLT's, by precision (>= 1: no slower per FLOP)."""
    by = {(r["what"], r["precision"]): r["tflop_per_s"] for r in rows if "error" not in r}
    return {p: by[("CLT topk", p)] / by[("CLT relu", p)]
            for (w, p) in by if w == "CLT relu" and ("CLT topk", p) in by}  # fmt: skip


def step_table(rows: list[dict]) -> str:
    up = speedups(rows)

    def cells(r: dict) -> list[str]:
        if "error" in r:
            return [r["what"], r["precision"], "failed: " + r["error"], "", "", "", ""]
        ms = f"{r['ms']:.1f}" if "ms" in r else ""
        x = up.get(r["precision"], {}).get(r["what"])
        return [r["what"], r["precision"], ms, f"{r['tokens_per_s']:,.0f}",
                f"{r['tflop_per_s']:.2f}", f"{r['peak_gb']:.2f}", f"{x:.2f}x" if x else ""]  # fmt: skip

    head = ["measure", "precision", "ms a step", "tokens/s", "TFLOP/s", "peak GB", "over fp32"]
    return markdown_table(head, [cells(r) for r in rows])


def resume_table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        if "error" in r:
            return [r["precision"], "failed: " + r["error"], "", "", ""]
        return [r["precision"], "yes" if r["bitwise"] else "no", f"{r['max_abs_diff']:.3g}",
                f"{len(r['differ'])} / {r['tensors']}", ", ".join(r["nondeterministic_ops"])]  # fmt: skip

    head = ["precision", "bitwise", "max abs diff", "tensors that differ", "ops without a "
            "deterministic kernel (warned)"]  # fmt: skip
    return markdown_table(head, [cells(r) for r in rows])


def report(result: dict) -> str:
    info, rows = result["info"], result["rows"]
    head = (f"{info['device']}, torch {info['torch']}, shapes {info['shapes']}; CPU "
            f"{info['cpu']} ({', '.join(info['cpu_features']) or 'no listed features'})")  # fmt: skip
    flop = ", ".join(f"{p} {v:.2f}" for p, v in per_flop(rows).items())
    out = [f"## bf16 and TF32 against fp32: {info['device']}", head, step_table(rows)]
    out.append(f"TopK CLT TFLOP/s over the ReLU CLT's (>= 1: no slower per FLOP): {flop or '-'}")
    plan = ", ".join(f"{p} {v:.3g}" for p, v in sustained(rows).items())
    out.append(f"`sustained_tflops` for the plan (its FLOPs of the per-layer ReLU step over "
               f"the step's time): {plan or '-'}")  # fmt: skip
    if result.get("resume"):
        s = ", ".join(f"{k} {v}" for k, v in info["determinism"].items())
        out += ["### A stopped pass resumed (bench/resume.py)", resume_table(result["resume"]), s]
    if result.get("partial"):
        out.append("(partial: the run stopped before its end)")
    return "\n\n".join(out) + "\n"


def write(out: Path, result: dict) -> None:
    """The figures so far to out/gpu.json and out/gpu.md."""
    result["bf16_over_fp32"] = speedups(result["rows"]).get("bf16", {})
    (out / "gpu.json").write_text(json.dumps(result, indent=1))
    (out / "gpu.md").write_text(report(result))


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
    make_deterministic(device)  # as a task makes it: the resume check needs it set first
    t0 = time.perf_counter()
    info = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "shapes": "tiny" if tiny else "full",
        "cpu": cpu_model(), "cpu_features": cpu_features(),
    }  # fmt: skip
    result = {"info": info, "rows": [], "resume": [], "partial": True}
    a.out.mkdir(parents=True, exist_ok=True)

    def done(rows: list[dict], before: list[dict]) -> None:
        result["rows"] = before + rows
        info["total_s"] = time.perf_counter() - t0
        write(a.out, result)
        print(step_table(rows[-1:]).splitlines()[-1], flush=True)

    result["resume"] = resume_rows(device)  # first: seconds, and nothing else checks it
    info["determinism"] = settings()
    steps = step_rows(TINY if tiny else FULL, device, a.warmup, a.steps, partial(done, before=[]))
    stream_rows(tiny, device, a.stream_seconds, a.stream_steps, partial(done, before=steps))
    info["total_s"] = time.perf_counter() - t0
    result["partial"] = False
    write(a.out, result)
    print(report(result), flush=True)
    print(f"figures in {a.out / 'gpu.json'} and {a.out / 'gpu.md'} ({info['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
