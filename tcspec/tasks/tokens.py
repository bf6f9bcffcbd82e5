"""tokens stage: tokenize the corpus, pack BOS-prefixed contexts, split train/eval disjointly."""

from __future__ import annotations

from tcspec import layout

SPLIT_FIELDS = ("kind", "context", "train_tokens", "eval_tokens", "bos")  # not the source's


def run(ctx) -> dict:
    from tcspec.data.tokens import build_token_splits, iter_documents
    from tcspec.models.load import load_model

    data, seed = ctx.config.data, ctx.config.seed
    tokenizer = load_model(ctx.dep_dir("model"), "cpu").tokenizer
    source = {k: v for k, v in dict(data).items() if k not in SPLIT_FIELDS and v is not None}
    docs = iter_documents(data.kind, seed=seed, **source)
    eval_docs = iter_documents("toy", seed=seed, split="eval") if data.kind == "toy" else None
    manifest = build_token_splits(
        docs,
        tokenizer,
        context=data.context,
        bos_token_id=tokenizer.bos_token_id,
        train_tokens=data.train_tokens,
        eval_tokens=data.eval_tokens,
        out_dir=ctx.out / layout.TOKENS,
        eval_docs=eval_docs,
        meta={"task": ctx.task.id, "model": ctx.task.deps["model"][1]},
    )
    return {"splits": manifest["splits"]}


def load(ctx, split: str, eval_tokens: int | None = None):
    """The task's tokens dependency, one split [rows, context]; ``eval_tokens`` keeps the
    fewest rows holding that many tokens."""
    from tcspec.data.tokens import load_tokens

    tokens = load_tokens(ctx.dep_dir("tokens") / layout.TOKENS, split)
    return tokens if eval_tokens is None else tokens[: -(-eval_tokens // tokens.shape[1])]
