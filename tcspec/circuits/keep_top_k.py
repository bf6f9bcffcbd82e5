"""Keep-top-k (the paper's greater-than case study): how few transcoder features, against
MLP neurons, carry a task metric.

At layer ``L``, the transcoder's features and the MLP's neurons (``mlp.hook_post``) are
ranked by the variance of their activation at the last prompt position (where the model
predicts the year) over the *ranking* prompts; for each ``k = 0..k_max`` only the top ``k``
are kept and the rest zeroed. Two protocols, by the positions replaced:

- ``all`` (the paper's notebook): the MLP is replaced by the transcoder's kept features
  (plus its output bias) at every position, reading the MLP's live input; for neurons, the
  other neurons are zeroed at every position. With ``replace_bos=False`` the BOS position
  keeps the original MLP.
- ``last``: only the last position is replaced (the transcoder reads the MLP's input
  there); every other position runs the original model.

Through a cross-layer transcoder, a layer-``L`` feature is one component with all its
decoders: its features are ranked as above, and the MLP outputs they write (layer ``L``'s
and every later one the CLT spans) are replaced by the CLT's reconstruction there, every
source layer encoding its live input, with layer ``L``'s features outside the top ``k``
zeroed. (Per-layer transcoders write their own layer only: the protocol above.)

The metric is the mean probability difference of ``tcspec.models.greater_than`` over the metric
prompts ``tokens`` (the notebook ranks over the start years 00..99 and scores 01..98).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pandas as pd
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.circuits.graph.dictionaries import Dictionaries, PerLayer, as_dictionaries
from tcspec.circuits.trace import Transcoders, splice_hooks
from tcspec.dictionaries.coders import Coder
from tcspec.models.greater_than import prob_diff
from tcspec.models.hooks import full_name
from tcspec.spec import KEEP_TOP_K_POSITIONS

Positions = Literal[KEEP_TOP_K_POSITIONS]  # type: ignore[valid-type]


def metric(
    model: HookedTransformer, tokens: Tensor, yy: Tensor, year_ids: Tensor, hooks=()
) -> Tensor:
    """Per-prompt probability difference with ``hooks``: [n]."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))  # [n, seq, d_vocab]
    return prob_diff(logits[:, -1], yy, year_ids)


def at_layer(coder: Coder | Transcoders, layer: int) -> Dictionaries:
    """The dictionaries holding source layer ``layer``: a lone transcoder is layer's own."""
    d = PerLayer({layer: coder}) if isinstance(coder, Coder) else as_dictionaries(coder)
    if layer not in d.layers:
        raise ValueError(f"no transcoder features at layer {layer} (layers {list(d.layers)})")
    return d


