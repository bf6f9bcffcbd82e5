"""The stream side of the compiler (``acts: {source: stream}``): what a stream pass reads,
how much memory it needs, and how a spec's train tasks fall into passes.

A pass is every train task that sees the same batches (same batch size, steps and seed:
the model and tokens are the spec's), ordered by layer and split where the estimate
(``tcspec.plan.cost.estimate_memory``) exceeds the per-job budget the machine side gives.
"""

from __future__ import annotations

from dataclasses import replace

from tcspec.plan import cost
from tcspec.plan.configs import StreamSource, TrainedMemberConfig
from tcspec.spec import Spec


def stream_source(spec: Spec) -> StreamSource | None:
    """What a member's batches depend on when it streams; None for a cache spec."""
    a = spec.acts
    if a.source != "stream":
        return None
    return StreamSource(
        buffer_tokens=a.buffer_tokens,
        batch_contexts=a.batch_contexts,
        bos=spec.data.bos,
    )


def stream_shape(spec: Spec, size: cost.ModelSize) -> cost.StreamShape:
    """The buffer, forward and model of a stream pass, for its memory estimate."""
    return cost.stream_shape(size, spec.acts.buffer_tokens, spec.acts.batch_contexts)


def _coders(configs: list[TrainedMemberConfig], shape: cost.StreamShape):
    coders = [c.coder() for c in configs]
    widths = {h: w for c in coders for h, w in ((c.in_hook, c.d_in), (c.out_hook, c.d_out))}
    return coders, widths, replace(shape, batch_size=configs[0].opts.batch_size)


def stream_memory(
    configs: list[TrainedMemberConfig], shape: cost.StreamShape
) -> cost.MemoryEstimate:
    """Estimated device bytes of one stream pass training ``configs``."""
    return cost.estimate_memory(*_coders(configs, shape))


def split_passes(
    ids: list[str], configs: list[TrainedMemberConfig], shape: cost.StreamShape, budget_mb: int
) -> list[tuple[str, ...]]:
    """Train task ids in passes: those that see the same batches, ordered by layer, split
    where a pass's estimate exceeds ``budget_mb``. ValueError when one alone exceeds it."""
    shared: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        shared.setdefault((c.opts.batch_size, c.steps, c.data_seed), []).append(i)
    passes = []
    for idx in shared.values():
        idx.sort(key=lambda i: (configs[i].layer, ids[i]))
        coders, widths, sized = _coders([configs[i] for i in idx], shape)
        for i, c in zip(idx, coders):
            alone = cost.estimate_memory([c], widths, sized)
            if alone.total > budget_mb * 2**20:
                raise ValueError(
                    f"train task {ids[i]} alone needs {alone.describe()}, over the stream job "
                    f"budget of {budget_mb} MB (stream_budget_mb); raise it or lower "
                    "acts.buffer_tokens"
                )
        split = split_by_memory(coders, widths, sized, budget_mb * 2**20)
        passes += [tuple(sorted(ids[idx[j]] for j in group)) for group in split]
    return passes


def split_by_memory(
    coders: list, widths: dict[str, int], shape: cost.StreamShape, budget: int
) -> list[list[int]]:
    """Indices of ``coders`` (CoderConfigs) in consecutive groups, each estimated within
    ``budget`` bytes (greedy, in the given order: pass them sorted by layer so a group's
    hooks stay few). ValueError when one dictionary alone exceeds the budget."""
    groups: list[list[int]] = []
    for i, c in enumerate(coders):
        joined = [coders[j] for j in groups[-1]] + [c] if groups else []
        if joined and cost.estimate_memory(joined, widths, shape).total <= budget:
            groups[-1].append(i)
            continue
        alone = cost.estimate_memory([c], widths, shape)
        if alone.total > budget:
            raise ValueError(
                f"dictionary {i} ({c.kind}, d_sae {c.d_sae}) alone needs {alone.describe()}, "
                f"over the per-job budget of {cost.gb(budget)}; raise the budget or lower "
                f"buffer_tokens"
            )
        groups.append([i])
    return groups
