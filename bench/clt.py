"""A cross-layer transcoder's training step against the fp32 matmul roofline, and against
n_layers per-layer transcoders of the same width stepping on the same batch.

Shapes (defaults, gpt2-like): 12 layers, d_model 768, 8192 features per layer, batch 4096
tokens, fp32, CPU. The batch (every layer's input and output, random) is made once and held
in memory, so each figure is the step's own cost. Two activations, each both ways:

- CLT (relu, topk): one `CLT` over all layers (decoders to that and every later layer),
  stepped as `tcspec.training.clt` does: `tcspec.training.clt_step.train_step` (tanh penalty, its
  hand-written gradients, each parameter stepped by Adam once its gradient is ready; TopK
  decodes sparsely, its decoders held part-major as its trainer holds them).
- per-layer (relu, topk): n_layers `tcspec.training.MemberRun`s, the per-layer trainer's own
  step (its hand-written backward, workspace and Adam; L1 penalty for ReLU, TopK sparse),
  layer l's transcoder on layer l's input and output, one after another.
TopK keeps k = 64 features per layer and token (tiny: 8).

Each round times, in this order: the matmul peak, then each variant. Each is built afresh,
stepped once untimed (Adam's moments allocated, pages touched), then stepped once timed,
and freed: only one is resident at a time. Its memory is this process's
peak RSS over building and both steps, above the RSS before it (the peak is reset through
/proc/self/clear_refs; what the last variant freed is handed back first, `release_freed`,
else a variant of tensors under 32 MB reuses its pages unseen). The least disturbed round
counts (min wall, min CPU).

FLOPs of one step, executed (P = L (L + 1) / 2 decoder blocks):
  CLT          2 B F d (2 L + 3 P) (ReLU): per source layer the encoder forward, the decoder
               forward, dL/da, dL/dW_dec, dL/dW_enc (no input gradient); the step also runs
               the encoder forward again in the backward (its activations are not held),
               2 B F d L more, not counted; TopK 2 B d (F L + k (L + 3 P)): the dense
               encoder, the rest over the k active features per layer
  per-layer    L 2 B F d 5 (ReLU), L (2 B F d + 8 B k d) (TopK: a dense encoder, the rest
               over the k active features)
The peak is the CLT's matmuls on fresh operands of the same shapes, back to back (one
[F, L d] decoder's worth of operands; the shorter ones are its leading columns). It is the
CLT's ceiling; the per-layer step's own [B, d] x [d, F] matmuls may run faster than it.

    python -m bench --only clt                # full shapes: ~8.5 GB (clt_cost's estimate)
    python -m bench --only clt --clt-rounds 1 --clt-layers 4 --clt-batch 1024  # scaled
    python bench/clt.py --tiny                # seconds, a smoke test (JSON and the table)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Timing, markdown_table, timed  # noqa: E402
from tcspec.compute import gemm_dtype, gemm_mode  # noqa: E402
from tcspec.compute.workspace import Workspace  # noqa: E402
from tcspec.dictionaries.clt import CLT, CLTConfig, CLTLoss  # noqa: E402
from tcspec.plan.cost import clt_cost, decoder_params  # noqa: E402
from tcspec.training import clt_layout  # noqa: E402
from tcspec.training.adam import AdamState  # noqa: E402
from tcspec.training.clt_step import Hyper, train_step  # noqa: E402

FULL = dict(n_layers=12, d_model=768, d_sae=8192, batch=4096, k=64)
TINY = dict(n_layers=3, d_model=32, d_sae=128, batch=256, k=8)
LOSS = CLTLoss("tanh", coef=1e-3)
VARIANTS = ("clt", "per_layer", "clt_topk", "per_layer_topk")
ACTIVATIONS = {"relu": "", "topk": "_topk"}
"""The activations measured (`--clt-activation`), by their variants' suffix."""


