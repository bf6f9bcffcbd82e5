"""FVU of a Matryoshka dictionary's nested prefixes: how well its first w features alone
reconstruct, for each prefix width w.

    y_hat_w = z[:, :w] W_dec[:w] + b_out (+ x W_skip)      z from the full dictionary

(the prefixes the training loss sums, `tcspec.training.matryoshka`); FVU as `tcspec.evaluation.metrics`
defines it, on the dictionary's own input and output hooks of a model run (no splicing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformer_lens import HookedTransformer

from tcspec.data.positions import keep_mask
from tcspec.dictionaries.coders import Coder
from tcspec.evaluation.metrics import Accumulator
from tcspec.evaluation.spliced import _apply, _batches, _check_tokens, _coder_hooks

PREFIX_FVU = "fvu_prefix_"
"""Metric key prefix: `fvu_prefix_{w}` is the FVU of the first w features."""


def prefix_key(width: int) -> str:
    return f"{PREFIX_FVU}{width}"


def prefix_decode(coder: Coder, z: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """y_hat of the first `width` features: z [..., d_sae], x [..., d_in] -> [..., d_out]."""
    keep = torch.arange(z.shape[-1], device=z.device) < width  # [d_sae]
    return coder.decode(z * keep, x)


@torch.inference_mode()
def prefix_fvu(
    model: HookedTransformer,
    coder: Coder,
    layer: int,
    tokens: torch.Tensor | np.ndarray,
    batch_contexts: int,
    widths: Sequence[int],
    exclude_tokens: Sequence[int] = (),
) -> dict[int, float]:
    """{w: FVU of the first w features} over `tokens` [n_rows, ctx] for each width in
    `widths` (each in 1..d_sae; d_sae gives the full dictionary's FVU)."""
    bad = [w for w in widths if not 0 < w <= coder.cfg.d_sae]
    if bad:
        raise ValueError(f"prefix widths {bad} are not in 1..d_sae ({coder.cfg.d_sae})")
    _check_tokens(tokens, model)
    in_hook, out_hook = _coder_hooks(model, coder, layer)
    accs = {w: Accumulator() for w in widths}
    for batch in _batches(tokens, batch_contexts, model.cfg.device):
        _, cache = model.run_with_cache(batch, names_filter=[in_hook, out_hook])
        mask = keep_mask(batch, exclude_tokens)  # [B, T]
        x, y = cache[in_hook][mask], cache[out_hook][mask]  # [n, d_in], [n, d_out]
        _, z = _apply(coder, x)  # [n, d_sae]
        x_c = x.to(z)
        for w, acc in accs.items():
            y_hat = prefix_decode(coder, z, x_c, w).to(y)  # [n, d_out]
            acc.update(y, y_hat, z[:, :w])
    return {w: acc.compute()["fvu"] for w, acc in accs.items()}
