"""export stage: dictionaries in SAELens, sparsify or circuit-tracer format, written into
the task's folder (``export/``); the workflow copies it to results/<experiment>/export/<to>/."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tcspec import layout


def run(ctx) -> dict:
    from tcspec.dictionaries import shapes

    cfg = ctx.config
    root = ctx.out / layout.EXPORT
    facts = dict(model_name=cfg.model_name, context_size=cfg.context_size, dataset=cfg.dataset)
    written = []
    sets: dict[tuple, dict] = defaultdict(dict)  # circuit-tracer: one folder a sweep point
    for ref in cfg.coders:
        d = shapes.load(ctx.coder_dir(ref))
        if cfg.to == "circuit-tracer":
            sets[(ref.dictionary, ref.member)][ref.layer] = d
        else:
            written += shapes.export(d, root / ref.label, cfg.to, **facts)
    for (name, member), by_layer in sets.items():
        written += shapes.write_circuit_tracer(by_layer, root / f"{name}-{member}", **facts)
    return {"files": [str(Path(p).relative_to(ctx.out)) for p in written]}
