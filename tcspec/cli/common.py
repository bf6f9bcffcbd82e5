"""What the command modules share: the default paths, `UserError`, the parser class and
argument types, the spec argument, and a spec's compiled plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from tcspec.spec.loader import load_spec

DEFAULT_SPEC = "specs/quickstart.yaml"
DEFAULT_RESULTS = "results"
SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "specs" / "tcspec.schema.json"


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


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
