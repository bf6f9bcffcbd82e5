"""interp stage: statistics of one dictionary over the eval split, the sampling of its study
features, and its dashboard site: stats/ (tcspec.interp files), dashboard/."""

from __future__ import annotations

import math

from tcspec import layout
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task


def run(ctx) -> dict:
    from tcspec import dashboards, interp
    from tcspec import study as study_lib

    cfg = ctx.config
    ref = cfg.coder
    coder, norms = _load(ctx, ref)
    model = model_task.load(ctx)
    tokens = tokens_task.load(ctx, "eval", cfg.eval_tokens)
    stats_cfg = interp.StatsConfig(
        top_k=cfg.examples,
        bands=cfg.bands,
        per_band=math.ceil(cfg.examples / cfg.bands),
        context_window=cfg.context_window,
        seed=cfg.seed,
        exclude_tokens=model_task.excluded_tokens(model, cfg.bos),
    )
    order: list[int] = []

    def choose_pages(count, n_tokens: int) -> list[int]:
        order.extend(
            study_lib.feature_order(
                count.numpy(), n_tokens, n=cfg.features, seed=cfg.seed, label=ref.label,
                live_threshold=cfg.live_threshold, min_examples=cfg.min_examples,
            )
        )  # fmt: skip
        return order[: max(cfg.features, cfg.dashboard_features)]

    in_hook = coder.cfg.in_hook or ctx.dep("coder_0").config.in_key
    stats = interp.feature_statistics(
        coder, interp.model_hook_inputs(model, in_hook), tokens, model.cfg.d_vocab, stats_cfg,
        choose_pages,
    )  # fmt: skip
    interp.add_input_invariant(stats, coder, model)
    out_hook = coder.cfg.out_hook or ctx.dep("coder_0").config.out_key
    stats.meta = _meta(cfg, (in_hook, out_hook), order, stats)
    if norms is not None:  # a CLT layer's features: where each writes
        stats.tensors[interp.WRITE_NORMS], blocks = norms
        stats.meta[interp.WRITE_BLOCKS] = blocks
    interp.save_stats(
        stats, ctx.out / layout.STATS, interp.vocab_strings(model.tokenizer, model.cfg.d_vocab)
    )
    index = dashboards.build_dashboard(
        ctx.out / layout.STATS, ctx.out / layout.DASHBOARD, ref.label
    )
    return {
        "dictionary": ref.label,
        "eval_tokens": stats.n_tokens,
        "live": int((stats.tensors["frequency"] > cfg.live_threshold).sum()),
        "dead": int((stats.tensors["count"] == 0).sum()),
        "eligible": len(order),
        "pages": len(stats.pages),
        "dashboard": str(index),
    }


def _load(ctx, ref):
    """The dictionary whose features are studied, and for a CLT layer the norms of its
    decoders into each layer it writes ([F, n_out], their blocks); else None."""
    from tcspec import coders
    from tcspec.kinds import CLT

    if ref.kind != CLT:
        return coders.load(ctx.coder_dir(ref), ctx.device), None
    from tcspec.clt import io, views

    clt = io.load(ctx.coder_dir(ref), ctx.device)
    i = views.layer_index(clt, ref.layer)
    return views.layer_coder(clt, i), (views.write_norms(clt, i), list(clt.cfg.blocks[i:]))


def _meta(cfg, hooks: tuple[str, str], order: list[int], stats) -> dict:
    from tcspec import study as study_lib

    ref, study = cfg.coder, order[: cfg.features]
    proxies = study_lib.feature_proxies(stats.examples, stats.r2, study)
    return {
        "label": ref.label,
        "dictionary": ref.dictionary,
        "kind": ref.kind,
        "layer": ref.layer,
        "member": ref.member,
        "in_hook": hooks[0],
        "out_hook": hooks[1],
        "live_threshold": cfg.live_threshold,
        "eligible": len(order),
        "study": study,
        "proxies": {str(f): p for f, p in proxies.items()},
    }
