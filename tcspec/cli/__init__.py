"""The `tcspec` command: check | plan | schema | run | task | tables | status | clean.

User errors print one located line each and exit 2; tracebacks are for bugs only.
Here: `main` and the parser; the commands, one module per concern: `checks.py` (check, plan,
schema), `run.py` (run, task), `outputs.py` (tables, interp, export), `results.py` (clean,
status); what they share: `common.py`.
"""

from __future__ import annotations

import argparse
import sys

from tcspec.cli.checks import _add_check, _add_plan, _add_schema
from tcspec.cli.common import (
    DEFAULT_RESULTS,
    DEFAULT_SPEC,
    SCHEMA_PATH,
    UserError,
    _cores,
    _Parser,
    _plan,
    _positive_int,
    _spec_arg,
)
from tcspec.cli.outputs import _add_export, _add_interp, _add_tables
from tcspec.cli.results import _add_clean, _add_status
from tcspec.cli.run import _add_run, _add_task, plain_progress
from tcspec.spec.loader import SpecError

__all__ = [
    "DEFAULT_RESULTS",
    "DEFAULT_SPEC",
    "SCHEMA_PATH",
    "UserError",
    "_Parser",
    "_cores",
    "_parser",
    "_plan",
    "_positive_int",
    "_spec_arg",
    "main",
    "plain_progress",
]


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


def _parser() -> argparse.ArgumentParser:
    """The command line, its subcommands in the order ``--help`` lists them: each
    ``_add_<command>``, in its concern's module beside the ``cmd_<command>`` it runs, adds
    its arguments."""
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
