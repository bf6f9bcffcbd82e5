"""The stream side of the compiler (``acts: {source: stream}``): what a stream pass reads,
how much memory it needs, and how a spec's train tasks fall into passes.

A pass is every train task that sees the same batches (same batch size, steps and seed:
the model and tokens are the spec's), ordered by layer and split where the estimate
(``tcspec.plan.budget.estimate_memory``) exceeds the per-job budget the machine side gives.
"""

from __future__ import annotations

from dataclasses import replace

from tcspec.plan import budget
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


def stream_shape(spec: Spec, dims: dict) -> budget.StreamShape:
    """The buffer, forward and model of a stream pass, for its memory estimate."""
    a, ctx = spec.acts, spec.data.context
    act_bytes = 4 if getattr(spec.model, "dtype", "float32") == "float32" else 2
    d, n, v = dims["d_model"], dims["n_layers"], dims.get("d_vocab", 50257)
    return budget.StreamShape(
        batch_size=0,  # set per pass
        buffer_tokens=a.buffer_tokens,
        rows_per_forward=a.batch_contexts * ctx,  # the most one forward gives
        act_bytes=act_bytes,
        forward=budget.forward_bytes(
            a.batch_contexts, ctx, d, dims["d_mlp"], dims["n_heads"], act_bytes
        ),
        model=(12 * n * d * d + 2 * v * d) * act_bytes,
    )


def _coders(configs: list[TrainedMemberConfig], shape: budget.StreamShape):
    coders = [c.coder() for c in configs]
    widths = {h: w for c in coders for h, w in ((c.in_hook, c.d_in), (c.out_hook, c.d_out))}
    return coders, widths, replace(shape, batch_size=configs[0].opts.batch_size)


def stream_memory(
    configs: list[TrainedMemberConfig], shape: budget.StreamShape
) -> budget.MemoryEstimate:
    """Estimated device bytes of one stream pass training ``configs``."""
    return budget.estimate_memory(*_coders(configs, shape))


def split_passes(
    ids: list[str], configs: list[TrainedMemberConfig], shape: budget.StreamShape, budget_mb: int
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
            alone = budget.estimate_memory([c], widths, sized)
            if alone.total > budget_mb * 2**20:
                raise ValueError(
                    f"train task {ids[i]} alone needs {alone.describe()}, over the stream job "
                    f"budget of {budget_mb} MB (stream_budget_mb); raise it or lower "
                    "acts.buffer_tokens"
                )
        split = budget.split_by_memory(coders, widths, sized, budget_mb * 2**20)
        passes += [tuple(sorted(ids[idx[j]] for j in group)) for group in split]
    return passes
