"""Time the circuit analysis: trace, greedy path search and graph assembly over a prompt set.

    python bench/path_search.py --tiny              # quickstart-size random model, 32 prompts
    python bench/path_search.py --model DIR --coder 0=DIR --coder 1=DIR [--prompts 32]

``--tiny`` builds a model of the quickstart's shape (2 layers, d_model 128, 4 heads, d_mlp
512, d_vocab 3072) with random weights, processed like every tcspec model (fold_ln, centred
writing weights), random transcoders of width 1024 at both layers, and ``--prompts`` prompts
sharing a 13-token template with one varying slot (as greater-than prompts do). The target
is <= 60 s for 32 prompts on 2 CPU cores. Prints one JSON line of timings.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tcspec.circuits.attribution import Attributor, Node, logit_diff_weights, trace
from tcspec.circuits.paths import build_graph, find_paths
from tcspec.dictionaries.coders import Coder, CoderConfig


def tiny_setup(n_prompts: int, d_sae: int, seq: int = 13):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=3072, n_ctx=128,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(model.state_dict(), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)  # fmt: skip
    model.set_use_hook_mlp_in(True)
    coders = {}
    for layer in range(2):
        c = Coder(CoderConfig(kind="transcoder", d_in=128, d_out=128, d_sae=d_sae, layer=layer,
                              in_hook=f"blocks.{layer}.ln2.hook_normalized",
                              out_hook=f"blocks.{layer}.hook_mlp_out"), seed=layer)  # fmt: skip
        with torch.no_grad():
            c.b_enc.fill_(-1.0)  # sparse-ish random features
        coders[layer] = c
    g = torch.Generator().manual_seed(0)
    template = torch.randint(1, 3072, (seq,), generator=g)
    tokens = template.repeat(n_prompts, 1)  # [n, seq]
    tokens[:, seq // 2] = torch.randint(1, 3072, (n_prompts,), generator=g)
    return model, coders, tokens


def load_setup(model_dir: str, coder_args: list[str], n_prompts: int):
    from tcspec.dictionaries.coders import load
    from tcspec.models.greater_than import PAPER_YY, greater_than_prompts, spread_yy
    from tcspec.models.load import load_model

    model = load_model(model_dir, "cpu")
    coders = {}
    for arg in coder_args:
        layer, folder = arg.split("=", 1)
        coders[int(layer)] = load(folder)
    tokens, _ = greater_than_prompts(model.tokenizer, spread_yy(PAPER_YY, n_prompts))
    return model, coders, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="random quickstart-size model")
    p.add_argument("--model", help="a prepared model folder (with model.json)")
    p.add_argument("--coder", action="append", default=[], help="LAYER=DIR of a transcoder")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--branches", type=int, default=15)
    p.add_argument("--top-paths", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.tiny:
        model, coders, tokens = tiny_setup(args.prompts, args.d_sae)
    elif args.model and args.coder:
        model, coders, tokens = load_setup(args.model, args.coder, args.prompts)
    else:
        p.error("give --tiny, or --model and at least one --coder")

    times = {}
    start = time.perf_counter()
    tr = trace(model, tokens, coders)
    att = Attributor(model, coders, tr)
    times["trace_s"] = time.perf_counter() - start
    pos = tokens.shape[1] - 1
    n, d_vocab = tokens.shape[0], model.cfg.d_vocab
    w = logit_diff_weights(d_vocab, [[1]] * n, [[2]] * n)
    root = Node("logit", None, None, pos)
    state = att.logit_root(w, pos)
    t = time.perf_counter()
    paths = find_paths(att, root, state, args.iterations, args.branches, args.top_paths)
    times["search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    graph = build_graph(att, root, state, paths)
    times["graph_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    print(json.dumps({
        "prompts": n, "seq": tokens.shape[1], "d_sae": args.d_sae if args.tiny else None,
        "threads": args.threads, "paths": len(paths), "nodes": len(graph.nodes),
        "node_sum_gap": graph.checks["node_sum_gap"],
        **{k: round(v, 3) for k, v in times.items()},
        "target_s": 60, "ok": times["total_s"] <= 60,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
