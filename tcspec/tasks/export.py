"""export stage: trained dictionaries in SAELens, sparsify or circuit-tracer format."""

from __future__ import annotations

from collections import defaultdict

from tcspec import paths


def run(ctx) -> dict:
    from tcspec import coders
    from tcspec.interop import export, export_transcoder_set

    cfg = ctx.task.config
    root = paths.export_dir(ctx.results, cfg["experiment"], cfg["to"])
    facts = dict(
        model_name=cfg["model_name"], context_size=cfg["context_size"], dataset=cfg["dataset"]
    )
    written = []
    sets: dict[tuple, dict] = defaultdict(dict)
    for c in cfg["coders"]:
        coder = coders.load(paths.member_dir(ctx.results, c["train"], c["member"]))
        if cfg["to"] == "circuit-tracer":
            sets[(c["dictionary"], c["member"])][c["layer"]] = coder
        else:
            out = root / f"{c['dictionary']}-L{c['layer']}-{c['member']}"
            written += export(coder, out, cfg["to"], **facts)
    for (name, member), by_layer in sets.items():
        written += export_transcoder_set(by_layer, root / f"{name}-{member}", **facts)
    return {"files": [str(p) for p in written]}
