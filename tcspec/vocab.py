"""The dictionary kinds and activations tcspec trains, and the facts every layer shares
about them: the width formula and what a dead or live feature is.

Pure Python (no torch), so the spec, the planner and the checks import it cheaply.
"""

from __future__ import annotations

from tcspec.dictionaries.families import names

KINDS = ("transcoder", "skip_transcoder", "sae")
"""Trainable dictionary kinds: `sae` reconstructs its input hook, the transcoders predict
another hook (the skip transcoder adds a linear map of its input)."""

ACTIVATIONS = names()
"""The activation families, in the spec's order: relu, topk, jumprelu, batchtopk (each one
module and one row of `tcspec.dictionaries.families.FAMILIES`, which says what it is)."""

CLT = "clt"
"""The cross-layer transcoder: one dictionary over several layers (its own training loop)."""

CLT_ACTIVATIONS = names(lambda f: f.clt_sparsity is not None)
"""Activations of a cross-layer transcoder (TopK: k per layer)."""

CLT_IN_HOOKS = ("ln2.hook_normalized", "hook_resid_mid")
"""Input hooks a cross-layer transcoder reads, relative to a block."""

JUMPRELU_PENALTIES = ("step", "tanh")
"""Forms of a per-layer JumpReLU's L0 penalty: the step count H(pre - threshold) (GDM) or
tanh(c z ||W_dec||) (Anthropic, as a cross-layer transcoder's `tanh` penalty)."""

GHOST_RESIDUALS = ("output", "input")
"""What ghost grads fit: the output residual y - y_hat, or the input side's x - y_hat."""


def d_sae_of(d_in: int, d_sae: int | None, expansion: int | None) -> int:
    """The number of features: `d_sae` when given, else `expansion * d_in`."""
    if d_sae is not None:
        return d_sae
    if expansion is None:
        raise ValueError("give one of `d_sae` and `expansion` (the width)")
    return expansion * d_in


def is_dead(steps_since_fired, dead_window: int):
    """A feature is dead in training when it has not fired for more than `dead_window`
    consecutive steps: steps_since_fired > dead_window (elementwise on a tensor or array)."""
    return steps_since_fired > dead_window


def is_live(frequency, live_threshold: float):
    """A feature is live when its firing frequency (fraction of tokens on which z > 0)
    exceeds `live_threshold`: frequency > live_threshold (elementwise)."""
    return frequency > live_threshold


def never_fires(count):
    """A feature never fires on a set of tokens when its firing count there is 0 (the
    `dead_fraction` metric and the dashboards' `dead`)."""
    return count == 0
