"""tables stage: comparison tables and plots from every metrics.json of the spec, plus the
interpretability study and circuit studies when the spec has them. Built inside the task's
folder, then copied whole to results/<experiment>/tables/ (``publish``), so that folder
always shows exactly the current spec's tables."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tcspec import atomic, layout
from tcspec.atomic import read_json
from tcspec.vocab import GREATER_THAN_FILE, KEEP_TOP_K_FILE, KEEP_TOP_K_PLOT, TRAINING_FILE


def run(ctx) -> dict:
    from tcspec.tables import build_tables

    cfg = ctx.config
    records = []
    for task in ctx.deps_of("evaluate"):
        f = task.dir(ctx.results) / layout.METRICS
        if f.exists():
            records.append(read_json(f))
    extra = {
        "interpretability": interpretability(ctx),
        "greater_than": circuits(ctx),
        "attribution": attribution(ctx),
        "sparse_probing": probing(ctx),
    }
    with atomic.atomic_dir(ctx.out / layout.TABLES) as tmp:
        written = build_tables(
            records,
            tmp,
            include=list(cfg.include),
            reference=cfg.reference,
            title=cfg.experiment,
            extra=extra,
            curves=training_curves(ctx) if "training_curves" in cfg.include else (),
        )
    publish(ctx.out / layout.TABLES, layout.tables_dir(ctx.results, cfg.experiment))
    return {"records": len(records), "files": [Path(p).name for p in written]}


def publish_experiment(plan, results: Path) -> None:
    """After a run: show the spec's tables and exports in results/<experiment>/ (the
    Snakefile's ``onsuccess``); a damaged task is marked not done, not shown."""
    from tcspec.tasks.integrity import DamagedInput, verify

    experiment = plan.spec.experiment
    shown = [(t, layout.TABLES, layout.tables_dir(results, experiment))
             for t in plan.stage("tables")]  # fmt: skip
    shown += [(t, layout.EXPORT, layout.export_dir(results, experiment, t.config.to))
              for t in plan.stage("export")]  # fmt: skip
    for t, folder, where in shown:
        try:  # the next run rebuilds it
            verify(t.dir(results), by="publishing")
        except DamagedInput as exc:
            print(f"tcspec: not published: {exc}", file=sys.stderr)
            continue
        publish(t.dir(results) / folder, where)


def publish(built: Path, shown: Path) -> bool:
    """Make ``shown`` an exact copy of ``built`` (atomically); False when it already is."""
    if not built.is_dir() or _same_tree(built, shown):
        return False
    with atomic.atomic_dir(shown) as tmp:
        shutil.copytree(built, tmp, dirs_exist_ok=True)
    return True


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    files = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    if files != {p.relative_to(b) for p in b.rglob("*") if p.is_file()}:
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def training_curves(ctx) -> list:
    """The curve in `training.json` of every trained dictionary the evaluations splice."""
    from tcspec.plan.store import load_task
    from tcspec.tables.curves import Curve

    curves = {}
    for task in ctx.deps_of("evaluate"):
        for ref in task.config.coders:
            f = ctx.coder_dir(ref) / TRAINING_FILE
            if ref.id in curves or not f.exists():
                continue  # seen, or imported
            c = load_task(ctx.results, ref.stage, ref.id).config
            layers = tuple(getattr(c, "layers", None) or (c.layer,))
            curves[ref.id] = Curve(
                dictionary=ref.dictionary, layers=layers, member=ref.member, seed=c.opts.seed,
                tokens_per_step=c.opts.batch_size, features=c.d_sae * len(layers),
                rows=tuple(read_json(f).get("curve") or ()),
            )  # fmt: skip
    return list(curves.values())


def interpretability(ctx) -> list:
    """Table 1 from ingested ratings, and the automatic proxies of the study's features."""
    import pandas as pd

    from tcspec.features.study import proxy_summary, table1

    studies = ctx.deps_of("study")
    if not studies or not studies[0].done(ctx.results).exists():
        return []
    ratings, key = layout.ratings_files(ctx.results, ctx.config.experiment)
    out = []
    counts = table1(ratings, key)
    if counts is not None:
        out.append(("table1", counts, "Blind interpretability ratings (Table 1)"))
    proxies = proxy_summary(studies[0].dir(ctx.results), ratings if ratings.exists() else None)
    if isinstance(proxies, pd.DataFrame) and len(proxies):
        out.append(("interp_proxies", proxies, "Automatic interpretability proxies per dictionary"))
    return out


def circuits(ctx) -> list:
    """The greater-than studies: the metric and the keep-top-k curves merged across
    dictionaries (a column each), and each study's keep-top-k plot."""
    import pandas as pd

    from tcspec.tables import ExtraTable
    from tcspec.tables.circuits import greater_than_merged, keep_top_k_merged
    from tcspec.tasks.attribution import dictionary_label

    studies, curves, out = {}, {}, []
    for task in ctx.deps_of("circuits"):
        folder, label = task.dir(ctx.results), dictionary_label(task.config.coders[0])
        if not (folder / GREATER_THAN_FILE).exists():
            continue
        studies[label] = pd.read_csv(folder / GREATER_THAN_FILE)
        curves[label] = pd.read_csv(folder / KEEP_TOP_K_FILE)
        plot = folder / KEEP_TOP_K_PLOT
        caption = f"Keep-top-k: {label}'s features vs MLP neurons ({task.id})"
        out.append(ExtraTable(f"keep_top_k-{task.id}", curves[label], caption, plot))
    if not studies:
        return []
    names = ", ".join(studies)
    return [
        ExtraTable("greater_than", greater_than_merged(studies),
                   f"Greater-than probability difference, per start year: {names}"),
        ExtraTable("keep_top_k", keep_top_k_merged(curves),
                   f"Keep-top-k per layer and k: MLP neurons and the features of {names}"),
        *out,
    ]  # fmt: skip


def attribution(ctx) -> list:
    """Every attribution task's per-prompt rows across dictionaries, their comparison by
    dictionary (with a plot) and, on shared prompts, their agreement."""
    import pandas as pd

    from tcspec.tables.circuits import attribution_tables

    frames = []
    for task in ctx.deps_of("circuits"):
        f = task.dir(ctx.results) / layout.ATTRIBUTION
        if f.exists():
            frames.append(pd.read_csv(f).assign(task=task.id))
    if not frames:
        return []
    return attribution_tables(pd.concat(frames, ignore_index=True), ctx.out)


def probing(ctx) -> list:
    """The per-class rows of every probe task (`probing.csv`)."""
    import pandas as pd

    found = [t.dir(ctx.results) / layout.PROBING for t in ctx.deps_of("probe")]
    return [pd.read_csv(f) for f in found if f.exists()]
