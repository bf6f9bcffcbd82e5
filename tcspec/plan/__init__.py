"""The compiler: Spec -> Plan of content-addressed Tasks with typed configs (the compile
side: it imports nothing that runs). What is where:

    compile.py     compile_plan: the spec's stages in DAG order, the training and
                   evaluation groups, every task's resources
    sweeps.py      a dictionary's sweep points, their names, a member's options
    builders.py    one task builder per stage (config, id prefix, deps)
    passes.py      the task of a training or evaluation pass (pass_task)
    task.py        Task, Plan and content-addressed ids
    configs.py     each stage's typed, frozen config
    stages.py      the stage table: config, run module, rule and threads of each stage
    imports.py     tasks that import released dictionaries
    stream.py      stream passes: what one reads, which train tasks share one
    estimate.py    a job's Cost, its seconds and the scheduler's request (margins, units)
    cost.py        the model's and the dictionaries' sizes, FLOPs and training memory
    stage_costs.py every other stage's job cost
    resources.py   each task's sizes from its config, costed
    store.py, workflow.py, report.py   stored configs; the Snakemake bridge; `tcspec plan`
"""

from tcspec.plan.builders import coder_ref
from tcspec.plan.compile import DEFAULT_STREAM_BUDGET_MB, compile_plan, gpus, spliced_layers
from tcspec.plan.passes import evalgroup_task, group_task, pass_task
from tcspec.plan.sweeps import member_name, member_opts, sweep_points
from tcspec.plan.task import Plan, Task, make_task, safe_name, task_id

__all__ = [
    "DEFAULT_STREAM_BUDGET_MB",
    "Plan",
    "Task",
    "coder_ref",
    "compile_plan",
    "evalgroup_task",
    "gpus",
    "group_task",
    "make_task",
    "member_name",
    "member_opts",
    "pass_task",
    "safe_name",
    "spliced_layers",
    "sweep_points",
    "task_id",
]
