"""acts stage: one forward pass per batch caches every hook the dictionaries read."""

from __future__ import annotations

from tcspec.tasks.model import DTYPES


def run(ctx) -> dict:
    from tcspec.activations import cache_activations
    from tcspec.data import load_tokens
    from tcspec.models.load import load_model

    cfg = ctx.task.config
    model_cfg = ctx.dep("model").config
    model = load_model(ctx.dep_dir("model"), ctx.device, DTYPES[model_cfg.get("dtype", "float32")])
    tokens = load_tokens(ctx.dep_dir("tokens") / "tokens", "train")
    manifest = cache_activations(
        model,
        tokens,
        list(cfg["hooks"]),
        ctx.out / "cache",
        dtype=cfg["dtype"],
        batch_contexts=cfg["batch_contexts"],
        shard_tokens=cfg["shard_tokens"],
        drop_bos=cfg["drop_bos"],
        meta={
            "task": ctx.task.id,
            "model": ctx.task.deps["model"][1],
            "tokens": ctx.task.deps["tokens"][1],
        },
    )
    return {"rows": manifest["total_rows"], "hooks": cfg["hooks"]}
