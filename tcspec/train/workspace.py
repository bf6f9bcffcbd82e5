"""Reusable work buffers for the hand-written gradients."""

from __future__ import annotations

import torch
from torch import Tensor


class Workspace:
    """Reusable buffers by (name, shape): members of equal shape share them."""

    def __init__(self, device, dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        key = (name, tuple(shape))
        if key not in self.buffers:
            self.buffers[key] = torch.empty(shape, device=self.device, dtype=self.dtype)
        return self.buffers[key]
