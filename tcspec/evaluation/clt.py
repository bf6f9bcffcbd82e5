"""A cross-layer transcoder spliced into all its layers at once on a TransformerLens model.

`evaluate_clt(model, clt, tokens, batch_contexts)` runs, per batch of contexts:

- the clean model, caching every CLT layer's input and output hook: next-token log-probs,
  and the CLT's fidelity on the clean inputs (`clean_layers`: what training optimises);
- the replaced model: at each CLT layer l, in order, the input hook (read from this patched
  run) is encoded into a_l and its decoders' writes to layers l..L-1 are added to what is
  pending there; the output hook of layer m is replaced by the sum of the decoders reaching
  it (+ b_dec[m], + the skip term). Fidelity there compares y_hat_m with the MLP's own output
  on the patched run's input (`layers`); CE of the replaced run and KL(original || replaced);
- the output hooks of every CLT layer all zero-ablated, then all mean-ablated (the means over
  all positions of the eval contexts, `tcspec.evaluation.spliced.hook_means`, unless given).

Returns one dict: the CE/KL metrics of `tcspec.evaluation.metrics` (joint over all layers), `n_ce_tokens`,
`l0` (active features per token summed over layers, on the replaced run), `layers` and
`clean_layers` (per layer: `block` and the sparsity and fidelity metrics, `n_tokens`).
Conventions are those of `tcspec.evaluation.spliced`: positions whose token is in `exclude_tokens` are
not spliced and count in no metric; fidelity over the counted positions, CE over them but the
last of each context, KL over every counted position.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from tcspec.data.positions import keep_mask
from tcspec.dictionaries.clt import CLT
from tcspec.evaluation.metrics import (
    Accumulator,
    all_logprobs,
    ce_from_logprobs,
    kl_from_logprobs,
    next_token_ce,
)
from tcspec.evaluation.spliced import hook_means


def _batches(tokens, batch_contexts: int, device) -> Iterator[torch.Tensor]:
    """Consecutive row batches of `tokens` [n_rows, ctx] as int64 on `device`."""
    for start in range(0, tokens.shape[0], batch_contexts):
        rows = tokens[start : start + batch_contexts]
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        yield rows.to(device=device, dtype=torch.long)


class _Splice:
    """The forward hooks that splice `clt` into every one of its layers of one run."""

    def __init__(self, clt: CLT, accs: list[Accumulator], mask: torch.Tensor):
        self.clt, self.accs, self.mask = clt, accs, mask  # mask: counted positions [B, T]
        p = clt.b_enc
        self.device, self.dtype = p.device, p.dtype
        self.pending: dict[int, torch.Tensor] = {}  # output layer -> sum of decoder writes
        self.inputs: dict[int, torch.Tensor] = {}  # layer -> its input x_l (CLT dtype)
        self.acts: dict[int, torch.Tensor] = {}  # layer -> a_l [B, T, F]

    def hooks(self) -> list:
        cfg = self.clt.cfg
        ins = [(name, self._reader(i)) for i, name in enumerate(cfg.in_names)]
        return ins + [(name, self._writer(m)) for m, name in enumerate(cfg.out_names)]

    def _reader(self, i: int):
        def read(act: torch.Tensor, hook) -> None:
            x = act.to(device=self.device, dtype=self.dtype)  # [B, T, d]
            a = self.clt.encode_layer(x, i)  # [B, T, F]
            written = self.clt.decode_layer(a, i)  # [B, T, L - i, d]
            for j in range(written.shape[-2]):
                prev = self.pending.get(i + j)
                w = written[..., j, :]
                self.pending[i + j] = w if prev is None else prev + w
            self.inputs[i], self.acts[i] = x, a

        return read

    def _writer(self, m: int):
        def write(act: torch.Tensor, hook) -> torch.Tensor:
            if m not in self.inputs:
                raise ValueError(f"`{hook.name}` runs before the CLT's input hook of its layer")
            y_hat = self.pending.pop(m) + self.clt.output_bias(self.inputs.pop(m), m)
            y_hat = y_hat.to(device=act.device, dtype=act.dtype)  # [B, T, d]
            mask = self.mask
            self.accs[m].update(act[mask], y_hat[mask], self.acts.pop(m).to(act.device)[mask])
            return torch.where(mask[..., None], y_hat, act)

        return write


@torch.inference_mode()
def evaluate_clt(
    model: HookedTransformer,
    clt: CLT,
    tokens: torch.Tensor | np.ndarray,
    batch_contexts: int,
    progress: bool = True,
    ablation_means: dict[str, torch.Tensor] | None = None,
    exclude_tokens: tuple[int, ...] = (),
) -> dict:
    """Metrics of `clt` spliced into all its layers of `model` on `tokens` [n_rows, ctx]
    (see the module docstring). `ablation_means`: mean-ablation vectors by full hook name;
    `exclude_tokens`: token ids whose positions are not spliced and count in no metric."""
    cfg = clt.cfg
    _check_inputs(model, clt, tokens, batch_contexts)
    zero_hooks, mean_hooks = _ablation_hooks(
        model, clt, tokens, batch_contexts, progress, ablation_means, exclude_tokens
    )
    layer_accs = [Accumulator() for _ in cfg.blocks]
    clean_accs = [Accumulator() for _ in cfg.blocks]
    ce = Accumulator()
    names = cfg.in_names + cfg.out_names
    total = -(-tokens.shape[0] // batch_contexts)
    batches = _batches(tokens, batch_contexts, model.cfg.device)
    for batch in tqdm(batches, total=total, desc="evaluate CLT", disable=not progress):
        logits, cache = model.run_with_cache(batch, names_filter=names)  # [B, T, V]
        mask = keep_mask(batch, exclude_tokens)  # [B, T]
        logp = all_logprobs(logits)  # [B, T, V]
        _clean_fidelity(clt, cache, clean_accs, mask)
        splice = _Splice(clt, layer_accs, mask)
        logq = all_logprobs(model.run_with_hooks(batch, fwd_hooks=splice.hooks()))
        zero_logits = model.run_with_hooks(batch, fwd_hooks=zero_hooks)  # [B, T, V]
        mean_ce = next_token_ce(model.run_with_hooks(batch, fwd_hooks=mean_hooks), batch)
        m_ce = mask[:, :-1]  # [B, T - 1]: positions with a counted next token
        ce.update_ce(
            original=ce_from_logprobs(logp[:, :-1], batch)[m_ce],
            replaced=ce_from_logprobs(logq[:, :-1], batch)[m_ce],
            zero_ablated=next_token_ce(zero_logits, batch)[m_ce],
            mean_ablated=mean_ce[m_ce],
        )
        kl_zero = kl_from_logprobs(logp, all_logprobs(zero_logits))
        ce.update_kl(kl=kl_from_logprobs(logp, logq)[mask], kl_zero_ablated=kl_zero[mask])
    layers = [_layer_row(b, acc) for b, acc in zip(cfg.blocks, layer_accs)]
    return ce.compute() | {
        "n_ce_tokens": ce.n_ce,
        "n_kl_tokens": ce.n_kl,
        "l0": sum(row["l0"] for row in layers),
        "layers": layers,
        "clean_layers": [_layer_row(b, acc) for b, acc in zip(cfg.blocks, clean_accs)],
    }


def _check_inputs(model: HookedTransformer, clt: CLT, tokens, batch_contexts: int) -> None:
    """ValueError for `tokens` not [n_rows >= 1, ctx >= 2], a batch size below 1, or a model
    without the CLT's hooks."""
    cfg = clt.cfg
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n_rows >= 1, ctx >= 2]; got {tuple(tokens.shape)}")
    if batch_contexts < 1:
        raise ValueError(f"batch_contexts must be positive; got {batch_contexts}")
    missing = [h for h in cfg.in_names + cfg.out_names if h not in model.hook_dict]
    if missing:
        raise ValueError(f"the model has no hooks {missing}")


