"""export stage: dictionaries in SAELens, sparsify or circuit-tracer format, written into
the task's folder (``export/``); the workflow copies it to results/<experiment>/export/<to>/."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tcspec import layout
from tcspec.vocab import CLT


def run(ctx) -> dict:
    from tcspec.dictionaries import coders
    from tcspec.interop import export, export_transcoder_set

    cfg = ctx.config
    root = ctx.out / layout.EXPORT
    facts = dict(model_name=cfg.model_name, context_size=cfg.context_size, dataset=cfg.dataset)
    written = []
    sets: dict[tuple, dict] = defaultdict(dict)
    for ref in cfg.coders:
        if ref.kind == CLT:  # the plan exports a CLT only to circuit-tracer
            written += _export_clt(ctx, ref, root / f"{ref.dictionary}-{ref.member}")
            continue
        coder = coders.load(ctx.coder_dir(ref))
        if cfg.to == "circuit-tracer":
            sets[(ref.dictionary, ref.member)][ref.layer] = coder
        else:
            written += export(coder, root / ref.label, cfg.to, **facts)
    for (name, member), by_layer in sets.items():
        written += export_transcoder_set(by_layer, root / f"{name}-{member}", **facts)
    return {"files": [str(Path(p).relative_to(ctx.out)) for p in written]}


def _export_clt(ctx, ref, out: Path) -> list[Path]:
    """A cross-layer transcoder in circuit-tracer's CLT format (a TopK one with
    `activation: topk` and `k` in its config.yaml)."""
    from tcspec.dictionaries import clt_io

    clt_io.export_circuit_tracer(
        clt_io.load(ctx.coder_dir(ref)), out, model_name=ctx.config.model_name, allow_topk=True
    )
    return sorted(p for p in out.iterdir() if p.is_file())
