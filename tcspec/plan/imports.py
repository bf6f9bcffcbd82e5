"""Tasks that import released dictionaries: per layer, or one circuit-tracer CLT folder.
A task's id covers the files' bytes."""

from __future__ import annotations

from pathlib import Path

from tcspec.checksums import file_hashes
from tcspec.models.hooks import full_name
from tcspec.plan.configs import IMPORTED_MEMBER, ImportedMemberConfig
from tcspec.plan.task import Task, make_task
from tcspec.vocab import CLT, CT_CONFIG


def import_task(name: str, d, layer: int) -> Task:
    """Import a released dictionary into tcspec's format; its id covers the files' bytes.
    (The loader made a relative local path relative to the spec file.)"""
    path = d.path.replace("{layer}", str(layer))
    config = ImportedMemberConfig(
        layer=layer, path=path, repo=d.repo, format=d.format,
        in_hook=full_name(layer, d.in_hook) if d.in_hook else None,
        out_hook=full_name(layer, d.out_hook) if d.out_hook else None,
        trust_pickle=d.trust_pickle, files=file_hashes(Path(path)) if d.repo is None else {},
    )  # fmt: skip
    label = {"dictionary": name, "member": IMPORTED_MEMBER, "point": {}}
    return make_task("import", f"{name}-L{layer}-import", config, {}, {}, label)


def is_clt_folder(d) -> bool:
    """Whether a `kind: pretrained` dictionary is a local circuit-tracer cross-layer
    transcoder folder (one dictionary over all its layers, imported by one task)."""
    if d.kind != "pretrained" or d.repo is not None or d.format not in ("auto", "circuit-tracer"):
        return False
    from tcspec.dictionaries.clt_io import read_ct_clt_config

    try:
        return (Path(d.path) / CT_CONFIG).is_file() and bool(read_ct_clt_config(d.path))
    except ValueError:
        return False


def import_clt(name: str, d) -> Task:
    """Import a circuit-tracer CLT folder (blocks 0..n-1) into tcspec's CLT format."""
    config = ImportedMemberConfig(
        layer=0, path=d.path, repo=None, format="circuit-tracer", in_hook=None, out_hook=None,
        trust_pickle=False, files=file_hashes(Path(d.path)), kind=CLT,
    )  # fmt: skip
    label = {"dictionary": name, "member": IMPORTED_MEMBER, "point": {}}
    return make_task("import", f"{name}-clt-import", config, {}, {}, label)
