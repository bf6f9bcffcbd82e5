"""Firing statistics of one dictionary in training: steps since each feature last fired
(for the dead-feature terms) and firing counts over a sliding window (for its density)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.vocab import is_dead


@dataclass
class FiringStats:
    """Per-feature counters [d_sae]; the density window is the last full window of
    `density_window` steps (`prev_*`) joined by the current, partial one (`window_*`)."""

    since_fired: Tensor  # long [S]: steps since the feature last fired
    window_counts: Tensor  # float64 [S]: tokens it fired on in the current window
    window_steps: int
    prev_counts: Tensor  # float64 [S]: the same over the last full window
    prev_steps: int

    @classmethod
    def zeros(cls, d_sae: int, device) -> FiringStats:
        return cls(
            since_fired=torch.zeros(d_sae, dtype=torch.long, device=device),
            window_counts=torch.zeros(d_sae, dtype=torch.float64, device=device),
            window_steps=0,
            prev_counts=torch.zeros(d_sae, dtype=torch.float64, device=device),
            prev_steps=0,
        )

    def update(self, fired: Tensor, density_window: int) -> None:
        """Count one step: `fired` [S] is the number of the batch's tokens each fired on."""
        self.since_fired.add_(1).masked_fill_(fired > 0, 0)
        self.window_counts += fired
        self.window_steps += 1
        if self.window_steps == density_window:
            self.prev_counts.copy_(self.window_counts)
            self.prev_steps = self.window_steps
            self.window_counts.zero_()
            self.window_steps = 0

    def dead(self, dead_window: int) -> Tensor:
        """Bool [S]: the features dead by `tcspec.vocab.is_dead`."""
        return is_dead(self.since_fired, dead_window)

    def density(self, batch_size: int) -> Tensor:
        """Firing frequency per feature [S] over the density window (float32)."""
        if self.window_steps == 0:
            counts, steps = self.prev_counts, self.prev_steps
        else:
            counts = self.window_counts + self.prev_counts
            steps = self.window_steps + self.prev_steps
        return (counts / max(steps * batch_size, 1)).float()
