"""probe stage: sparse probing of one dictionary's latents, with the raw activations of its
input hook as the reference (`tcspec.evaluation.probing`)."""

from __future__ import annotations

from tcspec import atomic, layout
from tcspec.tasks import model as model_task


def labelled_texts(cfg) -> tuple[list[str], list[str]]:
    """The task's (texts, labels): its dataset, or the toy corpus's document families
    (held-out split, enough of each for the task's draws)."""
    from tcspec.evaluation.probing import load_labelled

    if cfg.dataset is not None:
        return load_labelled(cfg.dataset)
    from tcspec.models.corpus import family_documents

    docs = family_documents(cfg.seed, cfg.train_per_class + cfg.test_per_class)
    return [t for t, _ in docs], [y for _, y in docs]


def run(ctx) -> dict:
    import pandas as pd

    from tcspec.dictionaries import coders
    from tcspec.evaluation.probing import binary_tasks, pooled, sparse_probing

    cfg = ctx.config
    texts, labels = labelled_texts(cfg)
    tasks, skipped = binary_tasks(
        labels, cfg.classes, cfg.train_per_class, cfg.test_per_class, cfg.seed
    )
    if not tasks:
        raise ValueError(
            f"no class has {cfg.train_per_class} + {cfg.test_per_class} texts on each side "
            f"(classes {sorted(set(labels))}): lower probe.train_per_class / test_per_class"
        )
    model = model_task.load(ctx)
    coder = coders.load(ctx.coder_dir(cfg.coder), device=ctx.device)
    exclude = model_task.excluded_tokens(model, cfg.bos)
    raw, latents = pooled(model, coder, texts, coder.cfg.in_hook, cfg.max_tokens, exclude)
    rows = sparse_probing(raw, latents, tasks, cfg.k)
    frame = pd.DataFrame(rows).assign(
        dictionary=cfg.coder.dictionary, member=cfg.coder.member, layer=cfg.coder.layer,
        hook=coder.cfg.in_hook,
    )  # fmt: skip
    atomic.write_text(ctx.out / layout.PROBING, frame.to_csv(index=False))
    mean = frame.groupby(["probe", "k"], dropna=False)["accuracy"].mean()
    return {"classes": [t.label for t in tasks], "skipped": skipped,
            "mean_accuracy": {f"{p}-{k}": v for (p, k), v in mean.items()}}  # fmt: skip
