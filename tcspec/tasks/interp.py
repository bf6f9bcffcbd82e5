"""interp stage, two steps (``config["step"]``):

- ``features``: statistics of one trained dictionary over the eval split, the sampling of
  its study features, and its dashboard site:  stats/ (tcspec.interp files), dashboard/.
- ``study``: the blind rating packet over every studied dictionary (tcspec.study):
  packet/packet.html + packet/ratings.csv for raters; key.json and proxies.csv private.
"""

from __future__ import annotations

import math

from tcspec import paths
from tcspec.tasks.model import DTYPES


def run(ctx) -> dict:
    step = ctx.task.config["step"]
    if step == "features":
        return features(ctx)
    if step == "study":
        return study(ctx)
    raise ValueError(f"interp task {ctx.task.id}: unknown step `{step}`")


def label_of(cfg: dict) -> str:
    """Display name of a dictionary: ``tc-L1-l1_0.001``."""
    return f"{cfg['dictionary']}-L{cfg['layer']}-{cfg['member']}"


def features(ctx) -> dict:
    from tcspec import coders, dashboards, interp
    from tcspec import study as study_lib
    from tcspec.data import load_tokens
    from tcspec.models.load import load_model

    cfg = ctx.task.config
    train = ctx.dep("train")
    member = next(m for m in train.config["members"] if m["name"] == cfg["member"])
    coder = coders.load(paths.member_dir(ctx.results, train.id, cfg["member"]), ctx.device)
    model_cfg = ctx.dep("model").config
    model = load_model(ctx.dep_dir("model"), ctx.device, DTYPES[model_cfg.get("dtype", "float32")])
    tokens = load_tokens(ctx.dep_dir("tokens") / "tokens", "eval")
    tokens = tokens[: -(-cfg["eval_tokens"] // tokens.shape[1])]
    label = label_of(cfg)
    seed = cfg.get("seed", ctx.spec.seed)
    n_study = cfg["features"]
    live_threshold = member["opts"]["live_threshold"]
    stats_cfg = interp.StatsConfig(
        top_k=cfg["examples"],
        bands=cfg["bands"],
        per_band=math.ceil(cfg["examples"] / cfg["bands"]),
        context_window=cfg["context_window"],
        seed=seed,
    )
    order: list[int] = []

    def choose_pages(count, n_tokens: int) -> list[int]:
        order.extend(
            study_lib.feature_order(
                count.numpy(), n_tokens, n=n_study, seed=seed, label=label,
                live_threshold=live_threshold, min_examples=cfg["min_examples"],
            )
        )  # fmt: skip
        return order[: max(n_study, cfg["dashboard_features"])]

    in_hook = coder.cfg.in_hook or member["in_key"]
    stats = interp.feature_statistics(
        coder, interp.model_hook_inputs(model, in_hook), tokens, model.cfg.d_vocab, stats_cfg,
        choose_pages,
    )  # fmt: skip
    interp.add_input_invariant(stats, coder, model)
    stats.meta = {
        "label": label,
        "dictionary": cfg["dictionary"],
        "kind": cfg["kind"],
        "layer": cfg["layer"],
        "member": cfg["member"],
        "in_hook": in_hook,
        "out_hook": coder.cfg.out_hook or member["out_key"],
        "live_threshold": live_threshold,
        "eligible": len(order),
        "study": order[:n_study],
        "proxies": {
            str(f): p
            for f, p in study_lib.feature_proxies(stats.examples, stats.r2, order[:n_study]).items()
        },
    }
    vocab = interp.vocab_strings(model.tokenizer, model.cfg.d_vocab)
    interp.save_stats(stats, ctx.out / "stats", vocab)
    index = dashboards.build_dashboard(ctx.out / "stats", ctx.out / "dashboard", label)
    freq = stats.tensors["frequency"]
    return {
        "dictionary": label,
        "eval_tokens": stats.n_tokens,
        "live": int((freq > live_threshold).sum()),
        "dead": int((stats.tensors["count"] == 0).sum()),
        "eligible": len(order),
        "pages": len(stats.pages),
        "dashboard": str(index),
    }


def study(ctx) -> dict:
    from tcspec.study import build_study

    cfg = ctx.task.config
    folders = [t.dir(ctx.results) / "stats" for t in ctx.deps_of("interp")]
    return build_study(folders, ctx.out, cfg["features"], cfg["seed"])
