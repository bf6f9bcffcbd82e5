"""How the training step scales: against the matmul peak, with d_sae, with the cache's size,
and with the number of dictionaries trained in one pass.

roofline   the step's executed FLOPs 2 B d_sae (2 d_in + 3 d_out) per second over the
           measured peak of the same five matmuls (bench/train_throughput.py's helpers).
d_sae      step time at d_sae 2k .. 32k (d_in = d_out 256, batch 4096); a line is fitted
           to time against d_sae (the step is linear in d_sae: every term is B d_sae d).
cache      step time, batch supply included, with the real ActivationReader over synthetic
           caches of 1x and 10x the rows: the reader's per-batch work is O(batch), so the
           step should not slow as the cache grows (slope ~ 0).
sweep      K dictionaries trained in one pass (one train_group call) against K separate
           runs, K = 1, 2, 4, 8 (bench/sweep_one_pass.py's members and batch supply).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import interleaved, linear_fit, markdown_table, threads
from bench.sweep_one_pass import MemorySource, members, reader_source, time_one_pass, time_separate
from bench.train_throughput import make_batches, make_run, matmul_chain
from tcspec.training import Workspace


def _step_fn(d: int, d_sae: int, batch: int, data=None):
    """A closure running one tcspec (ReLU transcoder) training step on cycled batches."""
    run = make_run(d, d, d_sae, batch)
    data = data or make_batches(d, d, batch)
    ws = Workspace("cpu")
    run.init_biases(*data[0])
    t = [0]

    def step():
        x, y = data[t[0] % len(data)]
        run.step(t[0], x, y, ws)
        t[0] += 1

    return step


# ---------------------------------------------------------------------------- roofline
def roofline(tiny: bool) -> tuple[str, dict]:
    if tiny:
        shapes, d_sae, batch, rounds, thread_counts = [32], 512, 256, 2, [1]
    else:
        shapes, d_sae, batch, rounds, thread_counts = [256, 768], 8192, 4096, 3, [1, 2]
    rows, headline = [], {}
    for d in shapes:
        for n in thread_counts:
            with threads(n):
                t = interleaved({"step": _step_fn(d, d_sae, batch),
                                 "peak": matmul_chain(d, d, d_sae, batch)}, rounds)  # fmt: skip
            flops = 2 * batch * d_sae * (2 * d + 3 * d)
            peak, achieved = flops / t["peak"].wall(), flops / t["step"].wall()
            frac = achieved / peak
            frac_med = t["peak"].wall("median") / t["step"].wall("median")
            rows.append([d, n, t["step"].wall() * 1e3, achieved / 1e9, peak / 1e9, frac,
                         frac_med, "yes" if frac >= 0.6 else "**no**"])  # fmt: skip
            headline[f"roofline fraction, d_in {d}, {n} thr"] = frac
    text = "\n\n".join([
        f"ReLU transcoder step, d_in = d_out in {shapes}, d_sae {d_sae}, batch {batch}, fp32. "
        "Peak = the step's five matmuls alone (preallocated outputs) on the same shapes, "
        f"interleaved with the step; min of {rounds} rounds (median ratio beside it).",
        markdown_table(["d_in", "threads", "step ms", "achieved GFLOP/s", "peak GFLOP/s",
                        "fraction", "fraction (medians)", ">= 0.6"], rows),  # fmt: skip
    ])  # fmt: skip
    return text, headline


# ------------------------------------------------------------------------------ d_sae
def d_sae_curve(tiny: bool) -> tuple[str, dict]:
    if tiny:
        d, batch, sizes, rounds = 32, 256, [256, 512, 1024], 2
    else:
        d, batch, sizes, rounds = 256, 4096, [2048, 4096, 8192, 16384, 32768], 2
    data = make_batches(d, d, batch)
    with threads(1):
        t = interleaved({S: _step_fn(d, S, batch, data) for S in sizes}, rounds)
    ms = [t[S].wall() * 1e3 for S in sizes]
    slope, icpt, r2 = linear_fit([float(S) for S in sizes], ms)
    rows = [[S, m, t[S].cpu() * 1e3, batch / m * 1e3] for S, m in zip(sizes, ms)]
    text = "\n\n".join([
        f"ReLU transcoder step, d_in = d_out {d}, batch {batch}, 1 thread, min of {rounds} "
        "interleaved rounds.",
        markdown_table(["d_sae", "wall ms", "cpu ms", "tokens/s"], rows),
        f"Fit wall ms = {icpt:.3g} + {slope * 1e3:.4g} x (d_sae / 1000); R^2 = {r2:.4f}. "
        f"Per 1k features: {slope * 1e3:.3g} ms; {sizes[-1] // sizes[0]}x d_sae costs "
        f"{ms[-1] / ms[0]:.2f}x the time.",
    ])  # fmt: skip
    return text, {"d_sae slope ms per 1k": slope * 1e3, "d_sae R^2": r2}


# ------------------------------------------------------------------------------ cache
def cache_curve(tiny: bool) -> tuple[str, dict]:
    """Step + reader batch supply at cache sizes of 1x .. 10x the rows."""
    if tiny:
        d, d_sae, batch, rows, factors, steps = 16, 128, 128, 1 << 10, [1, 10], 4
    else:
        d, d_sae, batch, rows, factors, steps = 128, 4096, 4096, 1 << 15, [1, 2, 5, 10], 8
    tmp = tempfile.TemporaryDirectory(prefix="tcspec-bench-cache-")
    fns, sizes = {}, {}
    for f in factors:
        root = Path(tmp.name) / f"x{f}"
        root.mkdir()
        source = reader_source(d, batch, root, shards=f, rows=rows)
        step = _step_fn(d, d_sae, batch)
        sizes[f] = f * rows

        def fn(source=source, step=step):
            it = source(0)
            for _ in range(steps):
                next(it)
                step()

        fns[f] = fn
    with threads(1):
        t = interleaved(fns, 2 if tiny else 3)
    tmp.cleanup()
    ms = [t[f].wall() / steps * 1e3 for f in factors]
    slope, icpt, r2 = linear_fit([float(sizes[f]) for f in factors], ms)
    change = ms[-1] / ms[0] - 1
    rows_out = [[sizes[f], sizes[f] * 2 * d * 4 / 1e6, m, t[f].cpu() / steps * 1e3]
                for f, m in zip(factors, ms)]  # fmt: skip
    text = "\n\n".join([
        f"ReLU transcoder step (d_in = d_out {d}, d_sae {d_sae}, batch {batch}) fed by the real "
        f"ActivationReader (verify on, first {steps} batches of a fresh reader each round, so "
        "opening, first reads and checksums are included) over synthetic float32 caches; "
        "1 thread, min of the rounds, per step.",
        markdown_table(["cache rows", "cache MB", "wall ms/step", "cpu ms/step"], rows_out),
        f"Fit wall ms/step = {icpt:.3g} + {slope * 1e6:.3g} x (rows / 1e6); R^2 = {r2:.3f} "
        f"(a flat line has no meaningful R^2). {factors[-1]}x the cache: {change:+.1%} time "
        "per step.",
    ])  # fmt: skip
    return text, {"cache 10x step time change": change}


# ------------------------------------------------------------------------------ sweep
def sweep(tiny: bool) -> tuple[str, dict]:
    """K dictionaries in one pass against K separate runs (train_group end to end)."""
    if tiny:
        d, d_sae, batch, steps, Ks = 16, 128, 128, 6, [1, 2, 4, 8]
    else:
        d, d_sae, batch, steps, Ks = 128, 1024, 1024, 20, [1, 2, 4, 8]
    source = MemorySource(d, d, batch)
    rows, headline = [], {}
    with threads(1), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        time_one_pass(members(1, d, d_sae, batch, root / "w"), source, 2, root / "w")  # warm-up
        for K in Ks:
            res = {"one pass": [], "separate": []}
            for r in range(2):  # interleaved: one pass, separate, one pass, separate
                a = root / f"K{K}-{r}-a"
                res["one pass"].append(time_one_pass(members(K, d, d_sae, batch, a), source,
                                                     steps, a))  # fmt: skip
                b = root / f"K{K}-{r}-b"
                res["separate"].append(time_separate(members(K, d, d_sae, batch, b), source,
                                                     steps, b))  # fmt: skip
            one = min(w for w, _ in res["one pass"])
            sep = min(w for w, _ in res["separate"])
            rows.append([K, one, sep, sep / one, one / (K * steps) * 1e3])
            headline[f"sweep K={K} separate/one-pass"] = sep / one
    text = "\n\n".join([
        f"train_group end to end (setup, batches, steps, outputs), d_in = d_out {d}, d_sae "
        f"{d_sae}, batch {batch}, {steps} steps, in-memory batch supply that gathers random "
        "rows (the reader's per-batch work); l1 sweep of K points; 1 thread; min of 2 "
        "interleaved rounds.",
        markdown_table(["K", "one pass s", "K separate runs s", "speed-up",
                        "one pass ms per member-step"], rows),  # fmt: skip
    ])  # fmt: skip
    return text, headline


def run_roofline(tiny: bool = False) -> tuple[str, dict]:
    return roofline(tiny)


def run_sweep(tiny: bool = False) -> tuple[str, dict]:
    return sweep(tiny)


def run(tiny: bool = False) -> tuple[str, dict]:
    """d_sae and cache-size curves; returns (Markdown section, headline numbers)."""
    a, ha = d_sae_curve(tiny)
    b, hb = cache_curve(tiny)
    return f"### d_sae 2k -> 32k\n\n{a}\n\n### cache 1x -> 10x\n\n{b}", ha | hb
