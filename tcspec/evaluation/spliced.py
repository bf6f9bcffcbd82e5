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

Formulas are in `tcspec.evaluation.metrics`. Positions: a position is *counted* unless its token is in
`exclude_tokens` (the BOS convention `exclude` passes the BOS id, as SAELens's
`exclude_special_tokens` does: by token identity, so a BOS inside a packed row is excluded
too). The dictionary is spliced only at counted positions (an excluded position keeps its
original activation); sparsity and fidelity metrics cover the counted positions; CE covers
the counted positions but the last of each context (it has no next token); KL covers every
counted position, the last included (SAELens's convention). Zero-ablation sets every
position to 0 (BOS too, as SAELens does); the mean used for mean-ablation is the hook's mean
over the counted positions of all eval contexts, computed in a first pass (or passed in as
`ablation_means`).

`evaluate_splices(model, splices, tokens, batch_contexts)` evaluates several `Splice`s (a
dictionary alone, or a set spliced together) in one pass over the tokens, each splice's
metrics identical to evaluating it alone; `evaluate_coders` is it for one call's coders.

Work per batch: one clean forward caching only the hooks needed, one patched forward per
splice, two (zero, mean) per distinct ablated hook (per distinct set of hooks for sets). A
patched forward whose hook is a ``hook_mlp_out`` resumes from the next block (the residual
stream after block L is the clean one plus the change to the MLP output) instead of
re-running the blocks before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from tcspec.data.positions import keep_mask
from tcspec.evaluation.metrics import (
    Accumulator,
    all_logprobs,
    ce_from_logprobs,
    kl_from_logprobs,
    next_token_ce,
)
from tcspec.models.hooks import full_name, split_name

if TYPE_CHECKING:
    from tcspec.dictionaries.coders import Coder


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
    split = split_name(hook)
    if split is None or split[1] != "hook_mlp_out":
        return None
    if model.cfg.positional_embedding_type == "shortformer" or model.cfg.n_devices > 1:
        return None
    return split[0]


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
        resid = cache[full_name(layer, "hook_resid_post")] + (value - cache[hook])  # [B, T, d]
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
    layers = [split[0] for split in map(split_name, hooks) if split is not None]
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
@dataclass(frozen=True)
class Splice:
    """What one result of an evaluation splices into the model: a dictionary alone
    (``splice="each"``, one (coder, layer) pair), or a set together, one coder per layer
    (``"all"``)."""

    coders: tuple[tuple[Coder, int], ...]
    splice: Literal["each", "all"] = "each"

    def __post_init__(self):
        if self.splice not in ("each", "all"):
            raise ValueError(f"splice must be `each` or `all`; got `{self.splice}`")
        if not self.coders:
            raise ValueError("a splice needs at least one coder")
        if self.splice == "each" and len(self.coders) != 1:
            raise ValueError(f"an `each` splice holds one coder; got {len(self.coders)}")


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
    `tcspec.evaluation.metrics` that apply, plus `n_tokens` (positions the fidelity metrics cover),
    `n_ce_tokens` and `n_kl_tokens`.
    """
    if not coders:
        raise ValueError("no coders to evaluate")
    if splice not in ("each", "all"):
        raise ValueError(f"splice must be `each` or `all`; got `{splice}`")
    splices = [Splice(tuple(coders), "all")] if splice == "all" else [Splice((p,)) for p in coders]
    out = evaluate_splices(
        model, splices, tokens, batch_contexts, progress, ablation_means, exclude_tokens
    )
    return out[0] if splice == "all" else out


def evaluate_splices(
    model: HookedTransformer,
    splices: Sequence[Splice],
    tokens: torch.Tensor | np.ndarray,
    batch_contexts: int,
    progress: bool = True,
    ablation_means: dict[str, torch.Tensor] | None = None,
    exclude_tokens: Sequence[int] = (),
) -> list[dict]:
    """Metrics of several splices on the same `tokens` in one pass over them: per batch one
    clean forward, one zero- and one mean-ablated forward per output hook of the `each`
    splices and per set of output hooks of the `all` splices, and one patched forward per
    splice. Each splice's metrics are identical to evaluating it alone (`evaluate_coders`):
    one dict per splice, in order (see `evaluate_coders` for the keys; `all` splices have
    no fidelity metrics and no `n_tokens`)."""
    if not splices:
        raise ValueError("no splices to evaluate")
    if batch_contexts < 1:
        raise ValueError(f"batch_contexts must be positive; got {batch_contexts}")
    _check_tokens(tokens, model)
    hooks = [[_coder_hooks(model, c, layer) for c, layer in m.coders] for m in splices]
    for m, pairs in zip(splices, hooks):
        layers = [layer for _, layer in m.coders]
        outs = [o for _, o in pairs]
        if m.splice == "all" and (len(set(layers)) != len(layers) or len(set(outs)) != len(outs)):
            raise ValueError(f"splice `all` takes one coder per layer; got layers {layers}")
    out_hooks = list(dict.fromkeys(o for pairs in hooks for _, o in pairs))
    means = {h: v.to(model.cfg.device) for h, v in (ablation_means or {}).items()}
    missing = [h for h in out_hooks if h not in means]
    if missing:
        means |= hook_means(model, tokens, missing, batch_contexts, progress, exclude_tokens)
    runs = [
        _Single(model, m.coders[0][0], *pairs[0], means)
        if m.splice == "each"
        else _Joint(model, m.coders, pairs, means)
        for m, pairs in zip(splices, hooks)
    ]
    return _run(model, runs, tokens, batch_contexts, progress, tuple(exclude_tokens))


class _Clean:
    """The clean forward of one batch, shared by every splice: its logits, log-probs and
    the activations the `each` splices read; ablated CE cached by hook (set)."""

    def __init__(
        self, model: HookedTransformer, batch: torch.Tensor, needed: set[str], mask: torch.Tensor
    ):
        if needed:
            logits, cache = model.run_with_cache(batch, names_filter=sorted(needed))
            self.cache = {h: cache[h] for h in needed}
        else:
            logits, self.cache = model(batch), {}  # [B, T, V]
        self.batch, self.mask = batch, mask  # [B, T], counted positions [B, T]
        self.logp = all_logprobs(logits)  # [B, T, V]
        self.p = self.logp.exp()  # [B, T, V]
        self.ablated: dict[object, dict[str, torch.Tensor]] = {}

    def ablations(self, zero_logits: torch.Tensor, mean_logits: torch.Tensor) -> dict:
        """Zero- and mean-ablated next-token CE [B, T-1] and the zero ablation's KL [B, T]."""
        return {
            "zero_ablated": next_token_ce(zero_logits, self.batch),
            "mean_ablated": next_token_ce(mean_logits, self.batch),
            "kl_zero": kl_from_logprobs(self.logp, all_logprobs(zero_logits), self.p),
        }

    def update(self, acc: Accumulator, logq: torch.Tensor, key: object) -> None:
        """CE and KL of one splice over the counted positions; logq [B, T, V] is its run's."""
        m_ce, ablated = self.mask[:, :-1], self.ablated[key]  # a prediction from a counted token
        acc.update_ce(
            original=ce_from_logprobs(self.logp[:, :-1], self.batch)[m_ce],
            replaced=ce_from_logprobs(logq[:, :-1], self.batch)[m_ce],
            zero_ablated=ablated["zero_ablated"][m_ce],
            mean_ablated=ablated["mean_ablated"][m_ce],
        )
        kl = kl_from_logprobs(self.logp, logq, self.p)  # [B, T]
        acc.update_kl(kl=kl[self.mask], kl_zero_ablated=ablated["kl_zero"][self.mask])


class _Single:
    """One coder spliced in alone: fidelity from the clean run's hooks, one patched run."""

    def __init__(self, model, coder: Coder, in_hook: str, out_hook: str, means):
        self.model, self.coder, self.in_hook, self.out_hook = model, coder, in_hook, out_hook
        self.mean = means[out_hook]
        self.acc = Accumulator()
        layer = _resume_layer(model, out_hook)
        resume = set() if layer is None else {full_name(layer, "hook_resid_post")}
        self.needed = {in_hook, out_hook} | resume

    def update(self, clean: _Clean) -> None:
        model, batch, cache, h = self.model, clean.batch, clean.cache, self.out_hook
        if h not in clean.ablated:
            zero = torch.zeros_like(cache[h])  # [B, T, d]
            clean.ablated[h] = clean.ablations(
                _patched_logits(model, batch, cache, h, zero),
                _patched_logits(model, batch, cache, h, self.mean),
            )
        y, mask = cache[h], clean.mask  # [B, T, d_out], [B, T]
        y_hat, z = _apply(self.coder, cache[self.in_hook])  # [B, T, d_out], [B, T, d_sae]
        self.acc.update(y[mask], y_hat[mask], z[mask])
        spliced = torch.where(mask[..., None], y_hat, y)  # excluded positions keep y
        logq = all_logprobs(_patched_logits(model, batch, cache, h, spliced))  # [B, T, V]
        clean.update(self.acc, logq, h)

    def result(self) -> dict:
        acc = self.acc
        return acc.compute() | {
            "n_tokens": acc.n_tokens, "n_ce_tokens": acc.n_ce, "n_kl_tokens": acc.n_kl
        }  # fmt: skip


class _Joint:
    """A set of coders spliced in at once, each reading its input from the patched run."""

    needed: frozenset[str] = frozenset()  # reads no clean activations

    def __init__(self, model, coders: Sequence[tuple[Coder, int]], hooks, means):
        self.model, self.acc = model, Accumulator()
        self.inputs: dict[str, torch.Tensor] = {}  # this run's activation at each input hook
        self.mask: torch.Tensor | None = None  # this batch's counted positions [B, T]
        self.splice_hooks = [(i, self._capture) for i, o in hooks if i != o]
        self.splice_hooks += [(o, self._replacer(c, i, o)) for (c, _), (i, o) in zip(coders, hooks)]
        self.key = tuple(o for _, o in hooks)
        self.zero_hooks = [(o, lambda act, hook: torch.zeros_like(act)) for o in self.key]
        self.mean_hooks = [
            (o, lambda act, hook, mean=means[o]: mean.to(act.dtype).expand_as(act))
            for o in self.key
        ]

    def _capture(self, act: torch.Tensor, hook) -> None:
        self.inputs[hook.name] = act

    def _replacer(self, coder: Coder, in_hook: str, out_hook: str):
        def replace(act: torch.Tensor, hook) -> torch.Tensor:
            if in_hook != out_hook and in_hook not in self.inputs:
                raise ValueError(f"`{in_hook}` does not run before `{out_hook}`; cannot splice")
            x = act if in_hook == out_hook else self.inputs.pop(in_hook)
            return torch.where(self.mask[..., None], _apply(coder, x)[0], act)

        return replace

    def update(self, clean: _Clean) -> None:
        model, batch = self.model, clean.batch
        if self.key not in clean.ablated:
            clean.ablated[self.key] = clean.ablations(
                model.run_with_hooks(batch, fwd_hooks=self.zero_hooks),
                model.run_with_hooks(batch, fwd_hooks=self.mean_hooks),
            )
        self.inputs.clear()
        self.mask = clean.mask
        logq = all_logprobs(model.run_with_hooks(batch, fwd_hooks=self.splice_hooks))
        clean.update(self.acc, logq, self.key)

    def result(self) -> dict:
        return self.acc.compute() | {"n_ce_tokens": self.acc.n_ce, "n_kl_tokens": self.acc.n_kl}


@torch.inference_mode()
def _run(model, runs, tokens, batch_contexts: int, progress: bool, exclude) -> list[dict]:
    needed = set().union(*(r.needed for r in runs))
    batches = _batches(tokens, batch_contexts, model.cfg.device)
    total = _n_batches(tokens, batch_contexts)
    for batch in tqdm(batches, total=total, desc="evaluate", disable=not progress):
        clean = _Clean(model, batch, needed, keep_mask(batch, exclude))
        for r in runs:
            r.update(clean)
    return [r.result() for r in runs]
