"""acts stage: one forward pass per batch caches every hook the dictionaries read."""

from __future__ import annotations

from tcspec import layout
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task


def run(ctx) -> dict:
    from tcspec.activations import cache_activations

    cfg = ctx.config
    model = model_task.load(ctx)
    manifest = cache_activations(
        model,
        tokens_task.load(ctx, "train"),
        list(cfg.hooks),
        ctx.out / layout.CACHE,
        dtype=cfg.acts.dtype,
        batch_contexts=cfg.acts.batch_contexts,
        shard_tokens=cfg.acts.shard_tokens,
        exclude_tokens=model_task.excluded_tokens(model, cfg.bos),
        meta={
            "task": ctx.task.id,
            "model": ctx.task.deps["model"][1],
            "tokens": ctx.task.deps["tokens"][1],
        },
    )
    return {"rows": manifest["total_rows"], "hooks": cfg.hooks}
