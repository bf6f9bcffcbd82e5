"""Evaluate dictionaries spliced into a TransformerLens model: sparsity, fidelity, CE and KL.

`evaluate_coders(model, coders, tokens, batch_contexts, splice)`:

- ``splice="each"``: every (coder, layer) on its own. The coder's output hook
  (``blocks.L.hook_mlp_out`` for a transcoder or an MLP-out SAE) is replaced by the coder's
  prediction from the clean run's input hook (``blocks.L.ln2.hook_normalized``; for an SAE
  the hook it reconstructs). Sparsity and fidelity metrics come from the captured
  (y, y_hat, z); next-token CE from the original model, the replaced model, and the output
  hook zero-ablated and mean-ablated; KL(original || replaced). Returns one dict per coder.
- ``splice="all"``: all coders at once (one per layer), each reading its input from the
  jointly patched run, against the same output hooks all zero- or mean-ablated at once.
  Returns one dict of CE/KL metrics.

Formulas are in `tcspec.metrics`. Positions: a position is *counted* unless its token is in
`exclude_tokens` (the BOS convention `exclude` passes the BOS id, as SAELens's
`exclude_special_tokens` does: by token identity, so a BOS inside a packed row is excluded
too). The dictionary is spliced only at counted positions (an excluded position keeps its
original activation); sparsity and fidelity metrics cover the counted positions; CE covers
the counted positions but the last of each context (it has no next token); KL covers every
counted position, the last included (SAELens's convention). Zero-ablation sets every
position to 0 (BOS too, as SAELens does); the mean used for mean-ablation is the hook's mean
over the counted positions of all eval contexts, computed in a first pass (or passed in as
`ablation_means`).

Work per batch: one clean forward caching only the hooks needed, one patched forward per
coder, two (zero, mean) per distinct ablated hook. A patched forward whose hook is a
``hook_mlp_out`` resumes from the next block (the residual stream after block L is the clean
one plus the change to the MLP output) instead of re-running the blocks before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from tcspec.hooks import full_name
from tcspec.metrics import (
    Accumulator,
    all_logprobs,
    ce_from_logprobs,
    kl_from_logprobs,
    next_token_ce,
)

if TYPE_CHECKING:
    from tcspec.coders import Coder


# ---------------------------------------------------------------------- small helpers
def _check_tokens(tokens: torch.Tensor | np.ndarray, model: HookedTransformer) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_rows, ctx]; got shape {tuple(tokens.shape)}")
    n_rows, ctx = tokens.shape
    if n_rows == 0 or ctx < 2:
        raise ValueError(f"need at least one context of at least 2 tokens; got {n_rows} x {ctx}")
    if ctx > model.cfg.n_ctx:
        raise ValueError(f"contexts of {ctx} tokens exceed the model's n_ctx {model.cfg.n_ctx}")


def _batches(
    tokens: torch.Tensor | np.ndarray, batch_contexts: int, device: torch.device | str
) -> Iterator[torch.Tensor]:
    """Consecutive row batches of `tokens` as int64 tensors on `device`: [<=batch, ctx]."""
    for start in range(0, tokens.shape[0], batch_contexts):
        rows = tokens[start : start + batch_contexts]
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        yield rows.to(device=device, dtype=torch.long)


def _n_batches(tokens: torch.Tensor | np.ndarray, batch_contexts: int) -> int:
    return -(-tokens.shape[0] // batch_contexts)


def keep_mask(tokens: torch.Tensor, exclude_tokens: Sequence[int]) -> torch.Tensor:
    """Counted positions: True where the token is not in `exclude_tokens`. [B, T] bool."""
    if not exclude_tokens:
        return torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    excluded = torch.as_tensor(list(exclude_tokens), device=tokens.device)
    return ~torch.isin(tokens, excluded)


def _update_losses(
    acc: Accumulator,
    mask: torch.Tensor,
    logp: torch.Tensor,
    logq: torch.Tensor,
    batch: torch.Tensor,
    ablated: dict[str, torch.Tensor],
) -> None:
    """CE and KL of one batch over the counted positions. logp, logq: [B, T, V] log-probs of
    the original and replaced runs; ablated: zero/mean-ablated CE [B, T-1] and the zero
    ablation's KL [B, T]."""
    m_ce = mask[:, :-1]  # a prediction counts when made from a counted token
    acc.update_ce(
        original=ce_from_logprobs(logp[:, :-1], batch)[m_ce],
        replaced=ce_from_logprobs(logq[:, :-1], batch)[m_ce],
        zero_ablated=ablated["zero_ablated"][m_ce],
        mean_ablated=ablated["mean_ablated"][m_ce],
    )
    acc.update_kl(kl=kl_from_logprobs(logp, logq)[mask], kl_zero_ablated=ablated["kl_zero"][mask])


