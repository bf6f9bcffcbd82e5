"""group stage: one training pass over the cache for the train tasks (sweep points) of one
dictionary at one layer that are not done yet; each member's folder is its train task's."""

from __future__ import annotations

import time

from tcspec import layout
from tcspec.configs import TrainedMemberConfig


def member(ctx, task) -> object:
    """The trainer's view of one train task."""
    from tcspec.coders import CoderConfig
    from tcspec.train import Member

    c: TrainedMemberConfig = task.config
    coder = CoderConfig(
        kind=c.kind, d_in=c.d_in, d_out=c.d_out, d_sae=c.d_sae, activation=c.opts.activation,
        k=c.opts.k, in_hook=c.in_key, out_hook=c.out_key, layer=c.layer,
    )  # fmt: skip
    return Member(
        name=task.id,
        opts=c.opts,
        config=coder,
        in_key=c.in_key,
        out_key=c.out_key,
        out_dir=layout.member_dir(ctx.results, task.stage, task.id),
        seed=c.opts.seed,
    )


def run(ctx) -> dict:
    from tcspec.activations import ActivationReader
    from tcspec.tasks import finish, load_task
    from tcspec.train import train_group

    start = time.time()
    tasks = [load_task(ctx.results, "train", i) for i in ctx.config.members]
    first: TrainedMemberConfig = tasks[0].config
    group = [member(ctx, t) for t in tasks]
    keys = sorted({k for m in group for k in (m.in_key, m.out_key)})
    reader = ActivationReader(
        ctx.dep_dir("acts") / layout.CACHE,
        keys,
        batch_size=first.opts.batch_size,
        seed=first.data_seed,
        device=ctx.device,
    )
    results = train_group(group, reader.iter_batches, first.steps, ctx.checkpoints, ctx.device)
    wall = time.time() - start
    for task, result in zip(tasks, results):
        finish(task, ctx.results, {"pass": ctx.task.id, "result": result}, ctx.device, wall)
    return {"members": [t.id for t in tasks]}
