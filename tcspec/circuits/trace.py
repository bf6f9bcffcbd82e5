"""One forward pass over a batch of prompts that keeps what attribution needs (`Trace`),
the check that the transcoders can stand in for their MLPs, the hooks that splice them in
(`splice_hooks`), and the attribution of every feature through all paths at once (one
backward pass through the frozen model).

The dictionaries are per-layer transcoders by layer or a cross-layer transcoder, seen the one
way `tcspec.circuits.graph.dictionaries` shows them: source layer ``l``'s features are read at
its input hook and write into the MLP outputs of ``decoders(l)`` (a CLT's: ``l`` and every
later layer it spans), so a feature with all its decoders is one source.

The model is a processed TransformerLens ``HookedTransformer`` (``fold_ln``: every norm is
``LNPre`` or ``RMSPre``). Residual-stream *reader* indices (see ``attribution.py``): the
stream before block ``l`` is read at ``2l + 1``, after its attention at ``2l + 2`` (sequential
blocks only), after the last block at ``2 n_layers + 1``; index 0 is the embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.circuits.graph.dictionaries import (
    Dictionaries,
    as_dictionaries,
    write_into,
)
from tcspec.dictionaries.clt import CLT
from tcspec.dictionaries.coders import Coder
from tcspec.models.hooks import full_name, relative_name
from tcspec.models.load import NORM_CENTRES

Transcoders = dict[int, Coder] | CLT | Dictionaries
"""What the study traces through: transcoders by layer, or a CLT (either may come wrapped)."""

BLOCK_HOOKS_TRACED = (
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_pattern",
    "hook_mlp_out",
    "hook_resid_pre",
    "hook_resid_mid",
    "ln2.hook_scale",
    "hook_mlp_in",
)
"""Hooks of every block a trace keeps (those a model lacks are skipped)."""


def check_transcoders(
    model: HookedTransformer, coders: Transcoders, field_name: str = "coders"
) -> None:
    """``ValueError`` unless every coder is a transcoder that stands in for its layer's MLP
    (or the CLT spans layers of the model, reading and writing its width)."""
    if isinstance(coders, dict) and not coders:
        raise ValueError(f"{field_name}: no transcoders given")
    norm = model.cfg.normalization_type
    if norm not in NORM_CENTRES:
        raise ValueError(f"the model's normalization {norm!r} is not folded; load it with fold_ln")
    try:
        as_dictionaries(coders).check_fits(model)
    except ValueError as e:
        raise ValueError(f"{field_name}: {e}") from e


@dataclass
class Trace:
    """What one forward pass over ``tokens`` leaves for attribution (each per layer)."""

    tokens: Tensor  # [n, seq]
    embed: Tensor  # [n, seq, d]: token + position embedding
    ln1_scale: list[Tensor]  # [n, seq]
    ln1_normalized: list[Tensor]  # [n, seq, d]
    pattern: list[Tensor]  # [n, n_heads, seq (dst), seq (src)]
    mlp_out: list[Tensor]  # [n, seq, d]
    resid: dict[int, Tensor]  # reader index -> the residual stream read there [n, seq, d]
    final_scale: Tensor  # [n, seq]
    coder_scale: dict[int, Tensor]  # source layer -> [n, seq]: residual stream -> coder input
    coder_centred: dict[int, bool]  # source layer ->
    coder_in: dict[int, Tensor]  # source layer -> [n, seq, d]
    z: dict[int, Tensor]  # source layer -> [n, seq, d_sae]
    tc_out: dict[int, Tensor]  # output layer -> [n, seq, d]: the reconstruction of mlp_out
    frozen: dict[str, Tensor]  # hook name -> value of every norm scale and attention pattern


def _traced_names(model: HookedTransformer, d: Dictionaries) -> set[str]:
    L = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed", full_name(L - 1, "hook_resid_post")}
    names.add("ln_final.hook_scale")
    names |= {full_name(li, h) for li in range(L) for h in BLOCK_HOOKS_TRACED}
    names |= {d.in_hook(li) for li in d.layers}
    return names


def _residual_readers(model: HookedTransformer, cache) -> dict[int, Tensor]:
    """Reader index -> the residual stream read there [n, seq, d]."""
    L = model.cfg.n_layers
    resid = {
        0: cache[full_name(0, "hook_resid_pre")],
        2 * L + 1: cache[full_name(L - 1, "hook_resid_post")],
    }
    for li in range(L):
        resid[2 * li + 1] = cache[full_name(li, "hook_resid_pre")]
        if not model.cfg.parallel_attn_mlp:
            resid[2 * li + 2] = cache[full_name(li, "hook_resid_mid")]
    return resid


@torch.no_grad()
def trace(model: HookedTransformer, tokens: Tensor, coders: Transcoders) -> Trace:
    """Run ``model`` on ``tokens`` [n, seq] and keep what attribution needs; the transcoders
    are evaluated on the model's own MLP inputs (not spliced in: their error is a node)."""
    check_transcoders(model, coders)
    d = as_dictionaries(coders)
    L, norm = model.cfg.n_layers, model.cfg.normalization_type
    names = _traced_names(model, d)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    n, seq = tokens.shape

    def scale(name: str) -> Tensor:
        return cache[name][..., 0] if name in cache else torch.ones(n, seq, device=tokens.device)

    embed = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in cache else 0)
    resid = _residual_readers(model, cache)
    t = Trace(
        tokens=tokens,
        embed=embed,
        ln1_scale=[scale(full_name(li, "ln1.hook_scale")) for li in range(L)],
        ln1_normalized=[
            _get(cache, full_name(li, "ln1.hook_normalized"), resid[2 * li + 1]) for li in range(L)
        ],
        pattern=[cache[full_name(li, "attn.hook_pattern")] for li in range(L)],
        mlp_out=[cache[full_name(li, "hook_mlp_out")] for li in range(L)],
        resid=resid,
        final_scale=scale("ln_final.hook_scale"),
        coder_scale={},
        coder_centred={},
        coder_in={},
        z={},
        tc_out={},
        frozen={k: v for k, v in cache.items() if k.endswith(("hook_scale", "hook_pattern"))},
    )
    for li in d.layers:
        x = cache[d.in_hook(li)].to(d.dtype)  # [n, seq, d]
        t.coder_in[li], t.z[li] = x, d.activate(li, d.pre_acts(li, x))
        if relative_name(d.in_hook(li), li) == "ln2.hook_normalized":
            t.coder_scale[li] = scale(full_name(li, "ln2.hook_scale"))
            t.coder_centred[li] = NORM_CENTRES[norm]
        else:
            t.coder_scale[li] = torch.ones(n, seq, device=tokens.device)
            t.coder_centred[li] = False
    for m in d.layers:
        if d.writes_to(m):
            y = d.finish(m, write_into(d, t.z, m), t.coder_in[m])
            t.tc_out[m] = y.to(embed.dtype)
    return t


