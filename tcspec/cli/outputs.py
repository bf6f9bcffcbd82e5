"""The commands that read a run's outputs: `tables` (regenerate a spec's tables),
`interp ingest` (add a ratings file to the blind study) and `export` (one dictionary in
another tool's format), and the checks of the task folders they read."""

from __future__ import annotations

import json
from pathlib import Path

from tcspec import layout
from tcspec.cli.common import DEFAULT_RESULTS, UserError, _plan, _positive_int, _spec_arg
from tcspec.vocab import CFG_FILE, EXPORT_TARGETS, WEIGHTS_FILE


def _add_tables(sub) -> None:
    sp = sub.add_parser("tables", help="regenerate a spec's tables from existing outputs")
    _spec_arg(sp)
    sp.set_defaults(func=cmd_tables)


def cmd_tables(args) -> int:
    from tcspec.plan.store import save_task
    from tcspec.tasks import run_task, verify_inputs
    from tcspec.tasks.integrity import DamagedInput

    spec, plan = _plan(args)
    results = Path(args.results)
    for t in plan.tasks.values():
        save_task(results, t)
    (task,) = plan.stage("tables")
    try:  # what is done, but nothing damaged
        verify_inputs(task, results)
    except DamagedInput as exc:
        raise UserError(str(exc)) from None
    finished = [t for t in plan.stage("evaluate") if t.done(results).exists()]
    if not finished:
        raise UserError(f"{args.spec}: no finished evaluations in {results}: nothing to tabulate")
    record = run_task(task, results, "cpu", require_inputs=False)
    files = record["summary"]["files"]
    print(f"{len(files)} files in {layout.tables_dir(results, spec.experiment)}")
    return 0


def _add_interp(sub) -> None:
    sp = sub.add_parser("interp", help="the blind interpretability study")
    isub = sp.add_subparsers(dest="interp_command", required=True)
    ip = isub.add_parser("ingest", help="validate a ratings file and add it to the study")
    _spec_arg(ip)
    ip.add_argument("ratings", help="the filled-in ratings.csv")
    ip.set_defaults(func=cmd_ingest)


def cmd_ingest(args) -> int:
    from tcspec.features.study import ingest

    spec, plan = _plan(args)
    results = Path(args.results)
    studies = plan.stage("study")
    if not studies:
        raise UserError(f"spec `{spec.experiment}` has no interp section, so no study packet")
    target, key = layout.ratings_files(results, spec.experiment)
    _verify(studies[0].dir(results), "tcspec interp ingest")
    try:
        saved = ingest(studies[0].dir(results), Path(args.ratings), target, key)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"ratings saved to {saved}; `tcspec tables {args.spec}` adds Table 1")
    return 0


def _add_export(sub) -> None:
    sp = sub.add_parser("export", help="write one trained dictionary in another tool's format")
    sp.add_argument("dictionary", help=f"a dictionary folder ({CFG_FILE} + {WEIGHTS_FILE})")
    sp.add_argument("--to", required=True, choices=EXPORT_TARGETS)
    sp.add_argument("out", help="output folder")
    sp.add_argument("--model-name", help="TransformerLens model name (default: from task.json)")
    sp.add_argument(
        "--context-size", type=_positive_int, help="context length (default: from task.json)"
    )
    sp.add_argument("--dataset", help="dataset name recorded in the metadata")
    sp.add_argument("--results", default=DEFAULT_RESULTS, help="results folder it is in")
    sp.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from tcspec.dictionaries import shapes

    folder, out = Path(args.dictionary), Path(args.out)
    if not (folder / CFG_FILE).is_file():
        raise UserError(f"{folder}: not a dictionary folder (no {CFG_FILE})")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a folder to export into")
    if (out / WEIGHTS_FILE).exists():
        raise UserError(f"{out}: holds a tcspec dictionary; export into another folder")
    _verify(folder, "tcspec export")
    facts = _training_facts(folder, Path(args.results))
    model_name = args.model_name or facts.get("model_name")
    context = args.context_size or facts.get("context_size")
    if not model_name or not context:
        raise UserError(f"{folder}: give --model-name and --context-size (no task.json to read)")
    try:
        written = shapes.export(
            shapes.load(folder),
            out,
            args.to,
            model_name=model_name,
            context_size=context,
            dataset=args.dataset or facts.get("dataset"),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(str(p) for p in written))
    return 0


def _verify(task_dir: Path, by: str) -> None:
    """Refuse a task's folder whose files differ from the checksums its task.json records
    (one line naming the file and the task, which is marked not done)."""
    from tcspec.tasks.integrity import DamagedInput, verify

    try:
        verify(task_dir, by)
    except DamagedInput as exc:
        raise UserError(str(exc)) from None


def _training_facts(member_dir: Path, results: Path) -> dict:
    """Model name, context and dataset of a trained dictionary, read from the stored
    configs of its train task and the model and tokens tasks upstream of it."""
    from tcspec.plan.store import load_task

    try:
        train = json.loads((member_dir / layout.DONE).read_text())
        deps = train["deps"]  # a stream member reads the model and tokens itself
        if "acts" in deps:
            deps = load_task(results, *deps["acts"]).deps
        model = load_task(results, *deps["model"]).config.model
        data = load_task(results, *deps["tokens"]).config.data
    except (OSError, KeyError, ValueError, LookupError):
        return {}
    return {
        "model_name": getattr(model, "name", None) or f"tcspec-{model.kind}",
        "context_size": data.context,
        "dataset": getattr(data, "name", None) or data.kind,
    }
