"""Time one attribution graph, and compare a backward pass with a plain forward+backward.

    python bench/attribution_graph.py                 # toy shape (seconds on 2 CPU threads)
    python bench/attribution_graph.py --gpt2-shape    # 12 layers, d_model 768, 24,576
                                                      # features per layer, 64 tokens,
                                                      # max_feature_nodes 1024 (minutes)
    python bench/attribution_graph.py --device cuda --gpt2-shape

The toy shape is the quickstart's model (2 layers, d_model 128, 4 heads, d_mlp 512, d_vocab
3072) with random weights, random transcoders of 1,024 features at both layers, a 32-token
prompt and every active feature a node. Transcoder biases are set so that ``--l0`` features
are active per token. Reported: active features, nodes, backward passes, wall time of the
graph, time per backward pass (the graph's time over its passes), and the time of one plain
forward+backward of the model over the same batch (``batch_size`` copies of the prompt,
gradients of all weights): ``efficiency = per-pass time / plain forward+backward``. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tcspec.circuits.graph import GraphConfig, attribution_graph
from tcspec.circuits.graph.replacement import run_prompt
from tcspec.dictionaries.coders import Coder, CoderConfig

SHAPES = {
    "toy": dict(n_layers=2, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=3072,
                d_sae=1024, seq=32, max_feature_nodes=None),
    "gpt2": dict(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257,
                 d_sae=24576, seq=64, max_feature_nodes=1024),
}  # fmt: skip


def setup(shape: dict, l0: int, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=shape["n_layers"], d_model=shape["d_model"], d_head=shape["d_head"],
        n_heads=shape["n_heads"], d_mlp=shape["d_mlp"], d_vocab=shape["d_vocab"],
        n_ctx=max(128, shape["seq"]), act_fn="gelu", normalization_type="LN", seed=0,
        device=device,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    d = shape["d_model"]
    coders = {}
    for layer in range(shape["n_layers"]):
        c = CoderConfig(kind="transcoder", d_in=d, d_out=d, d_sae=shape["d_sae"], layer=layer,
                        in_hook=f"blocks.{layer}.ln2.hook_normalized",
                        out_hook=f"blocks.{layer}.hook_mlp_out")  # fmt: skip
        coders[layer] = Coder(c, seed=layer).to(device)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, shape["d_vocab"], (shape["seq"],), generator=g).to(device)
    tokens[0] = 0  # BOS
    _set_sparsity(model, coders, tokens, l0)
    return model, coders, tokens


@torch.no_grad()
def _set_sparsity(model, coders: dict[int, Coder], tokens, l0: int) -> None:
    """b_enc = minus the pre-activation quantile that leaves ``l0`` features per token."""
    run = run_prompt(model, coders, tokens)
    for li, c in coders.items():
        pre = run.pre[li][1:]  # [seq - 1, d_sae]
        q = 1.0 - l0 / c.cfg.d_sae
        c.b_enc.sub_(torch.quantile(pre.flatten().float().cpu()[:1_000_000], q).to(c.b_enc))


def plain_forward_backward(model, tokens, batch: int, rounds: int = 3) -> float:
    """Seconds of one forward+backward (all weight gradients) over ``batch`` copies."""
    best = float("inf")
    for _ in range(rounds):
        model.zero_grad(set_to_none=True)
        _sync(tokens)
        t0 = time.perf_counter()
        logits = model(tokens.expand(batch, -1))
        logits.float().logsumexp(-1).sum().backward()
        _sync(tokens)
        best = min(best, time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return best


def _sync(t) -> None:
    if t.is_cuda:
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpt2-shape", action="store_true", help="the gpt2-shaped model (minutes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--l0", type=int, default=16, help="active features per token and layer")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = "gpt2" if args.gpt2_shape else "toy"
    shape = SHAPES[name]
    model, coders, tokens = setup(shape, args.l0, args.device)
    cfg = GraphConfig(max_feature_nodes=shape["max_feature_nodes"], batch_size=args.batch_size)
    _sync(tokens)
    graph = attribution_graph(model, coders, tokens, cfg)
    _sync(tokens)
    per_pass = graph.seconds / graph.backward_passes
    plain = plain_forward_backward(model, tokens, args.batch_size)
    out = {
        "shape": name, "device": args.device, "threads": args.threads, "seq": shape["seq"],
        "batch_size": args.batch_size, "n_active": graph.n_active,
        "n_features": graph.n_features, "n_nodes": graph.n_nodes,
        "backward_passes": graph.backward_passes, "graph_s": round(graph.seconds, 4),
        "per_pass_s": round(per_pass, 5), "plain_fwd_bwd_s": round(plain, 5),
        "efficiency": round(per_pass / plain, 3),
    }  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
