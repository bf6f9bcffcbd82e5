"""tokens stage: tokenize the corpus, pack BOS-prefixed contexts, split train/eval disjointly."""

from __future__ import annotations


def run(ctx) -> dict:
    from tcspec.data import build_token_splits, iter_documents
    from tcspec.models.load import load_model

    cfg = ctx.task.config
    tokenizer = load_model(ctx.dep_dir("model"), "cpu").tokenizer
    source = {k: cfg.get(k) for k in ("name", "config", "split", "text_column", "streaming")}
    source = {k: v for k, v in source.items() if v is not None}
    if cfg["kind"] == "files":
        source |= {
            "paths": cfg["paths"],
            "format": cfg.get("format"),
            "text_column": cfg["text_column"],
        }
    docs = iter_documents(cfg["kind"], seed=cfg["seed"], **source)
    eval_docs = None
    if cfg["kind"] == "toy":
        eval_docs = iter_documents("toy", seed=cfg["seed"], split="eval")
    manifest = build_token_splits(
        docs,
        tokenizer,
        context=cfg["context"],
        bos_token_id=tokenizer.bos_token_id,
        train_tokens=cfg["train_tokens"],
        eval_tokens=cfg["eval_tokens"],
        out_dir=ctx.out / "tokens",
        eval_docs=eval_docs,
        meta={"task": ctx.task.id, "model": ctx.task.deps["model"][1]},
    )
    return {"splits": manifest["splits"]}
