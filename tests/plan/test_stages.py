"""The stage table (`tcspec.plan.stages`) against everything that reads it: the compiler
builds a task of every stage, the config store types and keeps each under the layout's
path, every stage's module runs it, and the Snakefile declares its rule."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402

from tcspec import layout, tasks  # noqa: E402
from tcspec.plan import compile_plan  # noqa: E402
from tcspec.plan.stages import BY_NAME, PASS_OF, PASSES, TABLE, stage  # noqa: E402
from tcspec.plan.store import load_task, save_task  # noqa: E402
from tcspec.plan.workflow import pending_passes  # noqa: E402
from tcspec.spec.loader import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def imported(tmp_path: Path) -> Path:
    """The micro spec with a released dictionary beside its transcoder (an import task)."""
    (tmp_path / "dicts" / "L0").mkdir(parents=True)
    text = harness.MICRO.read_text().replace(
        "dictionaries:\n", 'dictionaries:\n  imp: {kind: pretrained, path: "dicts/L{layer}"}\n'
    )
    (tmp_path / "micro_import.yaml").write_text(text)
    return tmp_path / "micro_import.yaml"


def test_every_stage_is_compiled_and_kept_in_the_store(tmp_path):
    """Three specs compile to tasks of every stage of the table, passes included (so no
    row lacks a builder), each with its row's config type; each task's config goes into
    the store at the layout's path and comes back as the same config and deps."""
    seen = {}
    specs = [ROOT / "tests" / "workflow" / "micro_clt.yaml", ROOT / "specs" / "probing.yaml"]
    for spec in [*specs, imported(tmp_path)]:
        plan = compile_plan(load_spec(spec))
        for t in [*plan.tasks.values(), *pending_passes(plan, tmp_path)]:
            assert type(t.config) is stage(t.stage).config, (spec.name, t.stage)
            seen.setdefault(t.stage, t)
    assert set(seen) == set(BY_NAME)
    for name, t in seen.items():
        assert save_task(tmp_path, t) == layout.config_file(tmp_path, name, t.id)
        back = load_task(tmp_path, name, t.id)
        assert back.config.canonical() == t.config.canonical() and back.deps == t.deps


def test_every_stage_has_a_module_that_runs_it():
    """A stage runs from its module's ``run``, or (a member stage) only in its pass; every
    module of `tcspec.tasks` with a ``run`` is a stage's."""
    for row in TABLE:
        if row.run is None:
            assert row.rule == "member" and BY_NAME[PASS_OF[row.name]].run is not None
            continue
        assert callable(importlib.import_module(row.module).run), row.name
    runners = set()
    for info in pkgutil.iter_modules(tasks.__path__):
        if hasattr(importlib.import_module(f"{tasks.__name__}.{info.name}"), "run"):
            runners.add(info.name)
    assert runners == {row.run for row in TABLE if row.run is not None}


def test_every_stage_has_its_rule(tmp_path):
    """The Snakefile declares, for the micro spec: a generic rule per `task` stage, one
    rule per pending pass of each pass stage, a target rule per stage with task folders,
    and nothing else but `all`; a member stage has no rule of its own."""
    run = harness.snakemake(tmp_path / "results", "--list-rules", cores=None)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    rules = set(re.findall(r"^(\w+)$", run.stdout, re.M))
    generic = {f"run_{row.name}" for row in TABLE if row.rule == "task"}
    targets = {row.name for row in TABLE if not row.is_pass}
    passes = {r for r in rules if r.split("_")[0] in PASSES}
    assert {r.split("_")[0] for r in passes} == set(PASSES)
    assert rules == generic | targets | passes | {"all"}
    members = {row.name for row in TABLE if row.rule == "member"}
    assert members == set(PASSES.values()) and not {f"run_{m}" for m in members} & rules
