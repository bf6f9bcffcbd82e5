"""The `tcspec` command: check | plan | schema | run | task | tables | status.

User errors print one located line each and exit 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tcspec.loader import SpecError, load_spec

DEFAULT_SPEC = "specs/quickstart.yaml"
DEFAULT_RESULTS = "results"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "specs" / "tcspec.schema.json"


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"tcspec: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tcspec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def spec_arg(sp, results=True):
        sp.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help="spec file (YAML)")
        if results:
            sp.add_argument("--results", default=DEFAULT_RESULTS, help="results folder")

    sp = sub.add_parser("check", help="validate a spec; one located line per problem")
    spec_arg(sp)
    sp.add_argument(
        "--skip-disk", action="store_true", help="don't compare cache size to free disk"
    )
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("plan", help="print the job table of a spec")
    spec_arg(sp)
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("schema", help="write the spec JSON Schema")
    sp.add_argument("--out", default=str(SCHEMA_PATH))
    sp.set_defaults(func=cmd_schema)

    sp = sub.add_parser("run", help="run a spec end to end with Snakemake")
    spec_arg(sp)
    sp.add_argument("--cores", "-c", default="2")
    sp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("task", help="run one task of a plan (what Snakemake jobs call)")
    sp.add_argument("stage")
    sp.add_argument("task_id")
    spec_arg(sp)
    sp.set_defaults(func=cmd_task)

    sp = sub.add_parser("tables", help="regenerate a spec's tables from existing outputs")
    spec_arg(sp)
    sp.set_defaults(func=cmd_tables)

    sp = sub.add_parser("interp", help="the blind interpretability study")
    isub = sp.add_subparsers(dest="interp_command", required=True)
    ip = isub.add_parser("ingest", help="validate a ratings file and add it to the study")
    spec_arg(ip)
    ip.add_argument("ratings", help="the filled-in ratings.csv")
    ip.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("export", help="write one trained dictionary in another tool's format")
    sp.add_argument("dictionary", help="a dictionary folder (cfg.json + weights.safetensors)")
    sp.add_argument("--to", required=True, choices=["saelens", "sparsify", "circuit-tracer"])
    sp.add_argument("out", help="output folder")
    sp.add_argument("--model-name", help="TransformerLens model name (default: from task.json)")
    sp.add_argument("--context-size", type=int, help="context length (default: from task.json)")
    sp.add_argument("--dataset", help="dataset name recorded in the metadata")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("status", help="what is done, stale or missing for a spec")
    spec_arg(sp)
    sp.set_defaults(func=cmd_status)
    return p


def _plan(args):
    from tcspec.plan import compile_plan

    spec = load_spec(args.spec)
    return spec, compile_plan(spec)


def cmd_check(args) -> int:
    from tcspec.plan import compile_plan

    spec = load_spec(args.spec)
    plan = compile_plan(spec)
    if not args.skip_disk:
        _check_disk(plan, Path(args.results), args.spec)
    print(f"{args.spec}: ok ({len(plan.tasks)} tasks)")
    return 0


def _check_disk(plan, results: Path, spec_file: str) -> None:
    import shutil

    from tcspec import paths

    need = sum(
        t.resources.get("disk_mb", 0) for t in plan.stage("acts") if not t.done(results).exists()
    )
    probe = results if results.exists() else Path(".")
    free = shutil.disk_usage(probe).free / 2**20
    if need > free:
        raise UserError(
            f"{spec_file}: the activation cache needs ~{need:,.0f} MB but {probe} has "
            f"{free:,.0f} MB free"
        )
    del paths


def cmd_plan(args) -> int:
    from tcspec.report import plan_table

    spec, plan = _plan(args)
    if args.json:
        print(json.dumps([t.__dict__ for t in plan.tasks.values()], indent=1, default=str))
    else:
        print(plan_table(plan, Path(args.results)))
    return 0


def cmd_schema(args) -> int:
    from tcspec.spec import Spec

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tcspec experiment spec"
    Path(args.out).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


def cmd_run(args) -> int:
    load_spec(args.spec)  # fail early, with located errors, before Snakemake starts
    snakefile = Path(__file__).resolve().parent.parent / "Snakefile"
    cmd = ["snakemake", "-s", str(snakefile), "-c", str(args.cores)]
    cmd += ["--config", f"spec={args.spec}", f"results={args.results}", *args.snakemake_args]
    return subprocess.call(cmd)


def cmd_task(args) -> int:
    from tcspec.tasks import run_task

    spec, plan = _plan(args)
    try:
        task = plan.get(args.stage, args.task_id)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    try:
        run_task(plan, task, Path(args.results))
    except ValueError as exc:  # bad input met at run time: one line, no traceback
        raise UserError(f"{task.stage} {task.id}: {exc}") from None
    return 0


def cmd_tables(args) -> int:
    from tcspec.tasks import run_task

    spec, plan = _plan(args)
    (task,) = plan.stage("tables")
    run_task(plan, task, Path(args.results), require_inputs=False)
    return 0


def cmd_ingest(args) -> int:
    from tcspec.study import ingest

    spec = load_spec(args.spec)
    try:
        saved = ingest(spec, Path(args.results), Path(args.ratings))
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"ratings saved to {saved}; `tcspec tables {args.spec}` adds Table 1")
    return 0


def cmd_export(args) -> int:
    from tcspec import coders
    from tcspec.interop import export

    folder = Path(args.dictionary)
    if not (folder / "cfg.json").exists():
        raise UserError(f"{folder}: not a dictionary folder (no cfg.json)")
    facts = _training_facts(folder)
    model_name = args.model_name or facts.get("model_name")
    context = args.context_size or facts.get("context_size")
    if not model_name or not context:
        raise UserError(f"{folder}: give --model-name and --context-size (no task.json to read)")
    try:
        written = export(
            coders.load(folder),
            args.out,
            args.to,
            model_name=model_name,
            context_size=context,
            dataset=args.dataset or facts.get("dataset"),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(str(p) for p in written))
    return 0


def _training_facts(member_dir: Path) -> dict:
    """Model name, context and dataset of a trained dictionary, read from the task records
    of its train task and the model and tokens tasks upstream of it."""
    try:
        train = json.loads((member_dir.parent / "task.json").read_text())
        tasks = member_dir.parent.parent.parent
        acts = json.loads((tasks / "acts" / train["deps"]["acts"][1] / "task.json").read_text())
        model = json.loads((tasks / "model" / acts["deps"]["model"][1] / "task.json").read_text())
        tokens = json.loads(
            (tasks / "tokens" / acts["deps"]["tokens"][1] / "task.json").read_text()
        )
    except (OSError, KeyError, ValueError):
        return {}
    mc, tc = model["config"], tokens["config"]
    name = mc.get("name") or f"tcspec-{mc['kind']}"
    return {
        "model_name": name,
        "context_size": tc["context"],
        "dataset": tc.get("name") or tc["kind"],
    }


def cmd_status(args) -> int:
    from tcspec.report import status_table

    spec, plan = _plan(args)
    print(status_table(plan, Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
