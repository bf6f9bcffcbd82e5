"""The `tcspec` command: check | plan | schema | run | task | tables | status | clean.

User errors print one located line each and exit 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tcspec import atomic, layout
from tcspec.compute.threads import set_job_environment
from tcspec.compute.throughput import GPU_CLASSES
from tcspec.plan.stages import BY_NAME, PASSES
from tcspec.spec.loader import SpecError, load_spec
from tcspec.vocab import CFG_FILE, EXPORT_TARGETS, WEIGHTS_FILE

DEFAULT_SPEC = "specs/quickstart.yaml"
DEFAULT_RESULTS = "results"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "specs" / "tcspec.schema.json"


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args) or 0
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"tcspec: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder named on the command line that cannot be used
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"tcspec {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the arguments)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cores(text: str) -> str:
    """Snakemake's core count: a positive number or `all`."""
    return text if text == "all" else str(_positive_int(text))


def _parser() -> argparse.ArgumentParser:
    """The command line, its subcommands in the order ``--help`` lists them: each
    ``_add_<command>`` below, beside the ``cmd_<command>`` it runs, adds its arguments."""
    p = _Parser(prog="tcspec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_check,
        _add_plan,
        _add_schema,
        _add_run,
        _add_task,
        _add_tables,
        _add_interp,
        _add_export,
        _add_clean,
        _add_status,
    ):
        add_command(sub)
    return p


def _spec_arg(sp: argparse.ArgumentParser) -> None:
    """The spec file argument (default the quickstart) and --results."""
    sp.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help="spec file (YAML)")
    sp.add_argument("--results", default=DEFAULT_RESULTS, help="results folder")


def _plan(args, stream_budget_mb: int | None = None, results: Path | None = None):
    """The spec and its plan, with ``stream_budget_mb``, else the budget the last run under
    ``results`` recorded (the same pass ids), else the default; the GPU rates of
    ``args.gpu_class`` and ``args.sustained_tflops`` where given."""
    from tcspec.plan import DEFAULT_STREAM_BUDGET_MB, compile_plan
    from tcspec.plan.workflow import machine_rates, recorded_stream_budget

    spec = load_spec(args.spec)
    if stream_budget_mb is None and results is not None:
        stream_budget_mb = recorded_stream_budget(results, spec.experiment)
    try:
        rates = machine_rates(getattr(args, "gpu_class", None),
                              getattr(args, "sustained_tflops", None))  # fmt: skip
        return spec, compile_plan(spec, stream_budget_mb or DEFAULT_STREAM_BUDGET_MB, rates)
    except ValueError as exc:  # a dictionary too large for one stream job
        raise UserError(f"{args.spec}: {exc}") from None


def _add_check(sub) -> None:
    sp = sub.add_parser("check", help="validate a spec; one located line per problem")
    _spec_arg(sp)
    sp.add_argument(
        "--skip-disk", action="store_true", help="don't compare cache size to free disk"
    )
    sp.add_argument("--strict", action="store_true", help="warnings are errors (exit 2)")
    sp.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from dataclasses import replace

    from tcspec.spec.checks import sanity_warnings
    from tcspec.spec.loader import locate

    spec, plan = _plan(args)
    warnings = locate(args.spec, sanity_warnings(spec))
    for w in warnings:
        print(replace(w, message=f"warning: {w.message}"), file=sys.stderr)
    if warnings and args.strict:
        raise UserError(f"{args.spec}: {len(warnings)} warning(s) and --strict")
    if not args.skip_disk:
        _check_disk(plan, Path(args.results), args.spec)
    print(f"{args.spec}: ok ({len(plan.tasks)} tasks)")
    return 0


def _check_disk(plan, results: Path, spec_file: str) -> None:
    import shutil

    need = sum(
        t.resources.get("disk_mb", 0) for t in plan.stage("acts") if not t.done(results).exists()
    )
    probe = results if results.exists() else Path(".")
    free = shutil.disk_usage(probe).free / 2**20
    if need > free:
        raise UserError(
            f"{spec_file}: the activation cache needs ~{need:,.0f} MB but {probe} has "
            f"{free:,.0f} MB free; `acts: {{source: stream}}` trains from the model's "
            "activations computed on the fly, with no cache on disk"
        )


def _add_plan(sub) -> None:
    sp = sub.add_parser("plan", help="print the job table of a spec")
    _spec_arg(sp)
    sp.add_argument(
        "--stream-budget-mb", type=_positive_int, help="memory of one stream training job (as in "
        "Snakemake's --config stream_budget_mb=N; default the workflow's)",
    )  # fmt: skip
    sp.add_argument(
        "--gpu-class", choices=GPU_CLASSES, help="the GPUs the time estimates assume (as "
        "Snakemake's --config gpu_class=...; default the table's, a100)",
    )  # fmt: skip
    sp.add_argument(
        "--sustained-tflops", type=float, help="sustained TFLOP/s of a GPU job, overriding "
        "the table (as Snakemake's --config sustained_tflops=N)",
    )  # fmt: skip
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from tcspec.plan.report import plan_table

    spec, plan = _plan(args, args.stream_budget_mb)
    if args.json:
        print(json.dumps([t.record() for t in plan.tasks.values()], indent=1, default=str))
    else:
        print(plan_table(plan, Path(args.results)))
    return 0


def _add_schema(sub) -> None:
    sp = sub.add_parser("schema", help="write the spec JSON Schema")
    sp.add_argument("--out", default=str(SCHEMA_PATH))
    sp.set_defaults(func=cmd_schema)


