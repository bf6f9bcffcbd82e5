"""model stage: train the toy LM, or load a pretrained/checkpoint model once and describe it."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run(ctx) -> dict:
    from tcspec.models import load, toy

    cfg = ctx.task.config
    if cfg["kind"] == "toy":
        dims = {k: cfg[k] for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx")}
        steps = {"steps": cfg["steps"]} if cfg.get("steps") else {}
        meta = toy.train_toy_model(ctx.out, recipe=cfg["recipe"], seed=cfg["seed"], **dims, **steps)
    elif cfg["kind"] == "pretrained":
        meta = load.prepare_pretrained(cfg["name"], ctx.out, ctx.device, DTYPES[cfg["dtype"]])
    else:
        meta = load.prepare_checkpoint(cfg["path"], ctx.out, ctx.device, DTYPES[cfg["dtype"]])
    return {"cfg": meta.get("cfg"), "metrics": meta.get("metrics")}
