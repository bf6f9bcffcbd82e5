"""Which token positions count: the one rule every stage applies for the BOS convention.

`data.bos: exclude` passes the BOS id as `exclude_tokens` (SAELens's
`exclude_special_tokens`): a position whose token is excluded is not cached, streamed,
trained on, spliced, scored or sampled for a dashboard, wherever it sits in a packed row
(a document's own BOS inside a row included). `include` passes nothing: every position counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def keep_mask(tokens: torch.Tensor, exclude_tokens: Sequence[int]) -> torch.Tensor:
    """Counted positions: True where the token is not in `exclude_tokens`. [B, T] bool."""
    if not exclude_tokens:
        return torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    excluded = torch.as_tensor(list(exclude_tokens), device=tokens.device)
    return ~torch.isin(tokens, excluded)


def counted(tokens, exclude_tokens: Sequence[int], chunk: int = 4096) -> int:
    """Counted positions in `tokens` [n_rows, T] (numpy, memmap or torch), read `chunk`
    rows at a time."""
    return sum(
        int(keep_mask(torch.as_tensor(np.asarray(tokens[r : r + chunk])), exclude_tokens).sum())
        for r in range(0, len(tokens), chunk)
    )
