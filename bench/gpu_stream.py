"""gpt2-shaped transcoders at every layer from one stream: tokens/s and peak device memory.

The model is gpt2-small's shape (12 layers, d_model 768, d_mlp 3072, 12 heads, vocabulary
50,257, context 128) with random weights (nothing is downloaded), run in bfloat16 on CUDA;
12 transcoders (ln2.hook_normalized -> hook_mlp_out, expansion 32: d_sae 24,576, batch
4,096, fp32 master weights, the trainer's defaults otherwise) train from one
``ActivationStream`` of all 24 hooks. Training stops at ``--steps`` or when ``--seconds``
of training have passed, whichever comes first, so the run fits its time budget on any GPU;
the figures are over the steps done. Without CUDA (or with ``--tiny``) the same job runs
at tiny shapes on the CPU: the smoke test.

    bench/gpu.sh                  # on a CUDA machine: the figures
    bench/gpu.sh --tiny           # anywhere: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stream import (  # noqa: E402
    BOS,
    Shape,
    hooks_of,
    random_model,
    random_tokens,
    rows_for,
    transcoders,
)
from tcspec.compute import resolve_precision  # noqa: E402
from tcspec.data.stream import ActivationStream, StreamConfig  # noqa: E402
from tcspec.plan import cost  # noqa: E402
from tcspec.training import train_group  # noqa: E402

GPT2 = Shape("gpt2", 12, 768, 3072, 12, 50257, 128, 12, 1, 24576, 4096, 400, 64, 65536)
TINY = Shape("tiny", 12, 32, 128, 2, 512, 32, 12, 1, 64, 256, 8, 16, 1024)


class OutOfTime(Exception):
    """Raised by the batch supply when the training time budget is spent."""


def timed_batches(source: ActivationStream, seconds: float, marks: list[float]):
    """``source.iter_batches`` that records when each batch is asked for and stops once
    ``seconds`` have passed since the first."""

    def batches(start: int):
        for batch in source.iter_batches(start):
            marks.append(time.perf_counter())
            if marks[-1] - marks[0] > seconds:
                raise OutOfTime
            yield batch

    return batches


def forward_tokens_per_s(model, tokens, s: Shape, sync) -> float:
    ids = torch.as_tensor(tokens[: s.batch_contexts], dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        model(ids, return_type=None, stop_at_layer=s.n_layers)
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            model(ids, return_type=None, stop_at_layer=s.n_layers)
        sync()
    return 5 * ids.numel() / (time.perf_counter() - t0)


def run(s: Shape, device: str, dtype: torch.dtype, seconds: float, precision="auto") -> dict:
    """The stream job on ``device`` (the model in ``dtype``, the transcoders trained in
    ``precision``): its throughput, peak memory and the plan's memory estimate."""
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_start = time.perf_counter()
    model = random_model(s, device, dtype)
    tokens = random_tokens(s, rows_for(s, s.steps))
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    group = transcoders(s, root, range(s.layers), 1, dead_features="none", precision=precision)
    config = StreamConfig(
        hooks=hooks_of(group),
        batch_size=s.batch_size,
        buffer_tokens=s.buffer_tokens,
        batch_contexts=s.batch_contexts,
        exclude_tokens=(BOS,),
    )
    source = ActivationStream(model, tokens, config)
    fwd = forward_tokens_per_s(model, tokens, s, sync)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    marks: list[float] = []  # when batch i was asked for: step i - 1 had finished
    steps_done = s.steps
    try:
        train_group(group, timed_batches(source, seconds, marks), s.steps, root / "ck",
                    device=device, progress=False, log=lambda _: None)  # fmt: skip
    except OutOfTime:
        steps_done = len(marks) - 1
    # steps 1 .. len(marks) - 2, from the first mark past step 0 (which carries the buffer's
    # first fill and first-use set-ups) to the last; writing the outputs is not counted
    tps = (len(marks) - 2) * s.batch_size / (marks[-1] - marks[1])
    shape = cost.StreamShape(
        batch_size=s.batch_size, buffer_tokens=s.buffer_tokens,
        rows_per_forward=source.rows_per_forward, act_bytes=torch.finfo(dtype).bits // 8,
        model=sum(p.numel() * p.element_size() for p in model.parameters()),
    )  # fmt: skip
    estimate = cost.estimate_memory([m.config for m in group], source.widths, shape)
    per_token = cost.forward_flops_per_token(s.n_layers, s.d_model, s.d_mlp, s.context)
    flops = per_token + sum(cost.train_flops(1, c.d_in, c.d_out, c.d_sae)
                            for c in (m.config for m in group))  # fmt: skip # one token's
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": resolve_precision(precision, device),
        "shape": s.name,
        "dictionaries": len(group),
        "d_sae": s.d_sae,
        "batch_size": s.batch_size,
        "steps": steps_done,
        "train_tokens_per_s": tps,
        "dictionary_tokens_per_s": tps * len(group),
        "forward_tokens_per_s": fwd,
        "effective_tflop_per_s": tps * flops / 1e12,
        "peak_memory_gb": _peak_gb(cuda),
        "estimated_memory_gb": estimate.total / 1e9,
        "estimate": estimate.describe(),
        "total_s": time.perf_counter() - t_start,
    }


def _peak_gb(cuda: bool) -> float:
    """Peak GPU memory allocated; on the CPU, the process's peak RSS."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke test)")
    p.add_argument("--steps", type=int, default=None, help="at most this many steps")
    p.add_argument("--seconds", type=float, default=150.0, help="training time budget")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.tiny
    if not cuda and not a.tiny:
        print("no CUDA device: running the tiny shapes on the CPU", flush=True)
    s = GPT2 if cuda else TINY
    if a.steps:
        s = dataclasses.replace(s, steps=max(3, a.steps))
    dtype = torch.bfloat16 if cuda else torch.float32
    r = run(s, "cuda" if cuda else "cpu", dtype, a.seconds)
    print(
        f"{r['dictionaries']} transcoders (d_sae {r['d_sae']}, batch {r['batch_size']}) from "
        f"one stream on {r['device']}: {r['train_tokens_per_s']:,.0f} tokens/s "
        f"({r['dictionary_tokens_per_s']:,.0f} dictionary-tokens/s, "
        f"{r['effective_tflop_per_s']:.2f} TFLOP/s effective) over {r['steps']} steps; "
        f"forward alone {r['forward_tokens_per_s']:,.0f} tokens/s; peak "
        f"{'GPU memory' if cuda else 'RSS'} "
        f"{r['peak_memory_gb']:.2f} GB (device memory estimated "
        f"{r['estimated_memory_gb']:.2f} GB); "
        f"{r['total_s']:.0f} s in all"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
