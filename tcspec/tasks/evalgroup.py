"""evalgroup stage: one evaluation pass over the evaluate tasks of one eval group that are
not done (`tcspec.tasks.evaluate.summaries`: the model and the eval tokens loaded once);
each member's ``metrics.json`` and ``task.json`` written in its own folder."""

from __future__ import annotations

import time


def run(ctx) -> dict:
    from tcspec.plan.stages import PASSES
    from tcspec.plan.store import load_task
    from tcspec.tasks import Context, finish
    from tcspec.tasks.evaluate import summaries

    start = time.time()
    members = [load_task(ctx.results, PASSES[ctx.task.stage], i) for i in ctx.config.members]
    contexts = [Context(t, ctx.results, ctx.device) for t in members]
    found = summaries(ctx, contexts)
    wall = time.time() - start
    for c in contexts:
        finish(c.task, ctx.results, found[id(c)] | {"pass": ctx.task.id}, ctx.device, wall)
    return {"members": [c.task.id for c in contexts]}
