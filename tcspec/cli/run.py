"""The commands that run work: `run` (a spec end to end with Snakemake) and `task` (one
stored task, what jobs call), and progress bars as plain lines in a log file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tcspec.cli.common import DEFAULT_RESULTS, UserError, _cores, _spec_arg
from tcspec.compute.threads import set_job_environment
from tcspec.plan.stages import BY_NAME
from tcspec.spec.loader import load_spec


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
    snakefile = Path(__file__).resolve().parent.parent.parent / "Snakefile"
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
