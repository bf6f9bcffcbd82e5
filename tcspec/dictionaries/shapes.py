"""A dictionary's two shapes, for callers that need not ask which one they hold: a per-layer
dictionary (`tcspec.dictionaries.coders.Coder`, one per layer) and a cross-layer transcoder
(`tcspec.dictionaries.clt.CLT`, one over all its layers). What differs between them is
answered here: how a folder is loaded, what traces through a model, how one layer's
features are seen, whether a kind spans layers. `spans_layers` imports nothing heavy (the
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
