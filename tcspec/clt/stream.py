"""Training batches straight from the model: one forward pass gives every CLT layer's input
and output hook, with no activation cache.

`stream_batches(model, tokens, names, batch_size)` returns a `Batches` callable for
`tcspec.clt.train.train_clt`: the positions of `tokens` [n_rows, ctx] in order (row by row,
the first position of each row dropped with `drop_bos`, as `cache_activations` does), cut
`batch_size` at a time; after the last full batch it starts again from the first row. Batch s
starts at stream position s * batch_size, so `batches(s)` begins there without running the
rows before it (bitwise resume). Positions are not shuffled: use the activation cache's
`ActivationReader` for shuffled batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from transformer_lens import HookedTransformer

from tcspec.clt.train import Batches


def stream_batches(
    model: HookedTransformer,
    tokens: torch.Tensor | np.ndarray,
    names: list[str],
    batch_size: int,
    contexts_per_forward: int = 8,
    drop_bos: bool = True,
) -> Batches:
    """Batches {full hook name: float32 [batch_size, d]} of `names` from forward passes of
    `model` over `tokens` (see the module docstring)."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    n_rows, ctx = tokens.shape
    first = 1 if drop_bos else 0
    per_row = ctx - first
    steps_per_pass = n_rows * per_row // batch_size
    if steps_per_pass == 0:
        raise ValueError(f"{n_rows} x {per_row} positions hold no batch of {batch_size}")
    layers = [int(n.split(".")[1]) for n in names]
    stop = max(layers) + 1

    def forwards(first_row: int) -> Iterator[dict[str, torch.Tensor]]:
        """Activations [rows x per_row, d] of rows first_row, ... (a multiple of
        contexts_per_forward, so a resumed stream runs the very same forward passes)."""
        for r in range(first_row, n_rows, contexts_per_forward):
            batch = tokens[r : r + contexts_per_forward].to(model.cfg.device)
            with torch.inference_mode():
                _, cache = model.run_with_cache(batch, names_filter=names, stop_at_layer=stop)
            yield {n: cache[n][:, first:].reshape(-1, cache[n].shape[-1]).float() for n in names}

    def batches(start: int) -> Iterator[dict[str, torch.Tensor]]:
        step = start
        while True:
            p = step % steps_per_pass  # step within this pass over the tokens
            row = (p * batch_size // per_row) // contexts_per_forward * contexts_per_forward
            skip = p * batch_size - row * per_row  # positions before batch p in that forward
            buf, have = {n: [] for n in names}, 0
            for acts in forwards(row):
                for n in names:
                    buf[n].append(acts[n][skip:])
                have += len(acts[names[0]]) - skip
                skip = 0
                while have >= batch_size and p < steps_per_pass:
                    joined = {n: torch.cat(buf[n]) for n in names}
                    yield {n: joined[n][:batch_size].cpu() for n in names}
                    buf = {n: [joined[n][batch_size:]] for n in names}
                    have, p, step = have - batch_size, p + 1, step + 1
                if p == steps_per_pass:
                    break

    return batches
