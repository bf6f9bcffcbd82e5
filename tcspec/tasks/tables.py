"""tables stage: comparison tables and plots from every metrics.json of the spec, plus the
interpretability study and circuit studies when the spec has them."""

from __future__ import annotations

from tcspec import paths
from tcspec.tasks import read_json


def run(ctx) -> dict:
    from tcspec.tables import build_tables

    cfg = ctx.task.config
    records = []
    for task in ctx.deps_of("evaluate"):
        f = task.dir(ctx.results) / "metrics.json"
        if f.exists():
            records.append(read_json(f))
    out = paths.tables_dir(ctx.results, cfg["experiment"])
    written = build_tables(
        records,
        out,
        include=cfg["include"],
        reference=cfg["reference"],
        title=cfg["experiment"],
        extra={"interpretability": interpretability(ctx), "greater_than": circuits(ctx)},
    )
    return {"records": len(records), "files": [str(p) for p in written]}


def interpretability(ctx) -> list:
    """Table 1 from ingested ratings, and the automatic proxies of the study's features."""
    import pandas as pd

    from tcspec.study import proxy_summary, ratings_files, table1

    studies = [t for t in ctx.deps_of("interp") if t.config.get("step") == "study"]
    if not studies or not studies[0].done(ctx.results).exists():
        return []
    experiment = ctx.task.config["experiment"]
    ratings, _ = ratings_files(ctx.results, experiment)
    out = []
    counts = table1(ctx.results, experiment)
    if counts is not None:
        out.append(("table1", counts, "Blind interpretability ratings (Table 1)"))
    proxies = proxy_summary(studies[0].dir(ctx.results), ratings if ratings.exists() else None)
    if isinstance(proxies, pd.DataFrame) and len(proxies):
        out.append(("interp_proxies", proxies, "Automatic interpretability proxies per dictionary"))
    return out


def circuits(ctx) -> list:
    """The circuit studies' tables (greater-than metric, keep-top-k)."""
    import pandas as pd

    out = []
    for task in ctx.deps_of("circuits"):
        folder = task.dir(ctx.results)
        for stem, caption in (
            ("greater_than", "Greater-than probability difference"),
            ("keep_top_k", "Keep-top-k: transcoder features vs MLP neurons"),
        ):
            f = folder / f"{stem}.csv"
            if f.exists():
                out.append((f"{stem}-{task.id}", pd.read_csv(f), f"{caption} ({task.id})"))
    return out
