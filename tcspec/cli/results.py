"""The commands about a results folder: `clean` (list or remove the task folders no given
spec needs) and `status` (what is done, stale or missing for a spec)."""

from __future__ import annotations

from pathlib import Path

from tcspec import layout
from tcspec.cli.common import DEFAULT_RESULTS, _plan, _spec_arg
from tcspec.plan.stages import BY_NAME, PASSES
from tcspec.spec.loader import load_spec


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
