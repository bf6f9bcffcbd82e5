"""The passes: the task that runs the members of one group (a training pass) or eval group
(an evaluation pass) that are not done, its id naming exactly that set."""

from __future__ import annotations

from tcspec.plan.builders import spliced_name
from tcspec.plan.configs import PassConfig
from tcspec.plan.stages import EVAL_GROUP, GROUP, PASS_OF
from tcspec.plan.task import Plan, Task, task_id


def pass_task(members: list[Task], plan: Plan) -> Task:
    """The pass that runs ``members`` (tasks of one group or eval group not done)."""
    build = {GROUP: group_task, EVAL_GROUP: evalgroup_task}[PASS_OF[members[0].stage]]
    return build(members, plan)


def group_task(members: list[Task], plan: Plan) -> Task:
    """One training pass for ``members`` (train tasks of one group that are not done): its
    id names exactly that set, so an interrupted pass resumes its checkpoint. Its resources
    are the pass's own estimate (``Sizer.train_pass_resources``)."""
    config = PassConfig(members=tuple(sorted(t.id for t in members)))
    deps = dict(members[0].deps)  # the cache, or the model and tokens, they all read
    first = members[0].label
    prefix = f"{first['dictionary']}-L{members[0].config.layer}-x{len(members)}"
    if members[0].config.stream is not None:
        prefix = f"stream-x{len(members)}"
    resources = plan.sizer.train_pass_resources([t.config for t in members])
    return Task(GROUP, task_id(prefix, config, deps), config, deps, resources)


def evalgroup_task(members: list[Task], plan: Plan) -> Task:
    """One evaluation pass for ``members`` (evaluate tasks of one eval group that are not
    done): the model and tokens once, then every member's dictionaries (its deps: the union
    of theirs, renamed per member)."""
    config = PassConfig(members=tuple(sorted(t.id for t in members)))
    deps = {k: v for k, v in members[0].deps.items() if k in ("model", "tokens")}
    for i, t in enumerate(members):
        deps |= {f"m{i}_{k}": v for k, v in t.deps.items() if k not in ("model", "tokens")}
    resources = plan.sizer.evaluate_pass_resources(plan, [t.config for t in members])
    first = members[0].config.coders
    mixed = len({t.config.coders[0].dictionary for t in members}) > 1  # a layer's pass
    spliced = spliced_name(first, None, members[0].label["whole"])
    prefix = f"{f'L{first[0].layer}' if mixed else spliced}-x{len(members)}"
    return Task(EVAL_GROUP, task_id(prefix, config, deps), config, deps, resources)
