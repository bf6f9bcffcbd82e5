"""evaluate stage: sparsity and fidelity metrics with a dictionary spliced into the model."""

from __future__ import annotations

from tcspec import atomic, layout
from tcspec.atomic import read_json
from tcspec.dictionaries.shapes import spans_layers
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task
from tcspec.tasks.model import excluded_tokens
from tcspec.vocab import CLT, TRAINING_FILE

SPEC_ONLY = {"layers", "zip"}  # fields of the spec, not of one trained dictionary
TRAINING_FIELDS = ("steps", "tokens", "tokens_per_s", "wall_s", "live_fraction")


def run(ctx) -> dict:
    """One evaluate task (an evaluation pass runs several: `tcspec.tasks.evalgroup`)."""
    return summaries(ctx, [ctx])[id(ctx)]


def summaries(ctx, contexts: list) -> dict:
    """Summaries (by `id` of each context) of the evaluate tasks of `contexts`: the model
    and the eval tokens loaded once (`ctx`'s); the per-layer members evaluated in one
    shared pass (``evaluate_splices``), each CLT alone; each member's ``metrics.json``
    written in its own folder."""
    if model_task.is_synthetic(ctx):
        return {id(c): _run_synthetic(c) for c in contexts}
    return _run_model(ctx, contexts)


def _run_model(ctx, contexts: list) -> dict:
    """Summaries (by `id` of each context) of members spliced into the model."""
    cfg = contexts[0].config
    model = model_task.load(ctx)
    tokens = tokens_task.load(ctx, "eval", cfg.eval_tokens)
    clts = [c for c in contexts if spans_layers(c.config.coders[0].kind)]  # each alone
    per_layer = [c for c in contexts if not spans_layers(c.config.coders[0].kind)]
    summaries = {id(c): _run_clt(c, model, tokens) for c in clts}
    if per_layer:
        summaries |= dict(zip(map(id, per_layer), _run_members(per_layer, model, tokens)))
    return summaries


def _run_synthetic(ctx) -> dict:
    """A dictionary on a synthetic source: its fidelity and its scores against the planted
    features (`tcspec.evaluation.ground_truth`) on `eval_tokens` fresh draws."""
    from tcspec.dictionaries import coders
    from tcspec.evaluation.ground_truth import score
    from tcspec.models.synthetic import load_truth

    truth = load_truth(ctx.dep_dir("model"))
    (ref,) = ctx.config.coders
    coder = coders.load(ctx.coder_dir(ref), device=ctx.device)
    metrics = score(coder, truth, ctx.config.eval_tokens, ctx.device)
    return _write_record(ctx, [coder], metrics, ctx.config.eval_tokens)


def _run_members(contexts: list, model, tokens) -> list[dict]:
    """Metrics of per-layer members (one coder, or one per layer spliced at once) from one
    shared pass over ``tokens``; writes each member's ``metrics.json``."""
    from tcspec.dictionaries import coders
    from tcspec.evaluation.spliced import Splice, evaluate_splices

    cfg = contexts[0].config
    for c in contexts:
        same = (c.config.eval_tokens, c.config.batch_contexts, c.config.bos)
        if same != (cfg.eval_tokens, cfg.batch_contexts, cfg.bos):
            raise ValueError(f"evaluate {c.task.id}: not the pass's eval tokens or BOS convention")
    loaded = [
        [coders.load(c.coder_dir(r), device=c.device) for r in c.config.coders] for c in contexts
    ]
    splices = [
        Splice(tuple(zip(cs, [r.layer for r in c.config.coders])), "all" if len(cs) > 1 else "each")
        for cs, c in zip(loaded, contexts)
    ]
    exclude = excluded_tokens(model, cfg.bos)
    results = evaluate_splices(
        model, splices, tokens, cfg.batch_contexts, progress=True, exclude_tokens=exclude
    )
    return [_record(c, cs, m, model, tokens) for c, cs, m in zip(contexts, loaded, results)]


def _record(ctx, loaded: list, metrics: dict, model, tokens) -> dict:
    """Write one member's ``metrics.json``: its metrics (Matryoshka prefix FVUs added), how
    it was trained and spliced."""
    first = ctx.dep("coder_0").config
    if len(loaded) == 1 and getattr(getattr(first, "opts", None), "matryoshka", None):
        metrics = metrics | _prefix_metrics(model, loaded[0], ctx.config, tokens, first.opts)
    return _write_record(ctx, loaded, metrics, int(tokens.size))


def _write_record(ctx, loaded: list, metrics: dict, eval_tokens: int) -> dict:
    """Write one member's ``metrics.json``: its metrics, how it was trained and spliced."""
    cfg = ctx.config
    splice = "all" if len(loaded) > 1 else "each"
    first = ctx.dep("coder_0").config
    folders = [ctx.coder_dir(ref) for ref in cfg.coders]
    training = [read_json(f / TRAINING_FILE) for f in folders if (f / TRAINING_FILE).exists()]
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
        "eval_tokens": eval_tokens,
        "metrics": metrics,
        "training": [{k: t[k] for k in TRAINING_FIELDS if k in t} for t in training],
    }
    atomic.write_json(ctx.out / layout.METRICS, record)
    return {"metrics": metrics}


def _run_clt(ctx, model, tokens) -> dict:
    """A cross-layer transcoder spliced into all its layers at once: joint CE, KL and CE
    recovered and total L0 at the top, each layer's sparsity and fidelity in `layers`."""
    from tcspec.dictionaries import clt_io
    from tcspec.evaluation.clt import evaluate_clt

    cfg, (ref,) = ctx.config, ctx.config.coders
    folder = ctx.coder_dir(ref)
    clt = clt_io.load(folder, device=ctx.device)
    exclude = excluded_tokens(model, cfg.bos)
    result = evaluate_clt(
        model, clt, tokens, cfg.batch_contexts, progress=False, exclude_tokens=exclude
    )
    metrics = {k: v for k, v in result.items() if k not in ("layers", "clean_layers")}
    member = ctx.dep("coder_0").config  # trained (with its options) or imported
    opts = member.opts.model_dump(mode="json", exclude=SPEC_ONLY) if hasattr(member, "opts") else {}
    trained = (folder / TRAINING_FILE).exists()
    training = [read_json(folder / TRAINING_FILE)] if trained else []
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
    from tcspec.evaluation.prefixes import prefix_fvu, prefix_key
    from tcspec.training.matryoshka import widths

    ws = widths(opts, coder.cfg.d_sae)
    exclude = excluded_tokens(model, cfg.bos)
    fvus = prefix_fvu(model, coder, cfg.coders[0].layer, tokens, cfg.batch_contexts, ws, exclude)
    return {prefix_key(w): v for w, v in fvus.items()}
