"""The commands that read a spec without running it: `check` (validate, with the disk it
needs), `plan` (the job table) and `schema` (the spec's JSON Schema)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tcspec import atomic
from tcspec.cli.common import SCHEMA_PATH, UserError, _plan, _positive_int, _spec_arg
from tcspec.compute.throughput import GPU_CLASSES


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