def _hook(model: HookedTransformer, name: str, layer: int) -> str:
    """A coder's hook as a full TransformerLens name: block-relative names get `blocks.L.`."""
    full = name if name in model.hook_dict else full_name(layer, name)
    if full not in model.hook_dict:
        raise ValueError(f"the model has no hook `{full}`")
    return full


def _coder_hooks(model: HookedTransformer, coder: Coder, layer: int) -> tuple[str, str]:
    """(input hook, output hook) of a coder spliced at `layer`, as full names."""
    cfg = getattr(coder, "cfg", None) or coder.config
    if cfg.layer is not None and cfg.layer != layer:
        raise ValueError(f"coder was built for layer {cfg.layer} but is spliced at {layer}")
    if cfg.in_hook is None or cfg.out_hook is None:
        raise ValueError(f"a {cfg.kind} without in_hook/out_hook in its config cannot be spliced")
    return _hook(model, cfg.in_hook, layer), _hook(model, cfg.out_hook, layer)


def _apply(coder: Coder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `coder` on `x` in the coder's dtype/device; y_hat comes back like `x`."""
    p = next(iter(coder.parameters()), None)
    x_in = x if p is None else x.to(device=p.device, dtype=p.dtype)
    y_hat, z = coder(x_in)  # [B, T, d_out], [B, T, d_sae]
    return y_hat.to(device=x.device, dtype=x.dtype), z


def _resume_layer(model: HookedTransformer, hook: str) -> int | None:
    """L when `hook` is `blocks.L.hook_mlp_out` and a patched run may resume at block L + 1
    from `blocks.L.hook_resid_post` plus the change to the MLP output; else None."""
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_mlp_out":
        return None
    if model.cfg.positional_embedding_type == "shortformer" or model.cfg.n_devices > 1:
        return None
    return int(parts[1])


def _patched_logits(
    model: HookedTransformer,
    tokens: torch.Tensor,
    cache: dict[str, torch.Tensor],
    hook: str,
    value: torch.Tensor,
) -> torch.Tensor:
    """Logits with activation `hook` replaced by `value` (broadcastable to it): [B, T, V].

    Uses `cache` (the clean run, holding `hook` and, when resuming, the block's resid_post).
    """
    layer = _resume_layer(model, hook)
    if layer is not None:
        # resid_post_L = (rest of block L) + mlp_out_L, so swapping mlp_out is a shift
        resid = cache[f"blocks.{layer}.hook_resid_post"] + (value - cache[hook])  # [B, T, d]
        return model(resid, start_at_layer=layer + 1)
    patch = value.expand_as(cache[hook])

    def replace(act: torch.Tensor, hook) -> torch.Tensor:
        return patch.to(act.dtype)

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])


