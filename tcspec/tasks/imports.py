"""import stage: a released dictionary, loaded through tcspec.interop and saved in tcspec's
format into its task folder (then evaluated and studied like a trained one)."""

from __future__ import annotations

from pathlib import Path

from tcspec.checksums import file_hashes


def run(ctx) -> dict:
    from tcspec.dictionaries import shapes
    from tcspec.interop import detect_format

    cfg = ctx.config
    path = Path(cfg.path)
    if cfg.repo:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(cfg.repo)) / cfg.path
    elif file_hashes(path) != cfg.files:
        raise ValueError(
            f"{path}: the files changed since the plan was compiled; rerun so the import "
            "gets the id of their new contents"
        )
    fmt = None if cfg.format == "auto" else cfg.format
    d = shapes.load_released(
        path,
        cfg.kind,
        fmt,
        layer=cfg.layer,
        trust_pickle=cfg.trust_pickle,
        in_hook=cfg.in_hook,
        out_hook=cfg.out_hook,
    )
    source = {"source": str(path), "format": fmt or detect_format(path)}
    shapes.save(d, ctx.out, extra=source)
    return source | {"d_sae": d.cfg.d_sae, "kind": d.cfg.kind}
