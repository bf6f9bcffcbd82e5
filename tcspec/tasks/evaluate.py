"""evaluate stage: sparsity and fidelity metrics with a dictionary spliced into the model."""

from __future__ import annotations

from tcspec import atomic, layout
from tcspec.kinds import CLT
from tcspec.tasks import model as model_task
from tcspec.tasks import read_json
from tcspec.tasks import tokens as tokens_task

SPEC_ONLY = {"layers", "zip"}  # fields of the spec, not of one trained dictionary
TRAINING_FIELDS = ("steps", "tokens", "tokens_per_s", "wall_s", "live_fraction")


def excluded_tokens(model, bos: str) -> tuple[int, ...]:
    """Token ids kept out of every metric under the BOS convention `bos`."""
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    return (bos_id,) if bos == "exclude" and bos_id is not None else ()


def run(ctx) -> dict:
    from tcspec import coders
    from tcspec.evaluate import evaluate_coders

    cfg = ctx.config
    model = model_task.load(ctx)
    tokens = tokens_task.load(ctx, "eval", cfg.eval_tokens)
    if cfg.coders[0].kind == CLT:
        return _run_clt(ctx, model, tokens)
    folders = [ctx.coder_dir(ref) for ref in cfg.coders]
    loaded = [coders.load(f, device=ctx.device) for f in folders]
    splice = "all" if len(loaded) > 1 else "each"
    result = evaluate_coders(
        model,
        [(c, ref.layer) for c, ref in zip(loaded, cfg.coders)],
        tokens,
        batch_contexts=cfg.batch_contexts,
        splice=splice,
        exclude_tokens=excluded_tokens(model, cfg.bos),
    )
    metrics = result if isinstance(result, dict) else result[0]
    first = ctx.dep("coder_0").config
    if splice == "each" and getattr(getattr(first, "opts", None), "matryoshka", None):
        metrics = metrics | _prefix_metrics(model, loaded[0], cfg, tokens, first.opts)
    training = [read_json(f / layout.TRAINING) for f in folders if (f / layout.TRAINING).exists()]
    opts = first.opts.model_dump(mode="json", exclude=SPEC_ONLY) if hasattr(first, "opts") else {}
    record = {
        "dictionary": cfg.coders[0].dictionary,
        "kind": loaded[0].cfg.kind,
        "layers": [ref.layer for ref in cfg.coders],
        "member": cfg.coders[0].member,
        "point": cfg.point,
        "opts": opts,
        "d_sae": loaded[0].cfg.d_sae,
        "splice": splice,
        "bos": cfg.bos,
        "eval_tokens": int(tokens.size),
        "metrics": metrics,
        "training": [{k: t[k] for k in TRAINING_FIELDS if k in t} for t in training],
    }
    atomic.write_json(ctx.out / layout.METRICS, record)
    return {"metrics": metrics}


def _run_clt(ctx, model, tokens) -> dict:
    """A cross-layer transcoder spliced into all its layers at once: joint CE, KL and CE
    recovered and total L0 at the top, each layer's sparsity and fidelity in `layers`."""
    from tcspec.clt import io
    from tcspec.clt.evaluate import evaluate_clt

    cfg, (ref,) = ctx.config, ctx.config.coders
    folder = ctx.coder_dir(ref)
    clt = io.load(folder, device=ctx.device)
    exclude = excluded_tokens(model, cfg.bos)
    result = evaluate_clt(
        model, clt, tokens, cfg.batch_contexts, progress=False, exclude_tokens=exclude
    )
    metrics = {k: v for k, v in result.items() if k not in ("layers", "clean_layers")}
    member = ctx.dep("coder_0").config  # trained (with its options) or imported
    opts = member.opts.model_dump(mode="json", exclude=SPEC_ONLY) if hasattr(member, "opts") else {}
    trained = (folder / layout.TRAINING).exists()
    training = [read_json(folder / layout.TRAINING)] if trained else []
    record = {
        "dictionary": ref.dictionary,
        "kind": CLT,
        "layers": list(clt.cfg.blocks),
        "member": ref.member,
        "point": cfg.point,
        "opts": opts,
        "d_sae": clt.cfg.d_sae,
        "splice": "all",
        "bos": cfg.bos,
        "eval_tokens": int(tokens.size),
        "metrics": metrics,
        "per_layer": result["layers"],
        "clean_layers": result["clean_layers"],
        "training": [{k: t[k] for k in TRAINING_FIELDS if k in t} for t in training],
    }
    atomic.write_json(ctx.out / layout.METRICS, record)
    return {"metrics": metrics}


def _prefix_metrics(model, coder, cfg, tokens, opts) -> dict:
    """`fvu_prefix_{w}` for every Matryoshka prefix width w (d_sae last)."""
    from tcspec.prefixes import prefix_fvu, prefix_key
    from tcspec.train.matryoshka import widths

    ws = widths(opts, coder.cfg.d_sae)
    exclude = excluded_tokens(model, cfg.bos)
    fvus = prefix_fvu(model, coder, cfg.coders[0].layer, tokens, cfg.batch_contexts, ws, exclude)
    return {prefix_key(w): v for w, v in fvus.items()}
