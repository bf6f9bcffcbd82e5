"""Learning-rate and L1-coefficient schedules (multipliers of the configured values)."""

from __future__ import annotations

import math


def lr_factor(step: int, steps: int, warmup: int, decay: str, decay_start: float) -> float:
    """Multiplier of the learning rate at 0-based `step` of `steps`.

    Linear warm-up min(1, (step+1)/warmup); then, from step t0 = floor(decay_start * steps),
    with p = (step - t0) / (steps - t0): `linear` multiplies by 1 - p, `cosine` by
    (1 + cos(pi p)) / 2, `none` by 1.
    """
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t0 = int(decay_start * steps)
    if decay != "none" and step >= t0 and steps > t0:
        p = (step - t0) / (steps - t0)
        f *= 1.0 - p if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return f


def l1_factor(step: int, warmup: int) -> float:
    """Multiplier of the L1 coefficient: linear warm-up min(1, (step+1)/warmup)."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