# ---------------------------------------------------------------------- ablation means
@torch.inference_mode()
def hook_means(
    model: HookedTransformer,
    tokens: torch.Tensor | np.ndarray,
    hooks: Sequence[str],
    batch_contexts: int,
    progress: bool = True,
    exclude_tokens: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Mean vector of each full hook name over the counted positions (tokens not in
    `exclude_tokens`) of all contexts: {hook: [d]}.

    Runs the model only as far as the deepest hook needs; sums in float64.
    """
    _check_tokens(tokens, model)
    hooks = list(dict.fromkeys(hooks))
    for h in hooks:
        if h not in model.hook_dict:
            raise ValueError(f"the model has no hook `{h}`")
    layers = [int(h.split(".")[1]) for h in hooks if h.startswith("blocks.")]
    stop = max(layers) + 1 if len(layers) == len(hooks) else None
    sums: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    batches = _batches(tokens, batch_contexts, model.cfg.device)
    total = _n_batches(tokens, batch_contexts)
    for batch in tqdm(batches, total=total, desc="hook means", disable=not progress):
        _, cache = model.run_with_cache(batch, names_filter=hooks, stop_at_layer=stop)
        mask = keep_mask(batch, exclude_tokens)  # [B, T]
        for h in hooks:
            act = cache[h][mask]  # [n, d]
            dtypes[h] = act.dtype
            sums[h] = sums.get(h, 0) + act.double().sum(0)  # [d]
        n += int(mask.sum())
    return {h: (s / n).to(dtypes[h]) for h, s in sums.items()}


# ---------------------------------------------------------------------- evaluation
def evaluate_coders(
    model: HookedTransformer,
    coders: Sequence[tuple[Coder, int]],
    tokens: torch.Tensor | np.ndarray,
    batch_contexts: int,
    splice: Literal["each", "all"] = "each",
    progress: bool = True,
    ablation_means: dict[str, torch.Tensor] | None = None,
    exclude_tokens: Sequence[int] = (),
) -> list[dict] | dict:
    """Metrics of coders spliced into `model` on `tokens` [n_rows, ctx] (see module doc).

    `coders` holds (coder, layer) pairs; a coder's config (`coder.cfg`, or `coder.config`)
    names its `in_hook` and `out_hook`, full (`blocks.8.ln2.hook_normalized`) or relative to
    the block (`ln2.hook_normalized`). `ablation_means` optionally gives
    precomputed mean-ablation vectors by full hook name (see `hook_means`); missing ones are
    computed in a first pass. `exclude_tokens`: token ids whose positions are not spliced
    and count in no metric (the BOS convention `exclude`). Returns a list of dicts (`each`,
    in the order of `coders`) or one dict (`all`); each holds the metrics of
    `tcspec.metrics` that apply, plus `n_tokens` (positions the fidelity metrics cover),
    `n_ce_tokens` and `n_kl_tokens`.
    """
    if not coders:
        raise ValueError("no coders to evaluate")
    if batch_contexts < 1:
        raise ValueError(f"batch_contexts must be positive; got {batch_contexts}")
    if splice not in ("each", "all"):
        raise ValueError(f"splice must be `each` or `all`; got `{splice}`")
    _check_tokens(tokens, model)
    hooks = [_coder_hooks(model, c, layer) for c, layer in coders]  # [(in, out)]
    out_hooks = list(dict.fromkeys(out for _, out in hooks))
    means = {h: v.to(model.cfg.device) for h, v in (ablation_means or {}).items()}
    missing = [h for h in out_hooks if h not in means]
    if missing:
        means |= hook_means(model, tokens, missing, batch_contexts, progress, exclude_tokens)
    run = _Run(model, tokens, batch_contexts, means, tuple(exclude_tokens), progress)
    if splice == "each":
        return _evaluate_each(run, coders, hooks)
    layers = [layer for _, layer in coders]
    if len(set(layers)) != len(layers) or len(set(out_hooks)) != len(out_hooks):
        raise ValueError(f"splice `all` takes one coder per layer; got layers {layers}")
    return _evaluate_all(run, coders, hooks)


@dataclass(frozen=True)
class _Run:
    """What every evaluation pass shares: the model, the eval tokens and conventions."""

    model: HookedTransformer
    tokens: torch.Tensor | np.ndarray
    batch_contexts: int
    means: dict[str, torch.Tensor]
    exclude_tokens: tuple[int, ...]
    progress: bool

    def batches(self, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens [B, T], counted-position mask [B, T]) per batch, with a progress bar."""
        batches = _batches(self.tokens, self.batch_contexts, self.model.cfg.device)
        total = _n_batches(self.tokens, self.batch_contexts)
        for batch in tqdm(batches, total=total, desc=desc, disable=not self.progress):
            yield batch, keep_mask(batch, self.exclude_tokens)


def _finish(acc: Accumulator) -> dict:
    out = acc.compute() | {"n_ce_tokens": acc.n_ce, "n_kl_tokens": acc.n_kl}
    return out | ({"n_tokens": acc.n_tokens} if acc.n_tokens else {})


@torch.inference_mode()
def _evaluate_each(
    run: _Run, coders: Sequence[tuple[Coder, int]], hooks: list[tuple[str, str]]
) -> list[dict]:
    model = run.model
    out_hooks = list(dict.fromkeys(out for _, out in hooks))
    needed = {h for pair in hooks for h in pair}
    resume_layers = [_resume_layer(model, h) for h in out_hooks]
    needed |= {f"blocks.{layer}.hook_resid_post" for layer in resume_layers if layer is not None}
    accs = [Accumulator() for _ in coders]
    for batch, mask in run.batches("evaluate"):
        logits, cache = model.run_with_cache(batch, names_filter=sorted(needed))  # [B, T, V]
        cache = {h: cache[h] for h in needed}
        logp = all_logprobs(logits)  # [B, T, V]
        ablated = {h: _ablations(run, batch, cache, h, logp) for h in out_hooks}
        for (coder, _), (in_hook, out_hook), acc in zip(coders, hooks, accs):
            y = cache[out_hook]  # [B, T, d_out]
            y_hat, z = _apply(coder, cache[in_hook])  # [B, T, d_out], [B, T, d_sae]
            acc.update(y[mask], y_hat[mask], z[mask])
            spliced = torch.where(mask[..., None], y_hat, y)  # excluded positions kept
            logq = all_logprobs(_patched_logits(model, batch, cache, out_hook, spliced))
            _update_losses(acc, mask, logp, logq, batch, ablated[out_hook])
    return [_finish(acc) for acc in accs]


def _ablations(
    run: _Run, batch: torch.Tensor, cache: dict, hook: str, logp: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Zero- and mean-ablated next-token CE [B, T-1] and the zero ablation's KL [B, T]."""
    zero_logits = _patched_logits(run.model, batch, cache, hook, torch.zeros_like(cache[hook]))
    mean_logits = _patched_logits(run.model, batch, cache, hook, run.means[hook])
    return {
        "zero_ablated": next_token_ce(zero_logits, batch),
        "mean_ablated": next_token_ce(mean_logits, batch),
        "kl_zero": kl_from_logprobs(logp, all_logprobs(zero_logits)),
    }


@torch.inference_mode()
def _evaluate_all(
    run: _Run, coders: Sequence[tuple[Coder, int]], hooks: list[tuple[str, str]]
) -> dict:
    model = run.model
    inputs: dict[str, torch.Tensor] = {}  # this run's activation at each coder's input hook
    current: dict[str, torch.Tensor] = {}  # this batch's counted-position mask

    def capture(act: torch.Tensor, hook) -> None:
        inputs[hook.name] = act

    def replacer(coder: Coder, in_hook: str, out_hook: str):
        def replace(act: torch.Tensor, hook) -> torch.Tensor:
            if in_hook != out_hook and in_hook not in inputs:
                raise ValueError(f"`{in_hook}` does not run before `{out_hook}`; cannot splice")
            x = act if in_hook == out_hook else inputs.pop(in_hook)
            return torch.where(current["mask"][..., None], _apply(coder, x)[0], act)

        return replace

    splice_hooks = [(i, capture) for i, o in hooks if i != o]
    splice_hooks += [(o, replacer(c, i, o)) for (c, _), (i, o) in zip(coders, hooks)]
    zero_hooks = [(o, lambda act, hook: torch.zeros_like(act)) for _, o in hooks]
    mean_hooks = [
        (o, lambda act, hook, mean=run.means[o]: mean.to(act.dtype).expand_as(act))
        for _, o in hooks
    ]
    acc = Accumulator()
    for batch, mask in run.batches("evaluate (all layers)"):
        current["mask"] = mask
        logp = all_logprobs(model(batch))  # [B, T, V]
        inputs.clear()
        logq = all_logprobs(model.run_with_hooks(batch, fwd_hooks=splice_hooks))
        zero_logits = model.run_with_hooks(batch, fwd_hooks=zero_hooks)
        ablated = {
            "zero_ablated": next_token_ce(zero_logits, batch),
            "mean_ablated": next_token_ce(model.run_with_hooks(batch, fwd_hooks=mean_hooks), batch),
            "kl_zero": kl_from_logprobs(logp, all_logprobs(zero_logits)),
        }
        _update_losses(acc, mask, logp, logq, batch, ablated)
    return _finish(acc)
