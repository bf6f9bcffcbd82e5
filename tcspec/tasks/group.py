"""group stage: one training pass for the train tasks of one group that are not done yet:
over the activation cache (the sweep points of one dictionary at one layer), or from one
activation stream (every dictionary reading the same model and tokens). Each member's
folder is its train task's."""

from __future__ import annotations

import time

from tcspec import layout
from tcspec.plan.configs import TrainedMemberConfig
from tcspec.tasks import acts as acts_task
from tcspec.tasks import model as model_task
from tcspec.tasks import tokens as tokens_task


def member(ctx, task) -> object:
    """The trainer's view of one train task."""
    from tcspec.training import Member

    c: TrainedMemberConfig = task.config
    return Member(
        name=task.id,
        opts=c.opts,
        config=c.coder(),
        in_key=c.in_key,
        out_key=c.out_key,
        out_dir=layout.task_dir(ctx.results, task.stage, task.id),
        seed=c.opts.seed,
    )


def hooks(tasks) -> list[str]:
    """The hooks a pass over train tasks `tasks` reads."""
    return sorted({k for t in tasks for k in (t.config.in_key, t.config.out_key)})


def reads(task, results) -> dict:
    """What a pass reads of its activation cache: its members' hooks only."""
    from tcspec.plan.store import load_task

    if "acts" not in task.deps:
        return {}
    return {
        "acts": acts_task.read_by(
            hooks(load_task(results, "train", i) for i in task.config.members)
        )
    }


def run(ctx) -> dict:
    from tcspec.plan.store import load_task
    from tcspec.tasks import finish
    from tcspec.training import train_group

    start = time.time()
    tasks = [load_task(ctx.results, "train", i) for i in ctx.config.members]
    first: TrainedMemberConfig = tasks[0].config
    group = [member(ctx, t) for t in tasks]
    batches = source(ctx, first, hooks(tasks))
    results = train_group(group, batches, first.steps, ctx.checkpoints, ctx.device)
    wall = time.time() - start
    for task, result in zip(tasks, results):
        finish(task, ctx.results, {"pass": ctx.task.id, "result": result}, ctx.device, wall)
    return {"members": [t.id for t in tasks]}


def source(ctx, first, keys: list[str]):
    """The batches of the hooks `keys` for a pass whose first member (or CLT) config is
    `first`: from its activation stream when it streams, else from its cache."""
    if first.stream is not None:
        return activation_stream(ctx, first, keys)
    return _reader(ctx, first, keys)


def _reader(ctx, first, keys: list[str]):
    """Shuffled batches from the pass's activation cache."""
    from tcspec.data.cache import ActivationReader

    reader = ActivationReader(
        ctx.dep_dir("acts") / layout.CACHE,
        keys,
        batch_size=first.opts.batch_size,
        seed=first.data_seed,
        device=ctx.device,
    )
    return reader.iter_batches


def activation_stream(ctx, first, keys: list[str]):
    """Shuffled batches of the hooks `keys` computed from the model on the fly, for a pass
    whose first member (or CLT) config is `first`; its position and buffer go in the
    trainer's checkpoint (no activations are written). A synthetic source draws each batch
    from its seed and the step alone (nothing to checkpoint)."""
    from tcspec.data.stream import ActivationStream, StreamConfig

    if model_task.is_synthetic(ctx):
        from tcspec.models.synthetic import SyntheticStream, load_truth

        truth = load_truth(ctx.dep_dir("model"))
        return SyntheticStream(truth, keys, first.opts.batch_size, ctx.device)

    model = model_task.load(ctx)
    config = StreamConfig(
        hooks=tuple(keys),
        batch_size=first.opts.batch_size,
        buffer_tokens=first.stream.buffer_tokens,
        batch_contexts=first.stream.batch_contexts,
        seed=first.data_seed,
        shuffle=True,
        exclude_tokens=model_task.excluded_tokens(model, first.stream.bos),
    )
    return ActivationStream(model, tokens_task.load(ctx, "train"), config)
