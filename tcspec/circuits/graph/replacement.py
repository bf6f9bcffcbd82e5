"""The local replacement model of one prompt, in which an attribution graph is exact.

Take a TransformerLens ``HookedTransformer`` whose MLPs are explained by transcoders (one per
layer, some layers may have none) and run it on one prompt. Hold fixed, at their values on
that prompt: every norm's scale (``*.hook_scale``), every attention pattern
(``attn.hook_pattern``) and each layer's MLP output *except* a skip transcoder's linear path.
What is left is affine in what writes the residual stream:

    mlp_out[l] = sum_f z[l, f] W_dec[f] + b_out + x[l] W_skip + err[l]      (x[l] live)
    err[l]     = mlp_out[l] - (z[l] W_dec + b_out + x[l] W_skip)             (on the prompt)

so a feature's pre-activation, or a logit, is ``bias + sum_s A[t, s]`` over the sources ``s``
(active features, error vectors and token embeddings), with ``A[t, s]`` the source's value
pushed through the frozen model and read by the target. A layer without a transcoder is all
error (``err[l] = mlp_out[l]``). Positional embeddings and every bias are bias terms.

A cross-layer transcoder (`tcspec.clt`) takes the place of the per-layer transcoders the same
way: ``z[l, f] W_dec[f]`` becomes the sum of feature ``(l, f)``'s writes into every layer
``m >= l`` (`tcspec.circuits.graph.dictionaries`). Functions here take either (per-layer
transcoders by layer, or a CLT).

The model must be pre-norm (GPT-2-style, or parallel attention and MLP as in Pythia:
``cfg.parallel_attn_mlp``); `check_supported` refuses what this cannot trace exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tcspec.circuits.graph.dictionaries import (
    Dictionaries,
    as_dictionaries,
    write_into,
)
from tcspec.models.hooks import full_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

FROZEN_SUFFIXES = ("hook_scale", "attn.hook_pattern")


def check_supported(model: HookedTransformer, coders: Dictionaries) -> None:
    """``ValueError`` naming what an attribution graph cannot trace exactly."""
    cfg = model.cfg
    if cfg.attn_only:
        raise ValueError("the model is attention-only: there is no MLP for a transcoder")
    if cfg.use_normalization_before_and_after:
        raise ValueError(
            "the model normalises after each sublayer (post-norm); attribution graphs "
            "support pre-norm models only"
        )
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"{cfg.original_architecture} is a post-norm model; attribution graphs "
            "support pre-norm models only"
        )
    if cfg.output_logits_soft_cap is not None and cfg.output_logits_soft_cap > 0:
        raise ValueError(
            f"the model softcaps its logits (output_logits_soft_cap="
            f"{cfg.output_logits_soft_cap}); a softcapped logit is not linear in the residual"
        )
    coders.check_fits(model)


@dataclass(frozen=True)
class Prompt:
    """One prompt run through the model, with what the replacement model holds fixed."""

    tokens: Tensor  # [seq] token ids
    frozen: dict[str, Tensor]  # hook name -> norm scale or attention pattern, leading dim 1
    embed: Tensor  # [seq, d_model]: token embeddings (hook_embed)
    coder_in: dict[int, Tensor]  # layer -> [seq, d_in]: the transcoder's input
    pre: dict[int, Tensor]  # layer -> [seq, d_sae]: pre-activations
    z: dict[int, Tensor]  # layer -> [seq, d_sae]: activations
    decoded: Tensor  # [n_layers, seq, d_model]: z W_dec + b_out (0 without a transcoder)
    error: Tensor  # [n_layers, seq, d_model]: mlp_out - reconstruction
    logits: Tensor  # [seq, d_vocab]

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


@torch.no_grad()
def run_prompt(model: HookedTransformer, coders, tokens: Tensor) -> Prompt:
    """Run ``model`` on ``tokens`` [seq] and evaluate the transcoders (by layer, or a CLT)
    on its own MLP inputs."""
    d = as_dictionaries(coders)
    check_supported(model, d)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one prompt [seq], got shape {tuple(tokens.shape)}")
    L = model.cfg.n_layers
    ins = {d.in_hook(li): li for li in d.layers}
    outs = {full_name(li, "hook_mlp_out") for li in range(L)}

    def keep(name: str) -> bool:
        return name.endswith(FROZEN_SUFFIXES) or name in ins or name in outs or name == "hook_embed"

    logits, cache = model.run_with_cache(tokens[None], names_filter=keep)
    missing = [n for n in ins if n not in cache]
    if missing:
        raise ValueError(f"the model never ran hooks {missing} that the transcoders read")
    mlp_out = torch.stack([cache[full_name(li, "hook_mlp_out")][0] for li in range(L)])
    decoded = torch.zeros_like(mlp_out)  # [L, seq, d]
    skip = torch.zeros_like(mlp_out)
    coder_in, pre, z = {}, {}, {}
    for li in d.layers:
        x = cache[d.in_hook(li)][0]  # [seq, d_in]
        coder_in[li], pre[li] = x, d.pre_acts(li, x.to(d.dtype))
        z[li] = d.activate(li, pre[li])
    for m, acc in _writes(d, z).items():
        decoded[m] = d.finish(m, acc, None).to(mlp_out.dtype)
        if d.has_skip(m):
            skip[m] = d.skip(m, coder_in[m].to(d.dtype)).to(mlp_out.dtype)
    frozen = {k: v.detach() for k, v in cache.items() if k.endswith(FROZEN_SUFFIXES)}
    return Prompt(
        tokens=tokens,
        frozen=frozen,
        embed=cache["hook_embed"][0],
        coder_in=coder_in,
        pre=pre,
        z=z,
        decoded=decoded,
        error=mlp_out - decoded - skip,
        logits=logits[0],
    )


def _writes(d: Dictionaries, z: dict[int, Tensor]) -> dict[int, Tensor]:
    """Output layer -> the features' writes there (`write_into`)."""
    return {m: write_into(d, z, m) for m in d.layers if d.writes_to(m)}


