"""circuits stage: a circuit study through transcoders (built-in task: greater-than;
attribution graphs on the spec's prompts: ``tcspec.tasks.attribution``).

Config: ``tcspec.plan.configs.CircuitConfig`` (the spec's circuit, one coder per layer or one
cross-layer transcoder, the seed; the spec types and ``tcspec.spec.checks`` guarantee it can
run). Writes ``graph.json``, ``graph.png``, ``graph.svg``, ``report.md``,
``greater_than.csv``, ``keep_top_k.csv``, ``keep_top_k.png``, ``deembedding.csv`` and
``summary.json`` into the task folder (see ``tcspec.circuits.case_study.greater_than_study``).

Start years: the corpus's held-out ones for a toy model (never seen in training), the
paper's 02..98 otherwise; at most ``prompts`` of them, evenly spread.
"""

from __future__ import annotations

from tcspec import atomic, layout
from tcspec.tasks import model as model_task


def run(ctx) -> dict:
    from tcspec.circuits.case_study import greater_than_study
    from tcspec.models.corpus import held_out_yy
    from tcspec.models.greater_than import PAPER_YY, spread_yy, year_token_ids
    from tcspec.models.load import read_model_json
    from tcspec.spec import start_years
    from tcspec.tasks.attribution import load_dictionaries

    cfg, c = ctx.config, ctx.config.circuit
    if c.task == "attribution":
        from tcspec.tasks import attribution

        return attribution.run_attribution(ctx)
    model = model_task.load(ctx)
    meta = read_model_json(ctx.dep_dir("model"))
    try:
        year_token_ids(model.tokenizer)
    except ValueError as e:
        raise ValueError(
            f"circuits.task greater_than: the model's tokenizer cannot run it: {e}"
        ) from e
    field = f"circuits.dictionary `{c.dictionary.name}`"
    coders = load_dictionaries(ctx, model, field)  # by layer, or a CLT
    default_yy = held_out_yy() if meta["kind"] == "toy" else PAPER_YY
    yy = spread_yy(start_years(c.yy) or default_yy, c.prompts)
    summary = greater_than_study(
        model,
        coders,
        yy,
        ctx.out,
        iterations=c.iterations,
        branches=c.branches,
        top_paths=c.top_paths,
        keep_top_k_max=c.keep_top_k,
        task_layer=c.study_layer if c.study_layer is not None else meta.get("task_layer"),
        template=c.prompt,
        keep_top_k_positions=c.keep_top_k_positions,
        keep_top_k_rank_yy=start_years(c.keep_top_k_rank_yy),
        mlp0_deembeddings=c.mlp0_deembeddings,
        exclude_bos=cfg.bos == "exclude",
    )
    summary["coders"] = [ref.model_dump(mode="json") for ref in cfg.coders]
    atomic.write_json(ctx.out / layout.SUMMARY, summary)
    return {
        "layer": summary["layer"],
        "metric": summary["metric"],
        "ablation_pearson": summary["faithfulness"]["ablation_pearson"],
        "keep_top_k": {k: summary["keep_top_k"][k] for k in ("k_transcoder", "k_neurons")},
    }
