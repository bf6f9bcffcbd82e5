"""model stage: train the toy LM, or load a pretrained/checkpoint model once and describe it,
or plant a synthetic source's features."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_of(config) -> torch.dtype:
    """Forward-pass dtype of a model task's config (a toy model is float32)."""
    return DTYPES[getattr(config.model, "dtype", "float32")]


def load(ctx, name: str = "model"):
    """The model of the task's ``name`` dependency, on the task's device."""
    from tcspec.models.load import load_model

    return load_model(ctx.dep_dir(name), ctx.device, dtype_of(ctx.dep(name).config))


def is_synthetic(ctx, name: str = "model") -> bool:
    """Whether the task's ``name`` dependency is a synthetic source (no language model)."""
    return ctx.dep(name).config.model.kind == "synthetic"


def excluded_tokens(model, bos: str) -> tuple[int, ...]:
    """Token ids whose positions count nowhere under the BOS convention `bos` (see
    `tcspec.data.positions`): the model's BOS id under `exclude`, none under `include`."""
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    return (int(bos_id),) if bos == "exclude" and bos_id is not None else ()


def run(ctx) -> dict:
    from tcspec.models import load, toy

    m = ctx.config.model
    if m.kind == "toy":
        dims = {k: getattr(m, k) for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx")}
        steps = {"steps": m.steps} if m.steps else {}
        meta = toy.train_toy_model(ctx.out, recipe=m.recipe, seed=ctx.config.seed, **dims, **steps)
    elif m.kind == "synthetic":
        from tcspec.models.synthetic import build_truth, save_truth

        meta = save_truth(build_truth(m, ctx.config.seed), ctx.out, {"spec": m.model_dump()})
    elif m.kind == "pretrained":
        meta = load.prepare_pretrained(m.name, ctx.out, ctx.device, DTYPES[m.dtype])
    else:
        meta = load.prepare_checkpoint(m.path, ctx.out, ctx.device, DTYPES[m.dtype])
    return {"cfg": meta.get("cfg"), "metrics": meta.get("metrics")}
