"""tables stage: comparison tables and plots from every metrics.json of the spec."""

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
        records, out, include=cfg["include"], reference=cfg["reference"], title=cfg["experiment"]
    )
    return {"records": len(records), "files": [str(p) for p in written]}
