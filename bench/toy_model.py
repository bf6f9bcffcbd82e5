"""Train the default toy model and print its wall time and metrics.

    python bench/toy_model.py [--out DIR] [--threads N] [--steps N] [--batch N] [--lr X]
                              [--task-fraction X] [--gt-weight X] [--vocab-size N]
                              [--weights family=w,...] [--gt-max-duration N]

Targets: greater-than prob diff on held-out start years >= 0.5, held-out text loss well
below the unigram baseline, and at least one layer's MLP ablation costing >= 1 nat.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tcspec.models import corpus, toy  # noqa: E402
from tcspec.models.corpus import DEFAULT_FAMILY_WEIGHTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: temp)")
    parser.add_argument("--recipe", default="greater_than_mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--d-mlp", type=int, default=None)
    parser.add_argument("--task-fraction", type=float, default=None)
    parser.add_argument("--gt-weight", type=float, default=None, help="greater-than share")
    parser.add_argument("--weights", default=None, help="family=weight,... (task mix)")
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--gt-max-duration", type=int, default=None, help="max ZZ - YY")
    parser.add_argument("--normal-pos-init", action="store_true", help="no sinusoidal W_pos")
    parser.add_argument("--number-codes", choices=["none", "init", "fixed"], default="fixed")
    args = parser.parse_args()
    overrides_extra = {
        "sinusoidal_init": not args.normal_pos_init,
        "number_codes": args.number_codes,
    }
    if args.gt_max_duration is not None:
        corpus.GT_MAX_DURATION = args.gt_max_duration
    torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in ("steps", "batch", "lr", "d_mlp") if getattr(args, k)}
    custom = (args.task_fraction, args.gt_weight, args.weights, args.vocab_size)
    if any(value is not None for value in custom):
        base = toy.get_recipe(args.recipe)
        weights = dict(base.family_weights or DEFAULT_FAMILY_WEIGHTS)
        if args.gt_weight is not None:
            rest = (1.0 - args.gt_weight) / (len(weights) - 1)
            weights = {k: args.gt_weight if k == "greater_than" else rest for k in weights}
        if args.weights is not None:
            pairs = (item.split("=") for item in args.weights.split(","))
            weights = {name: float(value) for name, value in pairs}
        toy.RECIPES["bench"] = toy.ToyRecipe(
            task_fraction=base.task_fraction if args.task_fraction is None else args.task_fraction,
            family_weights=weights,
            vocab_size=args.vocab_size or base.vocab_size,
        )
        args.recipe = "bench"

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "toy"
        meta = toy.train_toy_model(
            out, recipe=args.recipe, seed=args.seed, **overrides, **overrides_extra
        )
    m = meta["metrics"]
    print(json.dumps({"timing": meta["timing"], "training": meta["training"]}))
    print(
        f"greater-than prob diff (held-out YY): {m['greater_than_prob_diff']:.3f}  "
        f"(train YY: {m['greater_than_prob_diff_train_yy']:.3f}, "
        f"all YY: {m['greater_than_prob_diff_all_yy']:.3f})"
    )
    print(f"text loss {m['text_loss']:.3f} vs unigram {m['unigram_text_loss']:.3f} nats")
    for layer, abl in m["mlp_ablation"].items():
        print(
            f"MLP{layer} zero-ablated: text loss +{abl['text_loss_increase']:.3f} nats, "
            f"prob diff {abl['greater_than_prob_diff']:.3f} "
            f"(all YY: {abl['greater_than_prob_diff_all_yy']:.3f})"
        )
    print(f"task_layer = {meta['task_layer']}")
    ok = (
        m["greater_than_prob_diff"] >= 0.5
        and m["text_loss"] < m["unigram_text_loss"] - 1.0
        and max(a["text_loss_increase"] for a in m["mlp_ablation"].values()) >= 1.0
    )
    print("targets met" if ok else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