def _get(cache, name: str, default: Tensor) -> Tensor:
    return cache[name] if name in cache else default


def total_feature_attributions(
    model: HookedTransformer, coders: Transcoders, tr: Trace, weights: Tensor, pos: int
) -> dict[int, Tensor]:
    """Attribution of every transcoder feature at every position to the logit root
    ``W_U w`` at ``pos`` through *all* paths at once: ``z_i * sum_m f_dec_i[m] . d root /
    d mlp_out[m]`` over the layers m it writes, in the model with norm scales, attention
    patterns, active features and transcoder errors frozen (the sum of the feature's path
    attributions over every path). One backward pass; weights [n, d_vocab]. Returns source
    layer -> [n, seq, d_sae]."""
    d = as_dictionaries(coders)
    outs = [m for m in d.layers if d.writes_to(m)]
    probes = {m: torch.zeros_like(tr.mlp_out[m], requires_grad=True) for m in outs}
    hooks = [(name, lambda act, hook, v=value: v) for name, value in tr.frozen.items()]
    hooks += splice_hooks(
        d, outs, after=lambda m, y: y + (tr.mlp_out[m] - tr.tc_out[m]) + probes[m]
    )
    with torch.enable_grad():
        logits = model.run_with_hooks(tr.tokens, fwd_hooks=hooks)  # [n, seq, d_vocab]
        root = (logits[:, pos] * weights.to(logits.dtype)).sum()
        grads = dict(zip(outs, torch.autograd.grad(root, [probes[m] for m in outs])))
    out = {}
    for li in d.layers:
        back = None  # [n, seq, d_sae]: the gradient pulled back through li's decoders
        for m, W in d.decoders(li).items():
            g = grads[m].to(W.dtype) @ W.T
            back = g if back is None else back + g
        out[li] = (tr.z[li] * back).detach()
    return out


def splice_hooks(
    coders: Transcoders,
    outputs: Iterable[int],
    where: slice = slice(None),
    keep: tuple[int, Tensor] | None = None,
    after: Callable[[int, Tensor], Tensor] | None = None,
) -> list:
    """Hooks putting the dictionaries' reconstruction in place of the MLP outputs of the
    layers ``outputs`` at the positions ``where``: every source layer writing there is
    encoded from its live input. ``keep = (layer, mask [d_sae])`` zeroes that source layer's
    features outside the mask; ``after(m, y)`` edits layer m's reconstruction (in the
    model's dtype) before it is written."""
    d, chosen = as_dictionaries(coders), set(outputs)
    outputs = [m for m in d.layers if m in chosen and d.writes_to(m)]
    sources = sorted({s for m in outputs for s in d.sources(m)})
    store: dict[int, Tensor] = {}  # source layer -> its input at `where`
    z: dict[int, Tensor] = {}  # source layer -> its features there [n, p, d_sae]

    def read(act, hook, li):
        store[li] = act[:, where].to(d.dtype)
        z[li] = d.activate(li, d.pre_acts(li, store[li]))
        if keep is not None and keep[0] == li:
            z[li] = z[li] * keep[1]

    def replace(act, hook, m):
        y = d.finish(m, write_into(d, z, m), store[m]).to(act.dtype)
        y = after(m, y) if after is not None else y
        if where == slice(None):
            return y
        act = act.clone()
        act[:, where] = y
        return act

    hooks = [(d.in_hook(li), lambda act, hook, li=li: read(act, hook, li)) for li in sources]
    hooks += [
        (full_name(m, "hook_mlp_out"), lambda a, hook, m=m: replace(a, hook, m)) for m in outputs
    ]
    return hooks
