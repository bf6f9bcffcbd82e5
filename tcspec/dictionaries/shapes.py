"""A dictionary's two shapes, for callers that need not ask which one they hold: a per-layer
dictionary (`tcspec.dictionaries.coders.Coder`, one per layer) and a cross-layer transcoder
(`tcspec.dictionaries.clt.CLT`, one over all its layers). What differs between them is
answered here: how a folder is loaded and saved, how another tool's files are read in and
how circuit-tracer's are written, what traces through a model, how one layer's features are
seen, whether a kind spans layers. `spans_layers` imports nothing heavy (the
compile side asks it); the rest loads torch modules when called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tcspec.vocab import CFG_FILE
from tcspec.vocab import CLT as CLT_KIND

if TYPE_CHECKING:
    from tcspec.dictionaries.clt import CLT
    from tcspec.dictionaries.coders import Coder


def spans_layers(kind: str) -> bool:
    """Whether a dictionary of `kind` is one object over several layers (a CLT)."""
    return kind == CLT_KIND


def load(folder: str | Path, device="cpu") -> Coder | CLT:
    """The dictionary a tcspec folder holds: a Coder or a CLT, as its cfg.json's kind says."""
    from tcspec.dictionaries import clt_io, coders

    raw = json.loads((Path(folder) / CFG_FILE).read_text())
    kind = raw.get("kind") if isinstance(raw, dict) else None  # else the loader says why
    return (clt_io if spans_layers(kind) else coders).load(folder, device)


def load_set(folders: list[tuple[int, Path]], device, dtype) -> dict[int, Coder] | CLT:
    """What traces through a model, in `dtype`: one per-layer dictionary per model block (a
    dict block -> Coder), or one CLT (its one folder); `folders`: (block, folder) pairs."""
    from tcspec.dictionaries.clt import CLT

    loaded = {layer: load(f, device).to(dtype) for layer, f in folders}
    clts = [d for d in loaded.values() if isinstance(d, CLT)]
    if clts and len(loaded) > 1:
        raise ValueError("a CLT traces alone: one folder, not one per layer")
    return clts[0] if clts else loaded


def layer_view(d: Coder | dict[int, Coder] | CLT, block: int) -> tuple[Coder, tuple | None]:
    """The features of `d` at model block `block` as a per-layer Coder, and for a CLT's
    layer the norms of their decoders into each layer they write ([F, n], float32 on the
    CPU) with those blocks; else None. `d`: a Coder, per-layer Coders by block, or a CLT."""
    from tcspec.dictionaries import clt_views
    from tcspec.dictionaries.clt import CLT

    if isinstance(d, CLT):
        i = clt_views.layer_index(d, block)
        return clt_views.layer_coder(d, i), (clt_views.write_norms(d, i), list(d.cfg.blocks[i:]))
    return (d[block] if isinstance(d, dict) else d), None


def save(d: Coder | CLT, folder: str | Path, extra: dict | None = None) -> None:
    """Write `d` as a tcspec folder (cfg.json with `extra`, weights) at `folder`."""
    from tcspec.dictionaries import clt_io, coders

    (clt_io if spans_layers(d.cfg.kind) else coders).save(d, folder, extra)


def load_released(path: Path, kind: str, fmt: str | None, **opts) -> Coder | CLT:
    """A released dictionary read from another tool's files: of `kind` CLT, a circuit-tracer
    CLT folder; else a per-layer dictionary in `fmt` (None: detected), `opts` as
    `tcspec.interop.load_dictionary` takes them."""
    if spans_layers(kind):
        from tcspec.dictionaries.clt_io import load_circuit_tracer

        return load_circuit_tracer(path)
    from tcspec.interop import load_dictionary

    return load_dictionary(path, fmt, **opts)


def export(d: Coder | CLT, out: Path, to: str, *, model_name: str, **facts) -> list[Path]:
    """Write one dictionary in the format `to` (`tcspec.interop.export`'s; a CLT as
    circuit-tracer's CLT folder, the one format that holds it); the files written."""
    from tcspec.interop.export import export as export_one
    from tcspec.interop.export import refusal, refuse

    if not spans_layers(d.cfg.kind):
        return export_one(d, out, to, model_name=model_name, **facts)
    refuse(d, to, refusal(to, d.cfg.kind, d.cfg.activation, d.cfg.d_model, d.cfg.d_model))
    return write_circuit_tracer({d.cfg.blocks[0]: d}, out, model_name=model_name, **facts)


def write_circuit_tracer(
    by_layer: dict[int, Coder | CLT], out: Path, *, model_name: str, **facts
) -> list[Path]:
    """Write one dictionary's sweep point as circuit-tracer loads it: per-layer transcoders by
    layer as a transcoder set, or a CLT (listed at each layer it spans) as a CLT folder (a
    TopK one with `activation: topk`); the files written. `facts`: the set's
    `context_size` and `dataset`."""
    from tcspec.dictionaries.clt import CLT

    clts = {id(d): d for d in by_layer.values() if isinstance(d, CLT)}
    if not clts:
        from tcspec.interop import export_transcoder_set

        return export_transcoder_set(by_layer, out, model_name=model_name, **facts)
    if len(clts) > 1 or len(clts) != len({id(d) for d in by_layer.values()}):
        raise ValueError("a CLT is written alone: one CLT, not beside other dictionaries")
    from tcspec.dictionaries.clt_io import export_circuit_tracer

    export_circuit_tracer(next(iter(clts.values())), out, model_name=model_name, allow_topk=True)
    return sorted(p for p in Path(out).iterdir() if p.is_file())
