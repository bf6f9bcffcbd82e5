"""circuits stage: a circuit study through transcoders (built-in task: greater-than).

Config (``plan._circuit_task``): ``task``, ``dictionary`` (the spec's reference), ``prompts``,
``iterations``, ``branches``, ``top_paths``, ``keep_top_k``, ``seed``, and ``coders``: one
``{train, member, layer, kind}`` per layer. Writes ``graph.json``, ``graph.png``,
``graph.svg``, ``report.md``, ``greater_than.csv``, ``keep_top_k.csv``, ``keep_top_k.png``,
``deembedding.csv`` and ``summary.json`` into the task folder (see
``tcspec.circuits.study.greater_than_study``).

Start years: the corpus's held-out ones for a toy model (never seen in training), the
paper's 02..98 otherwise; at most ``prompts`` of them, evenly spread.
"""

from __future__ import annotations

from tcspec import paths
from tcspec.tasks import write_json
from tcspec.tasks.model import DTYPES

TASKS = ("greater_than",)


def check_config(cfg: dict) -> None:
    """``ValueError`` naming the spec field for a config the study cannot run."""
    name = cfg.get("dictionary", {}).get("name", "?")
    where = f"circuits.dictionary `{name}`"
    if cfg["task"] not in TASKS:
        raise ValueError(f"circuits.task: unknown task {cfg['task']!r}; known: {TASKS}")
    if not cfg["coders"]:
        raise ValueError(f"{where}: selects no trained dictionary")
    for c in cfg["coders"]:
        if c["kind"] not in ("transcoder", "skip_transcoder"):
            raise ValueError(
                f"{where}: is a {c['kind']} (layer {c['layer']}); circuits need transcoders"
            )
    layers = [c["layer"] for c in cfg["coders"]]
    twice = sorted({layer for layer in layers if layers.count(layer) > 1})
    if twice:
        raise ValueError(
            f"{where}: selects several dictionaries at layer(s) {twice}; pick one sweep point "
            "with `where` (one transcoder per layer)"
        )
    for key in ("iterations", "branches", "top_paths", "prompts"):
        if int(cfg[key]) <= 0:
            raise ValueError(f"circuits.{key}: must be positive, got {cfg[key]}")


def run(ctx) -> dict:
    from tcspec import coders as coders_mod
    from tcspec.circuits.attribution import check_transcoders
    from tcspec.circuits.greater_than import PAPER_YY, spread_yy, year_token_ids
    from tcspec.circuits.study import greater_than_study
    from tcspec.models.corpus import held_out_yy
    from tcspec.models.load import load_model, read_model_json

    cfg = ctx.task.config
    check_config(cfg)
    model_cfg = ctx.dep("model").config
    model = load_model(ctx.dep_dir("model"), ctx.device, DTYPES[model_cfg.get("dtype", "float32")])
    meta = read_model_json(ctx.dep_dir("model"))
    try:
        year_token_ids(model.tokenizer)
    except ValueError as e:
        raise ValueError(
            f"circuits.task greater_than: the model's tokenizer cannot run it: {e}"
        ) from e
    coders = {}
    for c in cfg["coders"]:
        coder = coders_mod.load(paths.member_dir(ctx.results, c["train"], c["member"]), ctx.device)
        coders[c["layer"]] = coder.to(model.cfg.dtype)
    check_transcoders(model, coders, f"circuits.dictionary `{cfg['dictionary']['name']}`")
    yy = spread_yy(held_out_yy() if meta["kind"] == "toy" else PAPER_YY, cfg["prompts"])
    summary = greater_than_study(
        model,
        coders,
        yy,
        ctx.out,
        iterations=cfg["iterations"],
        branches=cfg["branches"],
        top_paths=cfg["top_paths"],
        keep_top_k_max=cfg["keep_top_k"],
        task_layer=meta.get("task_layer"),
    )
    summary["coders"] = cfg["coders"]
    write_json(ctx.out / "summary.json", summary)
    return {
        "layer": summary["layer"],
        "metric": summary["metric"],
        "ablation_pearson": summary["faithfulness"]["ablation_pearson"],
        "keep_top_k": {k: summary["keep_top_k"][k] for k in ("k_transcoder", "k_neurons")},
    }
