"""acts stage: one forward pass per batch caches every hook the dictionaries read (a
synthetic source: its draws of the hooks, no model run)."""

from __future__ import annotations

from tcspec import layout
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task


def run(ctx) -> dict:
    cfg = ctx.config
    if model_task.is_synthetic(ctx):
        manifest = _synthetic(ctx)
    else:
        manifest = _from_model(ctx)
    return {"rows": manifest["total_rows"], "hooks": cfg.hooks}


def _from_model(ctx) -> dict:
    from tcspec.data.cache import cache_activations

    cfg = ctx.config
    model = model_task.load(ctx)
    return cache_activations(
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


def _synthetic(ctx) -> dict:
    """The source's `train` draws, `train_tokens` rows of every hook."""
    from tcspec.data.cache_writer import cache_rows
    from tcspec.models.synthetic import iter_rows, load_truth

    cfg = ctx.config
    truth = load_truth(ctx.dep_dir("model"))
    rows = cfg.rows
    draws = ({h: acts[h] for h in cfg.hooks} for _, acts in iter_rows(truth, "train", rows))
    return cache_rows(
        draws, rows, cfg.hooks, ctx.out / layout.CACHE, dtype=cfg.acts.dtype,
        shard_tokens=cfg.acts.shard_tokens,
        meta={"task": ctx.task.id, "model": ctx.task.deps["model"][1]},
    )  # fmt: skip


def read_by(keys: list[str]):
    """Which files of an acts task's folder (relative paths) a reader of the hooks `keys`
    opens: for `tcspec.tasks.integrity`, which checks only those files' checksums."""
    from tcspec.data.cache_format import read_by as in_cache

    prefix = f"{layout.CACHE}/"
    reads = in_cache(keys)
    return lambda rel: rel.startswith(prefix) and reads(rel[len(prefix) :])
