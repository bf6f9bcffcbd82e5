"""train stage: every sweep point of one dictionary at one layer, in one pass over the cache."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from tcspec import paths
from tcspec.spec import DictionarySpec


def members(ctx) -> list:
    from tcspec.coders import CoderConfig
    from tcspec.train import Member

    cfg = ctx.task.config
    adapter = TypeAdapter(DictionarySpec)
    out = []
    for m in cfg["members"]:
        opts = adapter.validate_python(m["opts"])
        coder = CoderConfig(
            kind=cfg["kind"],
            d_in=m["d_in"],
            d_out=m["d_out"],
            d_sae=m["d_sae"],
            activation=opts.activation,
            k=opts.k,
            in_hook=m["in_key"],
            out_hook=m["out_key"],
            layer=m["layer"],
        )
        out.append(
            Member(
                name=m["name"],
                opts=opts,
                config=coder,
                in_key=m["in_key"],
                out_key=m["out_key"],
                out_dir=paths.member_dir(ctx.results, ctx.task.id, m["name"]),
                seed=opts.seed,
            )
        )
    return out


def run(ctx) -> dict:
    from tcspec.activations import ActivationReader
    from tcspec.train import train_group

    cfg = ctx.task.config
    if cfg["kind"] == "pretrained":
        return import_dictionary(ctx)
    group = members(ctx)
    keys = sorted({k for m in group for k in (m.in_key, m.out_key)})
    batch_size = cfg["members"][0]["opts"]["batch_size"]
    reader = ActivationReader(
        ctx.dep_dir("acts") / "cache",
        keys,
        batch_size=batch_size,
        seed=ctx.spec.seed,
        device=ctx.device,
    )
    results = train_group(
        group, reader.iter_batches, cfg["steps"], ctx.checkpoints, device=ctx.device
    )
    return {"members": [m.name for m in group], "results": results}


def import_dictionary(ctx) -> dict:
    """A released dictionary, loaded through tcspec.interop and saved in tcspec's format."""
    from tcspec import coders
    from tcspec.interop import detect_format, load_dictionary

    cfg = ctx.task.config
    path = Path(cfg["path"])
    if cfg["repo"]:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(cfg["repo"])) / cfg["path"]
    fmt = None if cfg["format"] == "auto" else cfg["format"]
    coder = load_dictionary(
        path,
        fmt,
        layer=cfg["layer"],
        trust_pickle=cfg["trust_pickle"],
        in_hook=cfg["in_hook"],
        out_hook=cfg["out_hook"],
    )
    out = paths.member_dir(ctx.results, ctx.task.id, "pretrained")
    source = {"source": str(path), "format": fmt or detect_format(path)}
    coders.save(coder, out, extra=source)
    return source | {"d_sae": coder.cfg.d_sae, "kind": coder.cfg.kind}
