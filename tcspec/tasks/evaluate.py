"""evaluate stage: sparsity and fidelity metrics with a dictionary spliced into the model."""

from __future__ import annotations

from tcspec import paths
from tcspec.tasks import read_json, write_json
from tcspec.tasks.model import DTYPES


def run(ctx) -> dict:
    from tcspec import coders
    from tcspec.data import load_tokens
    from tcspec.evaluate import evaluate_coders
    from tcspec.models.load import load_model

    cfg = ctx.task.config
    model_cfg = ctx.dep("model").config
    model = load_model(ctx.dep_dir("model"), ctx.device, DTYPES[model_cfg.get("dtype", "float32")])
    tokens = load_tokens(ctx.dep_dir("tokens") / "tokens", "eval")
    rows = -(-cfg["eval_tokens"] // tokens.shape[1])
    tokens = tokens[:rows]
    trains = ctx.deps_of("train")
    loaded = []
    for train in trains:
        member = next(m for m in train.config["members"] if m["name"] == cfg["member"])
        folder = paths.member_dir(ctx.results, train.id, cfg["member"])
        loaded.append((coders.load(folder, device=ctx.device), member["layer"], folder, member))
    splice = "all" if len(loaded) > 1 else "each"
    result = evaluate_coders(
        model,
        [(c, layer) for c, layer, _, _ in loaded],
        tokens,
        batch_contexts=cfg["batch_contexts"],
        splice=splice,
    )
    metrics = result if isinstance(result, dict) else result[0]
    training = [
        read_json(f / "training.json") for _, _, f, _ in loaded if (f / "training.json").exists()
    ]
    record = {
        "dictionary": cfg["dictionary"],
        "kind": loaded[0][0].cfg.kind,
        "layers": cfg["layers"],
        "member": cfg["member"],
        "point": cfg["point"],
        "opts": loaded[0][3]["opts"],
        "d_sae": loaded[0][0].cfg.d_sae,
        "splice": splice,
        "eval_tokens": int(tokens.size),
        "metrics": metrics,
        "training": [_training_summary(t) for t in training],
    }
    write_json(ctx.out / "metrics.json", record)
    return {"metrics": metrics}


def _training_summary(t: dict) -> dict:
    return {
        k: t[k] for k in ("steps", "tokens", "tokens_per_s", "wall_s", "live_fraction") if k in t
    }
