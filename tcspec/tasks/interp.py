"""interp stage: statistics of one dictionary over the eval split, the sampling of its study
features, and its dashboard site: stats/ (tcspec.features.stats files), dashboard/."""

from __future__ import annotations

import math

from tcspec import layout
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task


def run(ctx) -> dict:
    from tcspec.features import study as study_lib

    cfg = ctx.config
    ref = cfg.coder
    coder, norms = _load(ctx, ref)
    model = model_task.load(ctx)
    tokens = tokens_task.load(ctx, "eval", cfg.eval_tokens)
    order: list[int] = []

    def choose_pages(count, n_tokens: int) -> list[int]:
        order.extend(
            study_lib.feature_order(
                count.numpy(), n_tokens, n=cfg.features, seed=cfg.seed, label=ref.label,
                live_threshold=cfg.live_threshold, min_examples=cfg.min_examples,
            )
        )  # fmt: skip
        return order[: max(cfg.features, cfg.dashboard_features)]

    hooks = coder_hooks(ctx, coder)
    cfgs = stats_config(model, cfg.examples, cfg.bands, cfg.context_window, cfg.seed, cfg.bos)
    stats, index = write_site(
        model, (coder, hooks[0], norms), tokens, cfgs, choose_pages, ctx.out, ref.label,
        lambda stats: _meta(cfg, hooks, order, stats),
    )  # fmt: skip
    return {
        "dictionary": ref.label,
        "eval_tokens": stats.n_tokens,
        "live": int((stats.tensors["frequency"] > cfg.live_threshold).sum()),
        "dead": int((stats.tensors["count"] == 0).sum()),
        "eligible": len(order),
        "pages": len(stats.pages),
        "dashboard": str(index),
    }


def stats_config(model, examples: int, bands: int, context_window: int, seed: int, bos: str):
    """The statistics settings of a dictionary's feature pages."""
    from tcspec.features import stats as interp

    return interp.StatsConfig(
        top_k=examples, bands=bands, per_band=math.ceil(examples / bands),
        context_window=context_window, seed=seed,
        exclude_tokens=model_task.excluded_tokens(model, bos),
    )  # fmt: skip


def coder_hooks(ctx, coder, dep: str = "coder_0") -> tuple[str, str]:
    """(input, output) hook of a dictionary: its own, or its import task's keys."""
    in_hook = coder.cfg.in_hook or ctx.dep(dep).config.in_key
    out_hook = coder.cfg.out_hook or ctx.dep(dep).config.out_key
    return in_hook, out_hook


def write_site(model, view, tokens, stats_cfg, choose_pages, out, title, meta_of):
    """Statistics of every feature of a dictionary over ``tokens``, examples of the features
    ``choose_pages(count, n_tokens)`` picks, saved in ``out/STATS``, and their dashboard in
    ``out/DASHBOARD``. ``view``: (the coder, its input hook, and for a CLT layer where each
    feature writes, else None); ``meta_of(stats)`` describes them. Returns (the statistics,
    the dashboard's index page)."""
    from tcspec.features import dashboards, files, views
    from tcspec.features import stats as interp

    coder, in_hook, norms = view
    stats = interp.feature_statistics(
        coder, interp.model_hook_inputs(model, in_hook), tokens, model.cfg.d_vocab, stats_cfg,
        choose_pages,
    )  # fmt: skip
    views.add_input_invariant(stats, coder, model)
    stats.meta = meta_of(stats)
    if norms is not None:  # a CLT layer's features: where each writes
        stats.tensors[files.WRITE_NORMS], blocks = norms
        stats.meta[files.WRITE_BLOCKS] = blocks
    vocab = views.vocab_strings(model.tokenizer, model.cfg.d_vocab)
    files.save_stats(stats, out / layout.STATS, vocab)
    return stats, dashboards.build_dashboard(out / layout.STATS, out / layout.DASHBOARD, title)


def _load(ctx, ref):
    """The dictionary whose features are studied, and for a CLT layer the norms of its
    decoders into each layer it writes ([F, n_out], their blocks); else None."""
    from tcspec.dictionaries import shapes

    return shapes.layer_view(shapes.load(ctx.coder_dir(ref), ctx.device), ref.layer)


def _meta(cfg, hooks: tuple[str, str], order: list[int], stats) -> dict:
    from tcspec.features import study as study_lib

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
