"""Memory and time of a stream train job, estimated before it runs.

A stream job trains a group of dictionaries from one ``ActivationStream``; the planner splits
a group when its estimate exceeds the per-job budget the machine side states. The estimate
(bytes on the training device) is the sum of:

- ``weights``: every dictionary's fp32 parameters, 4 x n_params (see ``n_params``);
- ``optimizer``: Adam's two moments, 8 x n_params;
- ``workspace``: per distinct dictionary shape (the trainer shares work buffers between
  members of equal shape): gradients 4 x n_params, and 4 x B x (2 d_sae + d_in + 2 d_out)
  for z, dz, the centred input, y_hat and the residual; per member 24 x d_sae of feature
  statistics (an int64 and two float64 counters per feature);
- ``buffer``: (buffer_tokens + one forward batch of rows) x the hooks' row bytes (width x
  the bytes of the model's dtype, or 4 for LayerNorm outputs, which TransformerLens keeps
  in float32 in a half-precision model);
- ``batch``: B x (the row bytes + 4 x the widths) (gathered, then float32);
- ``forward``: the hooks captured in one forward batch, plus a rough allowance for the
  model's own activations (``forward_bytes``);
- ``model``: the model's weights, as given.

Time, and every other job's memory, are in ``tcspec.plan.estimates``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from tcspec.dictionaries.coders import CoderConfig


@dataclass(frozen=True)
class StreamShape:
    """The parts of a stream job that size its memory, besides the dictionaries."""

    batch_size: int
    """Rows per training batch."""
    buffer_tokens: int
    """Rows per hook in the shuffle buffer."""
    rows_per_forward: int
    """Rows one forward batch adds (batch_contexts x positions kept per context)."""
    act_bytes: int = 4
    """Bytes per activation value in the model's dtype (2 for bf16/fp16; see
    ``value_bytes``)."""
    forward: int = 0
    """Bytes of one forward batch beyond the captured hooks (see ``forward_bytes``)."""
    model: int = 0
    """Bytes of the model's weights on the device."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part (see the module doc); ``total`` is their sum."""

    weights: int
    optimizer: int
    workspace: int
    buffer: int
    batch: int
    forward: int
    model: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """``'total 1.2 GB (weights 0.3 GB, ...)'``."""
        parts = ", ".join(f"{f.name} {_gb(getattr(self, f.name))}" for f in fields(self))
        return f"total {_gb(self.total)} ({parts})"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def n_params(cfg: CoderConfig) -> int:
    """Parameters of one dictionary: W_enc, b_enc, W_dec, b_dec (+ b_dec_out, W_skip)."""
    n = cfg.d_sae * (cfg.d_in + cfg.d_out) + cfg.d_sae + cfg.d_in
    n += 0 if cfg.tied_bias else cfg.d_out
    return n + (cfg.d_in * cfg.d_out if cfg.skip else 0)


LAYERNORM_HOOKS = ("hook_normalized", "hook_scale")
"""Hook name endings TransformerLens computes in float32 whatever the model's dtype."""


def value_bytes(hook: str, act_bytes: int) -> int:
    """Bytes per value a hook gives in a model whose dtype has ``act_bytes`` bytes."""
    return 4 if hook.endswith(LAYERNORM_HOOKS) and act_bytes < 4 else act_bytes


def group_hooks(coders: Sequence[CoderConfig]) -> list[str]:
    """The hooks a group reads, in first-use order (each coder's in_hook and out_hook)."""
    hooks: dict[str, None] = {}
    for c in coders:
        if c.in_hook is None or c.out_hook is None:
            raise ValueError(f"a {c.kind} needs in_hook and out_hook to be streamed")
        hooks[c.in_hook] = hooks[c.out_hook] = None
    return list(hooks)


def estimate_memory(
    coders: Sequence[CoderConfig], widths: Mapping[str, int], shape: StreamShape
) -> MemoryEstimate:
    """Device bytes of a stream job training ``coders`` (``widths``: hook -> width)."""
    if not coders:
        raise ValueError("no dictionaries to estimate")
    hooks = group_hooks(coders)
    row = sum(widths[h] for h in hooks)  # values per row over the buffered hooks
    row_bytes = sum(widths[h] * value_bytes(h, shape.act_bytes) for h in hooks)
    B = shape.batch_size
    params = sum(n_params(c) for c in coders)
    distinct = {(c.kind, c.d_in, c.d_out, c.d_sae, c.activation): c for c in coders}
    work = sum(
        4 * n_params(c) + 4 * B * (2 * c.d_sae + c.d_in + 2 * c.d_out) for c in distinct.values()
    )
    work += sum(24 * c.d_sae for c in coders)
    rows_held = shape.buffer_tokens + shape.rows_per_forward
    return MemoryEstimate(
        weights=4 * params,
        optimizer=8 * params,
        workspace=work,
        buffer=rows_held * row_bytes,
        batch=B * (row_bytes + 4 * row),
        forward=shape.rows_per_forward * row_bytes + shape.forward,
        model=shape.model,
    )


def split_by_memory(
    coders: Sequence[CoderConfig], widths: Mapping[str, int], shape: StreamShape, budget: int
) -> list[list[int]]:
    """Indices of ``coders`` in consecutive groups, each estimated within ``budget`` bytes
    (greedy, in the given order: pass them sorted by layer so a group's hooks stay few).
    ValueError when one dictionary alone exceeds the budget."""
    groups: list[list[int]] = []
    for i, c in enumerate(coders):
        joined = [coders[j] for j in groups[-1]] + [c] if groups else []
        if joined and estimate_memory(joined, widths, shape).total <= budget:
            groups[-1].append(i)
            continue
        alone = estimate_memory([c], widths, shape)
        if alone.total > budget:
            raise ValueError(
                f"dictionary {i} ({c.kind}, d_sae {c.d_sae}) alone needs {alone.describe()}, "
                f"over the per-job budget of {_gb(budget)}; raise the budget or lower "
                f"buffer_tokens"
            )
        groups.append([i])
    return groups


def forward_bytes(
    batch_contexts: int, context: int, d_model: int, d_mlp: int, n_heads: int, act_bytes: int
) -> int:
    """A rough peak of one no-grad forward batch's own activations: the residual stream and
    a block's largest intermediates (q, k, v, the attention pattern, the MLP's hidden)."""
    per_position = 6 * d_model + 2 * d_mlp + 2 * n_heads * context
    return batch_contexts * context * per_position * act_bytes