def batch(n_layers: int, d_model: int, batch: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """xs, ys [L, B, d]: random inputs, outputs a fixed ReLU map of them."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_layers, batch, d_model, generator=g)
    A = torch.randn(d_model, d_model, generator=g) / d_model**0.5
    return xs, torch.relu(xs @ A)


def clt_stepper(shape: dict, xs, ys, topk: bool, precision: str = "fp32", width=None):
    """One CLT training step (closure) on xs, ys, on their device, in ``precision``; its
    decoders held as its trainer holds them, or (TopK) part-major at part width `width`."""
    clt = CLT(config_of(shape, "clt_topk" if topk else "clt")).requires_grad_(False)
    clt = clt.to(xs.device)
    adam, ws, t = AdamState.zeros(dict(clt.named_parameters())), Workspace(str(xs.device)), [0]
    if width is None:
        clt_layout.hold_for_training(clt, adam)
    else:
        clt_layout.hold(clt, adam, None, width)
    gemm = gemm_dtype(precision, xs.dtype)

    def step():
        t[0] += 1
        with gemm_mode(precision, xs.device):
            h = Hyper(LOSS, 1.0, t[0], 1e-4, (0.9, 0.999), gemm=gemm)
            train_step(clt, adam, xs, ys, h, ws)

    return step


def per_layer_stepper(shape: dict, xs, ys, topk: bool):
    """One step of n_layers per-layer transcoders (the per-layer trainer), layer l's on
    xs[l], ys[l]."""
    from tcspec.dictionaries.coders import CoderConfig
    from tcspec.spec import TranscoderSpec
    from tcspec.training import Member, MemberRun, Workspace

    d, F, B = shape["d_model"], shape["d_sae"], shape["batch"]
    act = dict(activation="topk", k=shape["k"]) if topk else dict(l1=1e-4)
    opts = TranscoderSpec(kind="transcoder", d_sae=F, batch_size=B, **act)
    runs, folder = [], Path(tempfile.mkdtemp())
    for li in range(shape["n_layers"]):
        i, o = f"blocks.{li}.ln2.hook_normalized", f"blocks.{li}.hook_mlp_out"
        cfg = CoderConfig("transcoder", d, d, F, in_hook=i, out_hook=o, layer=li, **act_of(act))
        runs.append(MemberRun(Member(f"L{li}", opts, cfg, i, o, folder / str(li), li), 10**6, B,
                              "cpu"))  # fmt: skip
        runs[-1].init_biases(xs[li], ys[li])
    ws, t = Workspace("cpu"), [0]

    def step():
        for li, run in enumerate(runs):
            run.step(t[0], xs[li], ys[li], ws)
        t[0] += 1

    return step


def act_of(act: dict) -> dict:
    """The CoderConfig fields of a spec's activation options."""
    return {k: v for k, v in act.items() if k in ("activation", "k")}


def matmuls(n_layers: int, d_model: int, d_sae: int, batch: int, **_):
    """The CLT step's executed matmuls on fresh operands, outputs preallocated; source
    layer i's decoder operands are the leading (L - i) d columns of layer 0's."""
    L, d, F, B = n_layers, d_model, d_sae, batch
    x, a, W_enc = torch.randn(B, d), torch.randn(B, F), torch.randn(d, F)
    pre, gWe = torch.empty(B, F), torch.empty(d, F)
    W, g = torch.randn(F, L * d), torch.randn(B, L * d)  # [F, L d], [B, L d]
    y, gW = torch.empty(B, L * d), torch.empty(F, L * d)

    def run():
        for i in range(L):
            n = (L - i) * d
            torch.mm(x, W_enc, out=pre)  # encoder forward       [B, F]
            torch.mm(a, W[:, :n], out=y[:, :n])  # decoder forward [B, (L - i) d]
            torch.mm(g[:, :n], W[:, :n].t(), out=pre)  # dL/da   [B, F]
            torch.mm(a.t(), g[:, :n], out=gW[:, :n])  # dL/dW_dec [F, (L - i) d]
            torch.mm(x.t(), pre, out=gWe)  # dL/dW_enc            [d, F]

    return run


def executed_flops(n_layers: int, d_model: int, d_sae: int, batch: int, **_) -> int:
    """The ReLU CLT step's dense matmul FLOPs (the module docstring)."""
    P = n_layers * (n_layers + 1) // 2
    return 2 * batch * d_sae * d_model * (2 * n_layers + 3 * P)


def variant_flops(shape: dict, variant: str) -> int:
    L, d, F, B, k = (shape[f] for f in ("n_layers", "d_model", "d_sae", "batch", "k"))
    if variant == "clt":
        return executed_flops(**shape)
    if variant == "clt_topk":
        return 2 * B * d * (F * L + k * (L + 3 * L * (L + 1) // 2))
    if variant == "per_layer":
        return L * 2 * B * F * d * 5
    return L * (2 * B * F * d + 8 * B * k * d)


# ---------------------------------------------------------------------------- memory
def rss_kb() -> tuple[int, int]:
    """(current, peak) resident memory of this process, kB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def available_mb() -> int:
    """MemAvailable of /proc/meminfo, MB (a large number where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 30


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_freed() -> None:
    """Hand the memory freed so far back to the system (glibc's malloc_trim), so that the
    next variant's allocations raise the RSS instead of reusing pages a freed variant left
    resident (tensors under glibc's 32 MB mmap threshold live on the heap)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fresh_step(make, reset: bool) -> tuple[tuple[float, float], float]:
    """Build a variant (`make()` returns its step), step it once untimed and once timed,
    free it: ((wall, CPU) s of the timed step, peak MB held above the RSS before it)."""
    release_freed()
    before = rss_kb()[0]
    if reset:
        reset_peak()
    step = make()
    step()
    t = timed(step)
    peak = (rss_kb()[1] - before) / 1024 if reset else float("nan")
    del step
    gc.collect()
    return t, peak


def measure(shape: dict, rounds: int, activations=tuple(ACTIVATIONS)) -> dict:
    """Interleaved rounds of the peak and every variant of `activations` (the module
    docstring): JSON-ready numbers."""
    xs, ys = batch(**shape)
    makers = {}
    for act in activations:
        topk, sfx = act == "topk", ACTIVATIONS[act]
        makers[f"clt{sfx}"] = lambda topk=topk: clt_stepper(shape, xs, ys, topk=topk)
        makers[f"per_layer{sfx}"] = lambda topk=topk: per_layer_stepper(shape, xs, ys, topk=topk)
    small = shape_of(True)
    for warm in (clt_stepper, per_layer_stepper):  # lazy initialisations, outside the peaks
        fresh_step(lambda w=warm: w(small, *batch(**small), topk=False), False)
    reset = reset_peak()
    t = {name: Timing(name) for name in ("peak", *makers)}
    memory = dict.fromkeys(makers, float("nan"))
    for _ in range(rounds):
        if "relu" in activations:  # the peak is the ReLU CLT's matmuls (n/a without them)
            t["peak"].rounds.append(fresh_step(lambda: matmuls(**shape), False)[0])
        for name, make in makers.items():
            wall_cpu, mb = fresh_step(make, reset)
            t[name].rounds.append(wall_cpu)
            memory[name] = mb if memory[name] != memory[name] else max(memory[name], mb)
    flops = executed_flops(**shape)
    peak, peak_cpu = flops / t["peak"].wall(), flops / t["peak"].cpu()
    rows = {}
    for name in makers:
        f, wall, cpu = variant_flops(shape, name), t[name].wall(), t[name].cpu()
        rows[name] = {
            "step_s": wall, "step_cpu_s": cpu, "tokens_per_s": shape["batch"] / wall,
            "executed_gflops": f / 1e9, "gflops_s": f / wall / 1e9,
            "fraction_of_peak": f / wall / peak, "fraction_of_peak_cpu": f / cpu / peak_cpu,
            "peak_rss_mb": memory[name],
        }  # fmt: skip
        if name.startswith("clt"):
            rows[name]["estimate_mb"] = clt_cost(config_of(shape, name), shape["batch"], 1).mem_mb
    return {
        "shape": shape,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "matmul_peak_gflops_s": peak / 1e9,
        "matmul_peak_gflops_cpu_s": peak_cpu / 1e9,
        "variants": rows,
        "ratios": {act: ratios(shape, rows, ACTIVATIONS[act]) for act in activations},
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def ratios(shape: dict, rows: dict, sfx: str) -> dict:
    """The CLT (`clt` + sfx) against the per-layer transcoders: time, FLOPs, time per FLOP
    (time ratio / FLOP ratio; wall and CPU), memory, and the memory bound: 3x the
    per-layer peak plus the CLT's extra decoder weights and their two Adam moments."""
    c, p = rows[f"clt{sfx}"], rows[f"per_layer{sfx}"]
    flops = c["executed_gflops"] / p["executed_gflops"]
    L, d, F = shape["n_layers"], shape["d_model"], shape["d_sae"]
    extra = (decoder_params(config_of(shape, "clt")) - L * F * d) * 3 * 4 / 2**20
    bound = 3 * p["peak_rss_mb"] + extra
    return {
        "time": ratio(c["step_s"], p["step_s"]),
        "flops": flops,
        "time_per_flop": ratio(c["step_s"], p["step_s"]) / flops,
        "time_per_flop_cpu": ratio(c["step_cpu_s"], p["step_cpu_s"]) / flops,
        "memory": ratio(c["peak_rss_mb"], p["peak_rss_mb"]),
        "memory_bound_mb": bound,
        "memory_of_bound": ratio(c["peak_rss_mb"], bound),
    }


def config_of(shape: dict, variant: str) -> CLTConfig:
    """The CLT of a variant (`clt` or `clt_topk`) at `shape`."""
    act = dict(activation="topk", k=shape["k"]) if variant.endswith("topk") else {}
    return CLTConfig(shape["n_layers"], shape["d_model"], shape["d_sae"], **act)


def ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 (a tiny run's memory can round to nothing)."""
    return a / b if b else float("nan")


def table(r: dict) -> str:
    """The measurements as Markdown: one row per variant, then the ratios."""
    s, rows = r["shape"], []
    peak = (
        f"Matmul peak (the CLT's matmuls alone): {r['matmul_peak_gflops_s']:.1f} GFLOP/s "
        f"({r['matmul_peak_gflops_cpu_s']:.1f} per CPU-second)."
        if r["matmul_peak_gflops_s"] == r["matmul_peak_gflops_s"]
        else "Matmul peak: not measured (it runs with the ReLU variants)."
    )
    for name, v in r["variants"].items():
        act = "topk" if name.endswith("topk") else "relu"
        base = r["variants"]["per_layer" + ("_topk" if act == "topk" else "")]
        rows.append([
            name, v["step_s"], v["step_cpu_s"], v["tokens_per_s"], v["executed_gflops"],
            v["gflops_s"], v["fraction_of_peak"], v["fraction_of_peak_cpu"],
            v["peak_rss_mb"], v.get("estimate_mb", ""), ratio(v["step_s"], base["step_s"]),
            ratio(v["peak_rss_mb"], base["peak_rss_mb"]),
        ])  # fmt: skip
    head = ["variant", "step s", "step CPU s", "tokens/s", "executed GFLOP", "GFLOP/s",
            "fraction of peak", "fraction (CPU)", "peak RSS MB", "clt_cost MB",
            "time / per-layer", "memory / per-layer"]  # fmt: skip
    accept = [
        [
            act,
            a["flops"],
            a["time"],
            a["time_per_flop"],
            a["time_per_flop_cpu"],
            a["memory_bound_mb"],
            a["memory_of_bound"],
        ]
        for act, a in r["ratios"].items()
    ]
    accept_head = ["CLT vs per-layer", "FLOP ratio", "time ratio", "time / FLOP ratio (<= 1.5)",
                   "same, CPU time", "memory bound MB", "peak / bound (<= 1)"]  # fmt: skip
    return "\n\n".join([
        f"{s['n_layers']} layers, d_model {s['d_model']}, {s['d_sae']} features per layer, "
        f"batch {s['batch']} tokens, TopK k {s['k']}, fp32, torch threads {r['threads']}; "
        f"min of {r['rounds']} interleaved round(s). {peak} "
        f"Load average at the end (1, 5, 15 min): {r['load_average_1_5_15']}.",
        markdown_table(head, rows),
        markdown_table(accept_head, accept),
    ])  # fmt: skip


def shape_of(tiny: bool, **override) -> dict:
    shape = dict(TINY if tiny else FULL)
    return shape | {k: v for k, v in override.items() if v is not None}


def run(
    tiny: bool = False, n_layers=None, batch=None, rounds=None, activations=None
) -> tuple[str, dict]:
    """The `python -m bench --only clt` section: (Markdown, headline numbers); `n_layers`,
    `batch` scale the shape down (None: the full one), `rounds` (None: 1 tiny, else 2),
    `activations` (None: both)."""
    shape = shape_of(tiny, n_layers=n_layers, batch=batch)
    need = clt_cost(config_of(shape, "clt"), shape["batch"], 1).mem_mb + 1024
    if available_mb() < need:
        return (f"Skipped: the CLT step at {shape} needs ~{need:,} MB, "
                f"{available_mb():,} MB are available; rerun with --clt-batch.", {})  # fmt: skip
    r = measure(shape, rounds or (1 if tiny else 2), activations or tuple(ACTIVATIONS))
    L, headline = r["shape"]["n_layers"], {}
    if "topk" in r["ratios"]:
        headline[f"CLT step / {L} per-layer transcoders (TopK)"] = r["ratios"]["topk"]["time"]
    if "relu" in r["ratios"]:
        headline |= {
            f"CLT step / {L} per-layer transcoders (ReLU)": r["ratios"]["relu"]["time"],
            f"CLT memory / {L} per-layer transcoders (ReLU)": r["ratios"]["relu"]["memory"],
            "CLT step, fraction of the matmul peak (ReLU)": r["variants"]["clt"][
                "fraction_of_peak"
            ],
        }
    return table(r), headline


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--activation", choices=list(ACTIVATIONS), action="append",
                   help="measure this activation's variants only (repeatable)")  # fmt: skip
    for name in FULL:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"override {name}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = shape_of(args.tiny, **{k: getattr(args, k) for k in FULL})
    result = measure(shape, args.rounds, tuple(args.activation or ACTIVATIONS))
    print(json.dumps(result, indent=1))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
