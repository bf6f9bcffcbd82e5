"""Activation caching and reading throughput at the quickstart shape.

Caching: ``cache_activations`` (forward + conversion + shard writes + checksums) against the
bare model forward on the same batches in the same process, both as far as the last hooked
block (the same compute) and as the full forward to logits. Target: caching >= 0.85x the
same-compute forward. Also the two ways to grab activations, forward only: hooks that keep
the tensors (what ``cache_activations`` does) and ``run_with_cache(names_filter=...)``.

Reading: ``ActivationReader`` shuffled batches of 4,096 rows of a transcoder's (input,
output) pair, against the training step's consumption (~100k tokens/s). Target: >= 5x.

    python bench/cache_throughput.py [--tiny] [--contexts N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xxhash
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.data.cache import ActivationReader, cache_activations

TRAIN_TOKENS_PER_S = 100_000  # the trainer's consumption at the quickstart width
HOOKS = [f"blocks.{layer}.{h}" for layer in (0, 1) for h in ("ln2.hook_normalized", "hook_mlp_out")]


def quickstart_model(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=128, d_mlp=512, n_ctx=128, n_heads=4, d_head=32, d_vocab=4096,
        act_fn="gelu", normalization_type="LN", seed=0, device=device,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs (after one warm-up run)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few seconds' worth")
    ap.add_argument("--contexts", type=int, default=None, help="contexts of 128 tokens")
    ap.add_argument("--batch-contexts", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workdir", default=None, help="where to write the cache (a temp dir)")
    args = ap.parse_args()
    n_contexts = args.contexts or (64 if args.tiny else 2048)
    bc = args.batch_contexts

    model = quickstart_model(args.device)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 4096, size=(n_contexts, 128)).astype(np.int32)
    tokens[:, 0] = 0
    n_tok = tokens.size
    batches = [
        torch.as_tensor(tokens[i : i + bc], dtype=torch.long, device=args.device)
        for i in range(0, n_contexts, bc)
    ]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{n_contexts} contexts x 128 = {n_tok:,} tokens, batches of {bc} contexts")  # fmt: skip

    def forward(stop):
        with torch.inference_mode():
            for b in batches:
                model(b, return_type=None if stop else "logits", stop_at_layer=stop)

    def with_hooks():
        store = {}
        with torch.inference_mode(), model.hooks([(h, lambda a, hook: store.update({hook.name: a}))
                                                  for h in HOOKS]):  # fmt: skip
            for b in batches:
                store.clear()
                model(b, return_type=None, stop_at_layer=2)
                _ = [store[h][:, 1:].reshape(-1, 128).cpu() for h in HOOKS]

    def with_run_with_cache():
        with torch.inference_mode():
            for b in batches:
                _, cache = model.run_with_cache(b, names_filter=HOOKS, stop_at_layer=2)
                _ = [cache[h][:, 1:].reshape(-1, 128).cpu() for h in HOOKS]

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tcspec-bench-"))
    out = work / "cache"

    def cache():
        cache_activations(model, tokens, HOOKS, out, batch_contexts=bc, progress=False)

    t_same = timed(lambda: forward(2))
    t_full = timed(lambda: forward(None))
    t_hooks, t_rwc = float("inf"), float("inf")
    for _ in range(2):  # interleaved, so that neither gains from running second
        t_rwc = min(t_rwc, timed(with_run_with_cache))
        t_hooks = min(t_hooks, timed(with_hooks))
    t_cache = timed(cache)
    size = sum(f.stat().st_size for f in out.rglob("*.npy"))

    def rate(t):
        return f"{n_tok / t / 1e3:8.1f} k tok/s"

    print("\n-- caching (best of 3; hooks and run_with_cache best of 6)")
    print(f"bare forward, blocks 0-1 (same compute)  {rate(t_same)}")
    print(f"bare forward, to logits                  {rate(t_full)}")
    print(f"forward + hooks (kept, to cpu)           {rate(t_hooks)}")
    print(f"forward + run_with_cache(names_filter)   {rate(t_rwc)}")
    print(f"cache_activations (fp32, {size / 1e6:.0f} MB written) {rate(t_cache)}")
    print(f"ratio caching / same-compute forward     {t_same / t_cache:.2f}x  (target >= 0.85)")
    print(f"ratio caching / forward to logits        {t_full / t_cache:.2f}x")
    print(f"ratio hooks / run_with_cache             {t_rwc / t_hooks:.2f}x")

    files = sorted(out.rglob("*.npy"))
    data = [f.read_bytes() for f in files]
    t_x = timed(lambda: [xxhash.xxh3_128_hexdigest(d) for d in data])
    t_s = timed(lambda: [hashlib.sha256(d).hexdigest() for d in data], repeats=1)
    print(f"checksums of the cache: xxh3_128 {size / t_x / 1e9:.1f} GB/s, "
          f"sha256 {size / t_s / 1e9:.2f} GB/s")  # fmt: skip

    print("\n-- reading: shuffled batches of 4,096 rows, keys "
          "blocks.0.ln2.hook_normalized + blocks.0.hook_mlp_out")  # fmt: skip
    keys = HOOKS[:2]
    for verify in (True, False):
        reader = ActivationReader(out, keys, batch_size=4096, seed=0, verify=verify)
        steps = max(reader.steps_per_epoch * 2, 4)  # two epochs: the first one verifies
        it = reader.iter_batches()
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        dt = time.perf_counter() - t
        rows_s = steps * 4096 / dt
        print(f"reader verify={verify!s:5}: {rows_s / 1e6:.2f} M rows/s over {steps} steps, "
              f"{rows_s / TRAIN_TOKENS_PER_S:.1f}x the trainer's ~100k tok/s (target >= 5x)")  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(work)
    else:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
