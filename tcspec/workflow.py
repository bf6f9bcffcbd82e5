"""The bridge from a compiled Plan to Snakemake rules.

Rules are generic over a task id wildcard; the functions here (input, resource and target
lookups) are the only place the plan is read from ``rules/*.smk``. Nothing here imports
Snakemake, so it is tested like any other module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tcspec import paths
from tcspec.loader import SpecError, load_spec
from tcspec.plan import Plan, compile_plan

ID_PATTERN = r"[A-Za-z0-9_.\-]+"


class Workflow:
    def __init__(self, spec_file: str, results: str):
        self.spec_file = str(spec_file)
        self.results = Path(results)
        try:
            self.plan: Plan = compile_plan(load_spec(spec_file))
        except SpecError as exc:  # located, one line per problem; no traceback
            print(exc, file=sys.stderr)
            raise SystemExit(2) from None

    # ---- per-rule paths with an {id} wildcard
    def done(self, stage: str) -> str:
        return str(paths.done_file(self.results, stage, "{id}"))

    def log(self, stage: str) -> str:
        return str(paths.log_file(self.results, stage, "{id}"))

    def benchmark(self, stage: str) -> str:
        return str(paths.benchmark_file(self.results, stage, "{id}"))

    # ---- lookups by wildcard
    def inputs(self, stage: str):
        """Input function: the named done markers of the task's upstream tasks."""

        def inputs(wildcards) -> dict[str, str]:
            return self.plan.inputs(self.plan.get(stage, wildcards.id), self.results)

        return inputs

    def resource(self, stage: str, name: str, default=0):
        """Resource function: an estimate computed by the compiler for this task."""

        def resource(wildcards):
            return self.plan.get(stage, wildcards.id).resources.get(name, default)

        return resource

    # ---- targets
    def targets(self, *stages: str) -> list[str]:
        stages = stages or paths.STAGES
        return [str(t.done(self.results)) for s in stages for t in self.plan.stage(s)]
