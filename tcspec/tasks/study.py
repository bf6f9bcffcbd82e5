"""study stage: the blind rating packet over every studied dictionary (tcspec.features.study):
packet/packet.html + packet/ratings.csv for raters; key.json and proxies.csv private."""

from __future__ import annotations

from tcspec import layout


def run(ctx) -> dict:
    from tcspec.features.study import build_study

    folders = [t.dir(ctx.results) / layout.STATS for t in ctx.deps_of("interp")]
    return build_study(folders, ctx.out, ctx.config.features, ctx.config.seed)
