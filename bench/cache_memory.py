"""Peak memory of writing and of one full shuffled pass over a small and a large cache.

Each cache holds a transcoder's pair at the quickstart width (blocks.0.ln2.hook_normalized
and blocks.0.hook_mlp_out, d_model 128, float32) of a random quickstart-shaped model. Every
write and every pass runs in its own subprocess, which reports its peak RSS (ru_maxrss).
Target: the large cache's peaks within 10% of the small one's (memory does not grow with
the cache). The caches are deleted afterwards.

    python bench/cache_memory.py [--tiny] [--small-mb 200] [--large-mb 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOKS = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]
CONTEXT = 128
ROW_BYTES = len(HOOKS) * 128 * 4  # bytes per cached token position


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_write(out: Path, n_contexts: int, shard_tokens: int, device: str) -> dict:
    import numpy as np
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tcspec.data.cache import cache_activations

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=128, d_mlp=512, n_ctx=CONTEXT, n_heads=4, d_head=32, d_vocab=4096,
        act_fn="gelu", normalization_type="LN", seed=0, device=device,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    tokens = np.random.default_rng(0).integers(1, 4096, size=(n_contexts, CONTEXT))
    tokens = tokens.astype(np.int32)
    tokens[:, 0] = 0
    torch.manual_seed(0)
    base = current_rss_mb()
    t = time.perf_counter()
    cache_activations(model, tokens, HOOKS, out, shard_tokens=shard_tokens, progress=False)
    return {"seconds": time.perf_counter() - t, "base_rss_mb": base, "peak_rss_mb": peak_rss_mb()}


def child_read(out: Path, batch_size: int) -> dict:
    from tcspec.data.cache import ActivationReader

    base = current_rss_mb()
    reader = ActivationReader(out, HOOKS, batch_size=batch_size, seed=0)
    it = reader.iter_batches()
    t = time.perf_counter()
    for _ in range(reader.steps_per_epoch):
        next(it)
    dt = time.perf_counter() - t
    return {
        "seconds": dt,
        "rows_per_s": reader.steps_per_epoch * batch_size / dt,
        "base_rss_mb": base,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(*args: str) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode:
        sys.exit(f"child {args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="2 MB vs 20 MB caches, small shards")
    ap.add_argument("--small-mb", type=float, default=200)
    ap.add_argument("--large-mb", type=float, default=2000)
    ap.add_argument("--shard-tokens", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default=None, help="model device for writing (default: auto)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:  # inside a subprocess: one write or one read, then a JSON line
        mode, out = args.child[0], Path(args.child[1])
        if mode == "write":
            result = child_write(out, int(args.child[2]), int(args.child[3]), args.child[4])
        else:
            result = child_read(out, int(args.child[2]))
        print(json.dumps(result))
        return

    if args.tiny:
        args.small_mb, args.large_mb, args.shard_tokens, args.batch_size = 2, 20, 1024, 512
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tcspec-mem-"))
    results = {}
    try:
        for label, mb in (("small", args.small_mb), ("large", args.large_mb)):
            n_contexts = max(1, round(mb * 1e6 / ROW_BYTES / (CONTEXT - 1)))
            out = work / label
            w = run_child("--child", "write", str(out), str(n_contexts), str(args.shard_tokens),
                          args.device)  # fmt: skip
            size = sum(f.stat().st_size for f in out.rglob("*.npy"))
            r = run_child("--child", "read", str(out), str(args.batch_size))
            results[label] = {"bytes": size, "write": w, "read": r}
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"shard_tokens {args.shard_tokens}, batch {args.batch_size}, writer device {args.device}")
    print(f"{'cache':>12} {'write peak':>11} {'write base':>11} {'read peak':>10} {'read base':>10}"
          f" {'read rows/s':>12}")  # fmt: skip
    for r in results.values():
        print(f"{r['bytes'] / 1e6:9.0f} MB {r['write']['peak_rss_mb']:8.0f} MB "
              f"{r['write']['base_rss_mb']:8.0f} MB {r['read']['peak_rss_mb']:7.0f} MB "
              f"{r['read']['base_rss_mb']:7.0f} MB {r['read']['rows_per_s'] / 1e6:9.2f} M")  # fmt: skip
    small, large = results["small"], results["large"]
    for stage in ("write", "read"):
        ratio = large[stage]["peak_rss_mb"] / small[stage]["peak_rss_mb"]
        print(f"{stage} peak RSS large / small: {ratio:.3f}  (target <= 1.10; cache size ratio "
              f"{large['bytes'] / small['bytes']:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
