"""clt stage: train one cross-layer transcoder (one sweep point over all its layers) in the
one training loop (`tcspec.training.train`, the trainable `tcspec.training.clt.CLTRun`),
from the activation cache or from a stream of model forwards (`tcspec.tasks.group.source`:
every layer's input and output hook from one pass); resumable from the task's checkpoint
folder (a stream's position and buffer provenance in the checkpoint). The task's folder
holds the CLT (`tcspec.dictionaries.clt_io.save`) and training.json."""

from __future__ import annotations

import shutil


def hooks(c) -> list[str]:
    """Every hook a CLT task with config `c` reads: each layer's input and output."""
    shape = c.shape()
    return sorted(shape.in_names + shape.out_names)


def reads(task, results) -> dict:
    """What a CLT task reads of its activation cache: its layers' hooks only."""
    from tcspec.tasks import acts

    return {"acts": acts.read_by(hooks(task.config))} if "acts" in task.deps else {}


def trainable(ctx, task):
    """The trainer's view of a CLT train task."""
    from tcspec.training.clt import CLTRun

    c = task.config
    return CLTRun(task.id, c.opts, c.shape(), c.steps, task.dir(ctx.results), ctx.device)


def run(ctx) -> dict:
    from tcspec.tasks.group import source
    from tcspec.training import train

    c = ctx.config
    batches = source(ctx, c, hooks(c))
    (summary,) = train([trainable(ctx, ctx.task)], batches, c.steps, ctx.checkpoints, ctx.device)
    shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    return {k: v for k, v in summary.items() if k not in ("curve", "final")}
