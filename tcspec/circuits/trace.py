"""One forward pass over a batch of prompts that keeps what attribution needs (`Trace`),
the check that the transcoders can stand in for their MLPs, and the attribution of every
feature through all paths at once (one backward pass through the frozen model).

The model is a processed TransformerLens ``HookedTransformer`` (``fold_ln``: every norm is
``LNPre`` or ``RMSPre``). Residual-stream *reader* indices (see ``attribution.py``): the
stream before block ``l`` is read at ``2l + 1``, after its attention at ``2l + 2`` (sequential
blocks only), after the last block at ``2 n_layers + 1``; index 0 is the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.coders import Coder
from tcspec.hooks import TRANSCODER_IN, full_name, hooks_replacing_mlp, relative_name

# normalization type of a processed model -> whether it centres its input
NORM_CENTRES: dict[str | None, bool] = {"LNPre": True, "RMSPre": False, None: False}
TRANSCODER_KINDS = ("transcoder", "skip_transcoder")
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


def coder_in_hook(coder: Coder, layer: int) -> str:
    """The block-relative hook a transcoder reads (the paper's ``ln2.hook_normalized`` when
    its config names none)."""
    return relative_name(coder.cfg.in_hook or TRANSCODER_IN, layer)


def coder_in_name(coder: Coder, layer: int) -> str:
    """The full hook name a transcoder reads: ``blocks.{layer}.{in hook}``."""
    return full_name(layer, coder_in_hook(coder, layer))


def check_transcoders(
    model: HookedTransformer, coders: dict[int, Coder], field_name: str = "coders"
) -> None:
    """``ValueError`` unless every coder is a transcoder that stands in for its layer's MLP."""
    if not coders:
        raise ValueError(f"{field_name}: no transcoders given")
    norm = model.cfg.normalization_type
    if norm not in NORM_CENTRES:
        raise ValueError(f"the model's normalization {norm!r} is not folded; load it with fold_ln")
    for layer, coder in coders.items():
        _check_transcoder(model, layer, coder, f"{field_name}: layer {layer}")


def _check_transcoder(model: HookedTransformer, layer: int, coder: Coder, where: str) -> None:
    cfg = coder.cfg
    if cfg.kind not in TRANSCODER_KINDS:
        raise ValueError(f"{where}: a {cfg.kind} is not a transcoder; circuits need transcoders")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"{where}: the model has layers 0..{model.cfg.n_layers - 1}")
    if cfg.layer is not None and cfg.layer != layer:
        raise ValueError(f"{where}: the transcoder was trained for layer {cfg.layer}")
    if cfg.in_hook is None or cfg.out_hook is None:
        raise ValueError(f"layer {layer}: the transcoder's config names no hooks")
    try:
        in_hook, out_hook = relative_name(cfg.in_hook, layer), relative_name(cfg.out_hook, layer)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if not hooks_replacing_mlp(in_hook, out_hook):
        raise ValueError(
            f"{where}: a transcoder from {cfg.in_hook} to {cfg.out_hook} does not replace the MLP"
        )
    if model.cfg.parallel_attn_mlp and in_hook == "hook_resid_mid":
        raise ValueError(
            f"{where}: a parallel block has no hook_resid_mid; use ln2.hook_normalized"
        )
    if cfg.d_in != model.cfg.d_model or cfg.d_out != model.cfg.d_model:
        raise ValueError(
            f"{where}: d_in/d_out {cfg.d_in}/{cfg.d_out} != d_model {model.cfg.d_model}"
        )


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
    coder_scale: dict[int, Tensor]  # [n, seq]: scale between residual stream and coder input
    coder_centred: dict[int, bool]
    coder_in: dict[int, Tensor]  # [n, seq, d]
    z: dict[int, Tensor]  # [n, seq, d_sae]
    tc_out: dict[int, Tensor]  # [n, seq, d]
    frozen: dict[str, Tensor]  # hook name -> value of every norm scale and attention pattern


def _traced_names(model: HookedTransformer, coders: dict[int, Coder]) -> set[str]:
    L = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed", full_name(L - 1, "hook_resid_post")}
    names.add("ln_final.hook_scale")
    names |= {full_name(li, h) for li in range(L) for h in BLOCK_HOOKS_TRACED}
    names |= {coder_in_name(c, li) for li, c in coders.items()}
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
def trace(model: HookedTransformer, tokens: Tensor, coders: dict[int, Coder]) -> Trace:
    """Run ``model`` on ``tokens`` [n, seq] and keep what attribution needs; the transcoders
    are evaluated on the model's own MLP inputs (not spliced in: their error is a node)."""
    check_transcoders(model, coders)
    L, norm = model.cfg.n_layers, model.cfg.normalization_type
    names = _traced_names(model, coders)
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
    for li, c in coders.items():
        in_hook = coder_in_hook(c, li)
        x = cache[full_name(li, in_hook)].to(c.W_enc.dtype)  # [n, seq, d]
        y, z = c(x)
        t.coder_in[li], t.z[li], t.tc_out[li] = x, z, y.to(embed.dtype)
        if in_hook == "ln2.hook_normalized":
            t.coder_scale[li] = scale(full_name(li, "ln2.hook_scale"))
            t.coder_centred[li] = NORM_CENTRES[norm]
        else:
            t.coder_scale[li] = torch.ones(n, seq, device=tokens.device)
            t.coder_centred[li] = False
    return t


def _get(cache, name: str, default: Tensor) -> Tensor:
    return cache[name] if name in cache else default


def total_feature_attributions(
    model: HookedTransformer, coders: dict[int, Coder], tr: Trace, weights: Tensor, pos: int
) -> dict[int, Tensor]:
    """Attribution of every transcoder feature at every position to the logit root
    ``W_U w`` at ``pos`` through *all* paths at once: ``z_i * f_dec_i . d root / d mlp_out``
    in the model with norm scales, attention patterns, active features and transcoder
    errors frozen (the sum of the feature's path attributions over every path). One backward
    pass; weights [n, d_vocab]. Returns layer -> [n, seq, d_sae]."""
    probes = {li: torch.zeros_like(tr.mlp_out[li], requires_grad=True) for li in coders}
    store: dict[int, Tensor] = {}
    hooks = [(name, lambda act, hook, v=value: v) for name, value in tr.frozen.items()]
    for li, c in coders.items():
        hooks.append((coder_in_name(c, li), lambda act, hook, li=li: store.__setitem__(li, act)))

        def splice(act, hook, li=li, c=c):
            y = c(store[li].to(c.W_enc.dtype))[0].to(act.dtype)
            return y + (tr.mlp_out[li] - tr.tc_out[li]) + probes[li]

        hooks.append((full_name(li, "hook_mlp_out"), splice))
    with torch.enable_grad():
        logits = model.run_with_hooks(tr.tokens, fwd_hooks=hooks)  # [n, seq, d_vocab]
        root = (logits[:, pos] * weights.to(logits.dtype)).sum()
        grads = torch.autograd.grad(root, [probes[li] for li in coders])
    return {
        li: (tr.z[li] * (g.to(c.W_dec.dtype) @ c.W_dec.T)).detach()  # [n, seq, d_sae]
        for (li, c), g in zip(coders.items(), grads)
    }