def _rank(
    model: HookedTransformer, d: Dictionaries, layer: int, tokens: Tensor
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Feature and neuron indices by decreasing variance at the last position over
    ``tokens``' prompts, and each method's width."""
    in_name, post = d.in_hook(layer), full_name(layer, "mlp.hook_post")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in (in_name, post))
    z = d.activate(layer, d.pre_acts(layer, cache[in_name][:, -1].to(d.dtype)))  # [n, d_sae]
    neurons = cache[post][:, -1]  # [n, d_mlp]
    order = {
        "transcoder": z.var(0, unbiased=False).argsort(descending=True, stable=True),
        "neurons": neurons.var(0, unbiased=False).argsort(descending=True, stable=True),
    }
    return order, {"transcoder": z.shape[1], "neurons": neurons.shape[1]}


def replaced_positions(positions: Positions, replace_bos: bool, seq: int) -> slice:
    """The positions a protocol replaces."""
    if positions == "last":
        return slice(seq - 1, seq)
    return slice(0 if replace_bos else 1, seq)


class Hooks:
    """Hook lists that splice the kept components in at the protocol's positions: those of
    source layer ``layer`` of ``coder`` (a transcoder at that layer, or transcoders by
    layer, or a CLT)."""

    def __init__(self, coder: Coder | Transcoders, layer: int, where: slice):
        self.dicts, self.layer, self.where = at_layer(coder, layer), layer, where
        self.out_name = full_name(layer, "hook_mlp_out")
        self.post = full_name(layer, "mlp.hook_post")

    def transcoder(self, mask: Tensor) -> list:
        """The MLP outputs the layer's features write := the reconstruction there, with the
        layer's features outside ``mask`` [d_sae] zeroed."""
        written = list(self.dicts.decoders(self.layer))
        return splice_hooks(self.dicts, written, self.where, keep=(self.layer, mask))

    def neurons(self, mask: Tensor) -> list:
        """Every neuron outside ``mask`` [d_mlp] zeroed."""

        def hook(act, hook):
            act = act.clone()
            act[:, self.where] = act[:, self.where] * mask
            return act

        return [(self.post, hook)]

    def mlp_zero(self) -> list:
        def hook(act, hook):
            act = act.clone()
            act[:, self.where] = 0
            return act

        return [(self.out_name, hook)]


@torch.no_grad()
def keep_top_k(
    model: HookedTransformer,
    coder: Coder | Transcoders,
    layer: int,
    tokens: Tensor,
    yy: Tensor,
    year_ids: Tensor,
    k_max: int,
    positions: Positions = "last",
    rank_tokens: Tensor | None = None,
    replace_bos: bool = True,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The keep-top-k curves (module docstring) of the features at ``layer`` (of a
    transcoder there, or of transcoders by layer or a CLT), ranked over ``rank_tokens`` (default: the
    metric prompts ``tokens``): a frame with columns ``k``, ``method`` (``transcoder`` or
    ``neurons``), ``prob_diff``, ``index`` (the component added at that k); and baselines
    ``original``, ``transcoder_{positions}`` (every feature kept) and
    ``mlp_zero_{positions}`` (the MLP's output zeroed where the protocol replaces it)."""
    if k_max < 0:
        raise ValueError(f"keep_top_k must be >= 0, got {k_max}")
    if positions not in KEEP_TOP_K_POSITIONS:
        raise ValueError(
            f"keep-top-k positions must be one of {KEEP_TOP_K_POSITIONS}, got {positions!r}"
        )
    d = at_layer(coder, layer)
    order, width = _rank(model, d, layer, tokens if rank_tokens is None else rank_tokens)
    hooks = Hooks(d, layer, replaced_positions(positions, replace_bos, tokens.shape[1]))
    make: dict[str, Callable[[Tensor], list]] = {
        "transcoder": hooks.transcoder,
        "neurons": hooks.neurons,
    }
    dtype = {"transcoder": d.dtype, "neurons": model.cfg.dtype}
    rows = []
    for method in ("transcoder", "neurons"):
        for k in range(min(k_max, width[method]) + 1):
            mask = torch.zeros(width[method], dtype=dtype[method], device=tokens.device)
            mask[order[method][:k]] = 1
            score = float(metric(model, tokens, yy, year_ids, make[method](mask)).mean())
            added = int(order[method][k - 1]) if k > 0 else None
            rows.append({"k": k, "method": method, "prob_diff": score, "index": added})
    every = torch.ones(width["transcoder"], dtype=dtype["transcoder"], device=tokens.device)
    baselines = {
        "original": float(metric(model, tokens, yy, year_ids).mean()),
        f"transcoder_{positions}": float(
            metric(model, tokens, yy, year_ids, hooks.transcoder(every)).mean()
        ),
        f"mlp_zero_{positions}": float(
            metric(model, tokens, yy, year_ids, hooks.mlp_zero()).mean()
        ),
    }
    return pd.DataFrame(rows), baselines


def keep_top_k_summary(
    frame: pd.DataFrame, baselines: dict[str, float], level: float = 0.9
) -> dict:
    """Smallest k at which each method reaches ``level`` of the original metric, and the k
    where the transcoder is ahead of the neurons."""
    target = level * baselines["original"]
    out: dict = {"level": level, "target": target}
    pivot = frame.pivot(index="k", columns="method", values="prob_diff")
    for method in ("transcoder", "neurons"):
        reached = pivot.index[pivot[method] >= target]
        out[f"k_{method}"] = int(reached[0]) if len(reached) else None
    ahead = pivot.index[pivot["transcoder"] > pivot["neurons"]]
    out["k_transcoder_ahead"] = [int(k) for k in ahead]
    out["transcoder_ahead_fraction"] = float(len(ahead) / len(pivot))
    out["n_k"] = int(len(pivot))
    out["mean_gap"] = float((pivot["transcoder"] - pivot["neurons"]).mean())
    out["verdict"] = keep_top_k_verdict(out)
    return out


def keep_top_k_verdict(k: dict) -> str:
    """One plain sentence: do transcoder features recover the metric with fewer components?"""
    kt, kn, level = k["k_transcoder"], k["k_neurons"], f"{k['level']:.0%}"
    ahead = f"{len(k['k_transcoder_ahead'])} of {k['n_k']}"
    if kt is not None and (kn is None or kt < kn):
        return (
            f"Transcoder features recover the metric with fewer components than neurons "
            f"({level} at k = {kt} against {_num(kn)})."
        )
    if kt is not None and kt == kn:
        return f"Transcoder features and neurons reach {level} at the same k = {kt}."
    if kn is not None:
        return (
            f"Transcoder features do **not** recover the metric with fewer components than "
            f"neurons ({level} at k = {_num(kt)} against {kn}); they score higher at {ahead} values of k."
        )
    better = "higher" if k["transcoder_ahead_fraction"] > 0.5 else "not higher"
    return (
        f"Neither reaches {level} of the original metric within the k tried; transcoder "
        f"features score {better} than neurons at equal k ({ahead} values of k, mean gap "
        f"{_num(k['mean_gap'], 3)})."
    )


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)
