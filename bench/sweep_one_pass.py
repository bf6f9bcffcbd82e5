"""One pass over the data for a K-point sweep against K separate runs, K = 1, 2, 4.

Shapes (stated, CPU fp32):
  quickstart  d_in = d_out = 128 (the toy model's d_model), d_sae 1024 (expansion 8),
              batch 1024 — the quickstart spec's transcoders.
  wide        d_in = d_out = 128, d_sae 8192, batch 1024.
The sweep is over l1 (as in the quickstart spec); every member has the same shapes.

The batch supply (`--supply memory`, the default) is a synthetic in-memory source that does
the activation cache reader's per-batch work: gather `batch` random rows of each hook from an
in-RAM buffer with np.take and turn them into float32 tensors. The real reader also reads its
shard groups from files and checksums each file once; `--supply reader` uses the real
tcspec.data.cache.ActivationReader over a synthetic float32 cache written to a temporary
folder (so in the page cache). The script prints the per-batch cost of the supply it uses.

"Separate runs" are K calls of train_group with one member each, in this process (no
interpreter start-up or cache opening counted). Runs alternate between the two ways; each is
timed at two lengths, and the minimum over `--repeats` of this process's CPU time is
reported (on a shared machine, run with `--threads 1`: CPU time then measures the work and
is little disturbed by other jobs). The two lengths separate a per-run fixed cost (setup,
first touches of buffers, writing outputs) from the per-step cost, which gives the saving
at the quickstart's full length of 2M tokens.

It also times the alternative the trainer does not take: stacking K equal-shape members into
batched matmuls (torch.bmm) against K plain matmuls, on the step's five matmul shapes.

    python bench/sweep_one_pass.py          # both shapes
    python bench/sweep_one_pass.py --tiny   # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tcspec.dictionaries.coders import CoderConfig
from tcspec.spec import TranscoderSpec
from tcspec.training import Member, train_group

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
QUICKSTART_TOKENS = 2_000_000  # specs/quickstart.yaml: data.train_tokens


class MemorySource:
    """Batches of random rows from an in-RAM activation buffer (the reader's per-batch work)."""

    def __init__(self, d_in: int, d_out: int, batch: int, rows: int = 1 << 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        A = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        x = rng.standard_normal((rows, d_in), dtype=np.float32)
        self.buf = {IN: x, OUT: np.maximum(x @ A, 0) + 0.1}
        self.batch, self.rows, self.seed = batch, rows, seed

    def __call__(self, start: int):
        step = start
        while True:
            idx = np.random.default_rng([self.seed, step]).integers(0, self.rows, self.batch)
            yield {
                k: torch.from_numpy(np.take(v, idx, axis=0)).float() for k, v in self.buf.items()
            }
            step += 1


def reader_source(d: int, batch: int, root: Path, shards: int = 4, rows: int = 1 << 15):
    """The real ActivationReader over a synthetic cache written in its on-disk format."""
    import xxhash

    from tcspec.data.cache import ActivationReader
    from tcspec.data.cache_format import ACTS_FORMAT

    rng = np.random.default_rng(0)
    A = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    entries = []
    for s in range(shards):
        x = rng.standard_normal((rows, d), dtype=np.float32)
        files = {}
        for k, a in ((IN, x), (OUT, np.maximum(x @ A, 0) + 0.1)):
            path = root / f"shard_{s:05d}" / f"{k}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, a)
            raw = path.read_bytes()
            files[k] = {"file": str(path.relative_to(root)), "bytes": len(raw),
                        "checksum": xxhash.xxh3_128(raw).hexdigest()}  # fmt: skip
        entries.append({"name": f"shard_{s:05d}", "rows": rows, "files": files})
    manifest = {"format": ACTS_FORMAT, "dtype": "float32", "shards": entries,
                "hooks": {IN: {"width": d}, OUT: {"width": d}}, "total_rows": shards * rows}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return ActivationReader(root, [IN, OUT], batch_size=batch, seed=0).iter_batches


def members(K: int, d: int, d_sae: int, batch: int, root: Path) -> list[Member]:
    out = []
    for i, l1 in enumerate(np.geomspace(3e-4, 3e-3, K) if K > 1 else [1e-3]):
        opts = TranscoderSpec(
            kind="transcoder",
            d_sae=d_sae,
            l1=float(l1),
            lr=1e-3,
            lr_warmup_steps=50,
            batch_size=batch,
            checkpoint_every=10**9,
        )
        cfg = CoderConfig("transcoder", d, d, d_sae, in_hook=IN, out_hook=OUT, layer=0)
        out.append(Member(f"l1-{l1:.1e}", opts, cfg, IN, OUT, root / f"m{i}", seed=i))
    return out


def clocks() -> tuple[float, float]:
    """(wall, CPU time of this process): CPU time is what other jobs on a shared machine
    disturb least (with one thread, it is the work done)."""
    return time.perf_counter(), time.process_time()


def time_one_pass(ms: list[Member], source, steps: int, root: Path) -> tuple[float, float]:
    w, c = clocks()
    train_group(ms, source, steps, root / "ck", progress=False, log=lambda s: None)
    return time.perf_counter() - w, time.process_time() - c


def time_separate(ms: list[Member], source, steps: int, root: Path) -> tuple[float, float]:
    w, c = clocks()
    for m in ms:
        train_group([m], source, steps, root / f"ck-{m.name}", progress=False, log=lambda s: None)
    return time.perf_counter() - w, time.process_time() - c


def sweep(label: str, d: int, d_sae: int, batch: int, steps: int, repeats: int, supply: str):
    """Time both ways at `steps` and `2 * steps`; t(n) = fixed + n * per_step separates the
    per-run cost (setup, first touches, saving outputs) from the per-step cost, and gives
    the saving at the quickstart's length (2M tokens)."""
    cache = tempfile.TemporaryDirectory()
    source = (
        MemorySource(d, d, batch)
        if supply == "memory"
        else reader_source(d, batch, Path(cache.name))
    )
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: first-touch costs, lazy inits
        time_one_pass(members(1, d, d_sae, batch, Path(tmp)), source, 3, Path(tmp))
    w, c = clocks()
    for _ in zip(range(50), source(0)):
        pass
    supply_ms = ((time.perf_counter() - w) / 50 * 1e3, (time.process_time() - c) / 50 * 1e3)
    full = QUICKSTART_TOKENS // batch
    print(
        f"\n{label}: d_in = d_out = {d}, d_sae {d_sae}, batch {batch}; batch supply ({supply}) "
        f"{supply_ms[0]:.2f} ms wall / {supply_ms[1]:.2f} ms cpu per batch"
    )
    print(
        f"  CPU seconds, min of {repeats}; 'fit' = per-run fixed cost + per-step cost from "
        f"the two lengths, and the saving at {full} steps"
    )
    print(
        f"{'K':>3} {'way':>9} {f'{steps} steps':>10} {f'{2 * steps} steps':>10} "
        f"{'fixed s':>8} {'ms/step':>8} {f'{full} steps':>11}"
    )
    for K in (1, 2, 4):
        t = {(way, n): [] for way in ("one pass", "separate") for n in (steps, 2 * steps)}
        for _ in range(repeats):
            for n in (steps, 2 * steps):
                with tempfile.TemporaryDirectory() as tmp:
                    root = Path(tmp)
                    ms = members(K, d, d_sae, batch, root / "a")
                    t["one pass", n].append(time_one_pass(ms, source, n, root))
                    ms = members(K, d, d_sae, batch, root / "b")
                    t["separate", n].append(time_separate(ms, source, n, root))
        cpu = {key: min(v[1] for v in vals) for key, vals in t.items()}
        at_full = {}
        for way in ("one pass", "separate"):
            a, b = cpu[way, steps], cpu[way, 2 * steps]
            per_step = (b - a) / steps
            fixed = a - per_step * steps
            at_full[way] = fixed + per_step * full
            print(
                f"{K:>3} {way:>9} {a:>10.2f} {b:>10.2f} {fixed:>8.2f} {per_step * 1e3:>8.1f} "
                f"{at_full[way]:>11.1f}"
            )
        saving = [1 - cpu["one pass", n] / cpu["separate", n] for n in (steps, 2 * steps)]
        print(
            f"{'':>3} {'saving':>9} {saving[0]:>10.1%} {saving[1]:>10.1%} {'':>8} {'':>8} "
            f"{1 - at_full['one pass'] / at_full['separate']:>11.1%}"
        )
    cache.cleanup()


def stacking(K: int, d: int, d_sae: int, batch: int, repeats: int = 3) -> None:
    """K separate matmul chains against the same chains batched with torch.bmm."""
    x, g = torch.randn(batch, d), torch.randn(batch, d)
    We, Wd, z = torch.randn(K, d, d_sae), torch.randn(K, d_sae, d), torch.randn(K, batch, d_sae)
    xs, gs = x.expand(K, batch, d), g.expand(K, batch, d)

    def loop():
        for i in range(K):
            x @ We[i], z[i] @ Wd[i], g @ Wd[i].t(), z[i].t() @ g, x.t() @ z[i]

    def batched():
        torch.bmm(xs, We), torch.bmm(z, Wd), torch.bmm(gs, Wd.transpose(1, 2))
        torch.bmm(z.transpose(1, 2), gs), torch.bmm(xs.transpose(1, 2), z)

    def best(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    tl, tb = best(loop), best(batched)
    print(
        f"  K={K} d={d} d_sae={d_sae} batch={batch}: loop {tl * 1e3:.1f} ms, "
        f"bmm {tb * 1e3:.1f} ms (bmm/loop {tb / tl:.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes, runs in seconds")
    p.add_argument("--steps", type=int, default=40, help="shorter length (quickstart shapes)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--supply", choices=["memory", "reader"], default="memory")
    a = p.parse_args()
    if a.threads or a.tiny:  # tiny ops on a busy machine: one thread avoids thread thrash
        torch.set_num_threads(a.threads or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32")
    if a.tiny:
        sweep("tiny", 16, 128, 128, 30, 2, a.supply)
        stacking(4, 16, 128, 128)
        return
    sweep("quickstart", 128, 1024, 1024, a.steps, a.repeats, a.supply)
    sweep("wide", 128, 8192, 1024, max(a.steps // 5, 4), a.repeats, a.supply)
    print("\nstacking members into bmm (the step's five matmuls):")
    stacking(4, 128, 1024, 1024)
    stacking(4, 128, 8192, 1024)


if __name__ == "__main__":
    main()