@dataclass
class Live:
    """The tensors of one batched forward pass through the replacement model that
    gradients are taken at: each is [batch, seq, width]."""

    embed: Tensor  # token embeddings (a leaf)
    coder_in: dict[int, Tensor]  # layer -> transcoder input (read-out point of its features)
    mlp_out: list[Tensor]  # per layer: what the MLP writes (injection point of its sources)
    logits: Tensor | None = None


@dataclass(frozen=True)
class Scales:
    """Multipliers of each source in `replacement_forward`: [batch, ...] each. All ones give
    the prompt's own values; zeros switch the sources off (what is left is the bias)."""

    features: dict[int, Tensor]  # layer -> [batch, seq, d_sae]
    errors: Tensor  # [batch, n_layers, seq]
    embed: Tensor  # [batch, seq]


def replacement_hooks(
    model: HookedTransformer,
    coders,
    prompt: Prompt,
    batch: int,
    live: Live,
    scales: Scales | None = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that turn ``model`` into the replacement model of ``prompt`` for a batch
    of ``batch`` copies; they record the gradient points in ``live``. With ``scales`` each
    source is multiplied by its scale (for checks); without, they keep their values."""
    hooks: list[tuple[str, Callable]] = []
    for name, value in prompt.frozen.items():
        hooks.append((name, lambda act, hook, v=value: v.expand(act.shape)))

    def embed_hook(act, hook):
        e = prompt.embed.expand(batch, *prompt.embed.shape).clone()
        if scales is not None:
            e = e * scales.embed[..., None].to(e.dtype)
        live.embed = e.requires_grad_(scales is None)
        return live.embed

    hooks.append(("hook_embed", embed_hook))
    d = as_dictionaries(coders)
    for li in d.layers:
        hooks.append((d.in_hook(li), lambda act, hook, li=li: _store(live.coder_in, li, act)))
    for li in range(model.cfg.n_layers):
        hooks.append((full_name(li, "hook_mlp_out"), _mlp_out_hook(d, prompt, li, live, scales)))
    return hooks


def _store(store: dict, key, act: Tensor) -> Tensor:
    store[key] = act
    return act


def _mlp_out_hook(d: Dictionaries, prompt: Prompt, li: int, live: Live, scales: Scales | None):
    def hook(act, hook):
        batch = act.shape[0]
        if scales is None:
            out = (prompt.decoded[li] + prompt.error[li]).expand(batch, -1, -1).clone()
        else:
            out = prompt.error[li] * scales.errors[:, li, :, None].to(act.dtype)
            if d.writes_to(li):
                zs = {  # only the layers writing here: this runs per layer per batch
                    s: prompt.z[s] * scales.features[s].to(prompt.z[s].dtype) for s in d.sources(li)
                }
                out = out + d.finish(li, write_into(d, zs, li), None).to(act.dtype)
        if d.has_skip(li):
            x = live.coder_in[li]
            out = out + d.skip(li, x.to(d.dtype)).to(act.dtype)
        elif scales is None:
            out.requires_grad_(True)
        live.mlp_out[li] = out
        return out

    return hook


def last_logits(model: HookedTransformer, prompt: Prompt, resid: Tensor) -> Tensor:
    """The last position's logits from the final residual stream [batch, seq, d_model], the
    final norm's scale frozen: [batch, 1, d_vocab] (the unembedding of one position only)."""
    hooks = []
    if "ln_final.hook_scale" in prompt.frozen:
        scale = prompt.frozen["ln_final.hook_scale"][:, -1:]
        hooks.append(("ln_final.hook_scale", lambda act, hook: scale.expand(act.shape)))
    x = resid[:, -1:]
    with model.hooks(fwd_hooks=hooks):
        if model.cfg.normalization_type is not None:
            x = model.ln_final(x)
        return model.unembed(x)


def replacement_forward(
    model: HookedTransformer, coders, prompt: Prompt, scales: Scales
) -> tuple[dict[int, Tensor], Tensor]:
    """Values of the replacement model with every source scaled: (pre-activations, layer ->
    [batch, seq, d_sae]; logits [batch, seq, d_vocab]). Affine in the scales."""
    batch = int(scales.embed.shape[0])
    live = Live(embed=prompt.embed, coder_in={}, mlp_out=[None] * model.cfg.n_layers)
    hooks = replacement_hooks(model, coders, prompt, batch, live, scales)
    toks = prompt.tokens.expand(batch, -1)
    d = as_dictionaries(coders)
    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=hooks)
        pre = {li: d.pre_acts(li, live.coder_in[li].to(d.dtype)) for li in d.layers}
    return pre, logits
