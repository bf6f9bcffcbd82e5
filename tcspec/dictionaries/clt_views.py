"""One layer of a cross-layer transcoder seen as a per-layer dictionary, for the code that
studies one layer's features at a time (feature statistics, dashboards).

`layer_coder(clt, i)` is the features of CLT layer i as a `tcspec.dictionaries.coders.Coder` of kind
`transcoder` (d_in = d_out = d_model, d_sae = F):

    W_enc = clt.W_enc[i] [d, F], b_enc = clt.b_enc[i] [F], b_dec = 0 (no input pre-bias),
    W_dec = sum_{m >= i} clt.W_dec[i][:, m - i] [F, d], b_dec_out = clt.b_dec[i] [d]
    (JumpReLU: threshold = clt.threshold[i])

so its `encode` is `clt.encode_layer(x, i)` (the same activations, bit for bit) and a
feature's decoder row is its whole write to the residual stream, summed over the MLP outputs
it reaches (each adds to the residual stream, so its direct logit effect is that sum through
the unembedding). Its `decode` is not a reconstruction of one MLP output.

`write_norms(clt, i)` [F, L - i]: ||W_dec[i][f, m - i]|| for each output layer m >= i, where
each feature writes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.dictionaries.clt import CLT
from tcspec.dictionaries.coders import Coder, CoderConfig


def layer_index(clt: CLT, block: int) -> int:
    """The CLT layer (0..L-1) of model block `block`."""
    blocks = clt.cfg.blocks
    if block not in blocks:
        raise ValueError(f"the CLT spans blocks {list(blocks)}, not block {block}")
    return blocks.index(block)


@torch.no_grad()
def layer_coder(clt: CLT, i: int) -> Coder:
    """The features of CLT layer `i` as a per-layer `Coder` (see the module docstring)."""
    cfg = clt.cfg
    block = cfg.blocks[i]
    view = Coder(
        CoderConfig(
            kind="transcoder",
            d_in=cfg.d_model,
            d_out=cfg.d_model,
            d_sae=cfg.d_sae,
            activation=cfg.activation,
            k=cfg.k,
            in_hook=cfg.in_names[i],
            out_hook=cfg.out_names[i],
            layer=block,
        )  # fmt: skip
    )
    view = view.to(device=clt.b_enc.device, dtype=clt.b_enc.dtype)
    view.W_enc.copy_(clt.W_enc[i])
    view.b_enc.copy_(clt.b_enc[i])
    view.b_dec.zero_()
    view.W_dec.copy_(clt.W_dec[i].sum(1))  # [F, L - i, d] -> [F, d]
    view.b_dec_out.copy_(clt.b_dec[i])
    if cfg.family.thresholded:
        view.threshold.copy_(clt.threshold[i])
    return view.requires_grad_(False)


@torch.no_grad()
def write_norms(clt: CLT, i: int) -> Tensor:
    """[F, L - i]: the norm of each feature of layer `i`'s decoder into each output layer."""
    return clt.W_dec[i].norm(dim=-1).float().cpu()
