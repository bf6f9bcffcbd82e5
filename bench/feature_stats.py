"""Feature-statistics throughput (tokens/s) of a 16k-feature dictionary on synthetic inputs.

    python bench/feature_stats.py [--tiny] [--d-sae 16384] [--d-in 128] [--tokens 262144]
                                  [--threads 2] [--pages 100] [--device cpu]

The inputs stand in for a model's hook activations: x = E[token] + 0.5 E'[previous token]
(a random table lookup, so the measured time is the statistics', not a model's). The
dictionary is a random SAE whose encoder biases are set so each feature fires on about
`--density` of tokens (L0 = density * d_sae). Both passes, the examples with context of
`--pages` features and the proxies are timed; throughput counts eval tokens once.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.features.stats import StatsConfig, feature_statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tiny", action="store_true", help="seconds-long smoke run (d_sae 1024, 16k tokens)"
    )
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--tokens", type=int, default=262_144)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab", type=int, default=3072)
    p.add_argument("--density", type=float, default=0.003)
    p.add_argument("--pages", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-mb", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.tiny:
        args.d_sae, args.tokens = 1024, 16_384
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    E = torch.randn(args.vocab, args.d_in, generator=g)  # [V, d_in]
    E_prev = torch.randn(args.vocab, args.d_in, generator=g)

    def hook_inputs(tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, d_in]
        prev = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
        return (E[tokens] + 0.5 * E_prev[prev]).to(args.device)

    coder = Coder(CoderConfig(kind="sae", d_in=args.d_in, d_out=args.d_in, d_sae=args.d_sae)).to(
        args.device
    )
    with torch.no_grad():  # set each feature's threshold at its (1 - density) quantile
        sample = hook_inputs(torch.randint(0, args.vocab, (16, args.context), generator=g))
        pre = coder.pre_acts(sample.reshape(-1, args.d_in))  # [n, d_sae]
        k = max(1, round(args.density * len(pre)))
        coder.b_enc -= pre.kthvalue(len(pre) - k + 1, dim=0).values
    rows = -(-args.tokens // args.context)
    tokens = (
        np.random.default_rng(0).integers(1, args.vocab, size=(rows, args.context)).astype(np.int32)
    )
    tokens[:, 0] = 0
    cfg = StatsConfig(cache_mb=args.cache_mb, batch_contexts=32)

    def pages(count, n):
        live = torch.nonzero(count >= 4).flatten()
        return live[torch.randperm(len(live), generator=g)[: args.pages]].tolist()

    start = time.perf_counter()
    stats = feature_statistics(coder, hook_inputs, tokens, args.vocab, cfg, pages)
    wall = time.perf_counter() - start
    count = stats.tensors["count"]
    report = {
        "d_sae": args.d_sae,
        "d_in": args.d_in,
        "eval_tokens": stats.n_tokens,
        "l0": round(count.sum().item() / stats.n_tokens, 2),
        "live_fraction": round((count > 0).float().mean().item(), 4),
        "pages": len(stats.pages),
        "examples": len(stats.examples),
        "threads": args.threads,
        "device": args.device,
        "input_cache": stats.n_tokens * args.d_in * 4 <= args.cache_mb * 2**20,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(stats.n_tokens / wall),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