def _ablation_hooks(
    model: HookedTransformer,
    clt: CLT,
    tokens,
    batch_contexts: int,
    progress: bool,
    ablation_means: dict[str, torch.Tensor] | None,
    exclude_tokens: tuple[int, ...],
) -> tuple[list, list]:
    """The forward hooks that zero, and that mean-ablate, every CLT output hook: the means
    given in `ablation_means` by hook name, the others measured on `tokens` [n_rows, ctx]."""
    cfg = clt.cfg
    means = {h: v.to(model.cfg.device) for h, v in (ablation_means or {}).items()}  # h: [d]
    need = [h for h in cfg.out_names if h not in means]
    if need:
        means |= hook_means(model, tokens, need, batch_contexts, progress, exclude_tokens)
    zero_hooks = [(o, lambda act, hook: torch.zeros_like(act)) for o in cfg.out_names]
    mean_hooks = [
        (o, lambda act, hook, mean=means[o]: mean.to(act.dtype).expand_as(act))
        for o in cfg.out_names
    ]
    return zero_hooks, mean_hooks


def _clean_fidelity(clt: CLT, cache, accs: list[Accumulator], mask: torch.Tensor) -> None:
    """The CLT on the clean run's inputs against its outputs, per layer."""
    cfg, p = clt.cfg, clt.b_enc
    xs = torch.stack([cache[n] for n in cfg.in_names]).to(device=p.device, dtype=p.dtype)
    y_hat, acts, _ = clt(xs)  # [L, B, T, d], [L, B, T, F]
    for m, name in enumerate(cfg.out_names):
        y = cache[name]
        y_hat_m = y_hat[m].to(device=y.device, dtype=y.dtype)
        accs[m].update(y[mask], y_hat_m[mask], acts[m].to(y.device)[mask])


def _layer_row(block: int, acc: Accumulator) -> dict:
    return {"block": block} | acc.compute() | {"n_tokens": acc.n_tokens}
