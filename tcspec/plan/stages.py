"""The stage table: every stage once, with its config, the module that runs it and how the
workflow runs it. The compiler, the config store, the runner, the workflow bridge, the
Snakemake rules, the CLI and the reports read it; adding a stage is a module in
``tcspec.tasks`` with ``run(ctx)`` and a row here.

A stage's name is a word of the results layout (``configs/<stage>/``, ``tasks/<stage>/``,
``logs/<stage>/``): renaming one moves every result. Two stages are passes: one job that runs
several tasks of another stage together (``members``), writing their folders and records,
with no folder of its own: ``group`` trains the train tasks of one group over one cache or
stream, ``evalgroup`` evaluates the evaluate tasks of one eval group over one pass of the
eval tokens (``Plan.groups``, ``Plan.eval_groups``).

Only the runner (``tcspec.tasks.run_task``) imports a stage's module, by name: the compile
side imports nothing of the run side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tcspec.plan.configs import (
    ActsConfig,
    CircuitConfig,
    CLTMemberConfig,
    EvaluateConfig,
    ExportConfig,
    ImportedMemberConfig,
    InterpConfig,
    ModelConfig,
    PassConfig,
    ProbeConfig,
    StageConfig,
    StudyConfig,
    TablesConfig,
    TokensConfig,
    TrainedMemberConfig,
)

Rule = Literal["task", "pass", "member"]
"""How the workflow runs a stage's tasks: ``task``, one rule over an ``{id}`` wildcard
(``rules/tasks.smk``); ``pass``, one rule per pass not done (``rules/passes.smk``);
``member``, no rule of its own: its tasks are the outputs of their passes' rules."""

RUN_PACKAGE = "tcspec.tasks"


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[StageConfig]
    run: str | None
    """Its module in `RUN_PACKAGE` (with ``run(ctx)``; ``reads(task, results)`` optional);
    None: its tasks run only in their pass."""
    rule: Rule = "task"
    members: str | None = None
    """A pass: the stage of the tasks it runs (it has no task folder of its own)."""
    threads: int = 1
    """CPU threads of its jobs. Part of what fixes a task's numbers on CPU, so a job always
    uses its stage's count: the model and acts stages run first and alone; passes,
    evaluations and studies run side by side, one thread each."""

    @property
    def module(self) -> str:
        return f"{RUN_PACKAGE}.{self.run}"

    @property
    def is_pass(self) -> bool:
        return self.members is not None


TABLE = (
    Stage("model", ModelConfig, "model", threads=2),
    Stage("tokens", TokensConfig, "tokens"),
    Stage("acts", ActsConfig, "acts", threads=2),
    Stage("train", TrainedMemberConfig, None, rule="member"),
    Stage("clt", CLTMemberConfig, "clt"),
    Stage("import", ImportedMemberConfig, "imports"),  # `import` is a Python keyword
    Stage("evaluate", EvaluateConfig, "evaluate", rule="member"),
    Stage("interp", InterpConfig, "interp"),
    Stage("probe", ProbeConfig, "probe"),
    Stage("study", StudyConfig, "study"),
    Stage("circuits", CircuitConfig, "circuits"),
    Stage("export", ExportConfig, "export"),
    Stage("tables", TablesConfig, "tables"),
    Stage("group", PassConfig, "group", rule="pass", members="train"),
    Stage("evalgroup", PassConfig, "evalgroup", rule="pass", members="evaluate"),
)
"""In the order the pipeline runs them (and the plan, status and targets list them)."""

BY_NAME = {s.name: s for s in TABLE}
STAGES = tuple(s.name for s in TABLE if not s.is_pass)
"""Stages with task folders, in pipeline order."""
RULE_STAGES = tuple(s.name for s in TABLE if s.rule == "task")
"""Stages with one generic rule over an ``{id}`` wildcard."""
PASSES = {s.name: s.members for s in TABLE if s.is_pass}
"""Pass stage -> the stage of its members."""
PASS_OF = {members: name for name, members in PASSES.items()}
"""Member stage -> the pass that runs its tasks."""
GROUP = PASS_OF["train"]
EVAL_GROUP = PASS_OF["evaluate"]


def stage(name: str) -> Stage:
    """The row of a stage (``KeyError`` naming the stages for an unknown one)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage `{name}` (stages: {', '.join(BY_NAME)})") from None