def cmd_schema(args) -> int:
    from tcspec.spec import Spec

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tcspec experiment spec"
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        what = "is a folder" if out.is_dir() else f"is in no existing folder ({out.parent})"
        raise UserError(f"--out {out} {what}: give a file path in an existing folder")
    atomic.write_text(out, json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


class _Lines:
    """A text stream that ends every progress-bar redraw (``\\r``) as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text.replace("\r", "\n").replace("\n\n", "\n"))

    def __getattr__(self, name):
        return getattr(self.stream, name)


def plain_progress(every_s: float = 15.0) -> None:
    """Progress bars in a log file (not a terminal): a plain line at most every `every_s`
    seconds instead of carriage-return redraws. A terminal keeps the live bars."""
    if sys.stderr.isatty() or isinstance(sys.stderr, _Lines):
        return
    os.environ.setdefault("TQDM_MININTERVAL", str(every_s))
    sys.stderr = _Lines(sys.stderr)


def _add_run(sub) -> None:
    sp = sub.add_parser("run", help="run a spec end to end with Snakemake")
    _spec_arg(sp)
    sp.add_argument("--cores", "-c", default="2", type=_cores, help="a number, or `all`")
    sp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake")
    sp.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    load_spec(args.spec)  # fail early, with located errors, before Snakemake starts
    snakefile = Path(__file__).resolve().parent.parent / "Snakefile"
    cmd = ["snakemake", "-s", str(snakefile), "-c", str(args.cores)]
    cmd += ["--config", f"spec={args.spec}", f"results={args.results}", *args.snakemake_args]
    return subprocess.call(cmd)


def _add_task(sub) -> None:
    sp = sub.add_parser("task", help="run one stored task by stage and id (what jobs call)")
    sp.add_argument("stage", choices=list(BY_NAME))
    sp.add_argument("task_id")
    sp.add_argument("--results", default=DEFAULT_RESULTS, help="results folder")
    sp.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="default: $TCSPEC_DEVICE, else auto",
    )
    sp.set_defaults(func=cmd_task)


def cmd_task(args) -> int:
    set_job_environment()  # before torch loads its OpenMP
    from tcspec.plan.store import load_task
    from tcspec.plan.workflow import DEVICE_ENV
    from tcspec.tasks import run_task

    plain_progress()
    results = Path(args.results)
    try:
        task = load_task(results, args.stage, args.task_id)
        run_task(task, results, args.device or os.environ.get(DEVICE_ENV, "auto"))
    except LookupError as exc:
        raise UserError(exc.args[0]) from None
    except ValueError as exc:  # bad input met at run time: one line, no traceback
        raise UserError(f"{args.stage} {args.task_id}: {exc}") from None
    return 0


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


def _add_clean(sub) -> None:
    sp = sub.add_parser("clean", help="list (or remove) task folders no given spec needs")
    sp.add_argument("specs", nargs="+", help="every spec whose outputs to keep")
    sp.add_argument("--results", default=DEFAULT_RESULTS, help="results folder")
    sp.add_argument("--yes", action="store_true", help="remove them (default: only list)")
    sp.set_defaults(func=cmd_clean)


def cmd_clean(args) -> int:
    import shutil

    from tcspec.plan import DEFAULT_STREAM_BUDGET_MB, compile_plan
    from tcspec.plan.workflow import pending_passes, recorded_stream_budget

    results = Path(args.results)
    keep: set[tuple[str, str]] = set()
    for spec_file in args.specs:
        spec = load_spec(spec_file)  # with the budget its last run used: the same pass ids
        budget = recorded_stream_budget(results, spec.experiment)
        plan = compile_plan(spec, budget or DEFAULT_STREAM_BUDGET_MB)
        keep |= set(plan.tasks) | {(p.stage, p.id) for p in pending_passes(plan, results)}
    found = _task_files(results)
    keep |= {k for k in found if k[0] in PASSES and _runs_any(results, *k, keep)}
    stale = {key: files for key, files in found.items() if key not in keep}
    size = sum(_size(f) for files in stale.values() for f in files)
    for (stage, task_id), files in sorted(stale.items()):
        print(f"{stage:<9} {task_id}")
        if args.yes:
            for f in files:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    verb = "removed" if args.yes else "not needed (remove with --yes)"
    print(f"{len(stale)} of {len(found)} tasks {verb}: {size / 2**20:,.1f} MB")
    return 0


def _runs_any(results: Path, stage: str, pass_id: str, keep: set) -> bool:
    """Whether a pass (its log, its checkpoint) ran a task that is kept."""
    from tcspec.plan.store import load_task

    try:
        members = load_task(results, stage, pass_id).config.members
    except (LookupError, ValueError):
        return False
    return any((PASSES[stage], m) in keep for m in members)


def _task_files(results: Path) -> dict[tuple[str, str], list[Path]]:
    """(stage, id) -> every file or folder of that task under ``results``: its folder, its
    stored config, log, benchmark and checkpoints."""
    out: dict[tuple[str, str], list[Path]] = {}
    for stage in BY_NAME:
        ids = {p.name for p in (results / "tasks" / stage).glob("*") if p.is_dir()}
        ids |= {p.stem for p in layout.config_file(results, stage, "x").parent.glob("*.json")}
        for task_id in ids:
            files = [
                layout.task_dir(results, stage, task_id),
                layout.config_file(results, stage, task_id),
                layout.log_file(results, stage, task_id),
                layout.benchmark_file(results, stage, task_id),
                layout.checkpoint_dir(results, task_id),
            ]
            out[(stage, task_id)] = [f for f in files if f.exists()]
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _add_status(sub) -> None:
    sp = sub.add_parser("status", help="what is done, stale or missing for a spec")
    _spec_arg(sp)
    sp.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from tcspec.tasks.status import status_table

    spec, plan = _plan(args, results=Path(args.results))
    print(status_table(plan, Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
