"""Check a graph by intervention: change a feature in the model and compare the change of
the graph's target with what the graph predicts.

The model runs with every transcoder spliced in (its features computed from the live input,
so downstream features respond) and its reconstruction error on the prompt added back, so
that without an intervention it reproduces the model. The target is the graph's logit
objective ``Σ_k w_k value_k`` (the logit nodes' values, weighted by their probabilities; a
logit difference for a difference target). A feature is ablated (activation 0) or steered
(activation times ``steer_factor``).

The graph's prediction is linear: a change ``Δ`` of feature ``s`` moves each downstream
feature by its edges per unit of activation (``A[t, s] / a_s``) and so on to the logits,
along every path of the (unpruned) graph; ``predicted_direct`` keeps the direct edges only.
With ``freeze`` the model also holds attention patterns and norm scales, as the graph does,
and a small steer then matches the prediction to first order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from tcspec.atomic import save_figure, write_text
from tcspec.circuits.graph.attribute import Graph
from tcspec.circuits.graph.dictionaries import Dictionaries, as_dictionaries
from tcspec.circuits.graph.prune import node_influence
from tcspec.circuits.graph.replacement import run_prompt
from tcspec.models.hooks import full_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class InterventionConfig:
    n_features: int = 10
    """Intervene on this many features, the most influential of the graph."""
    steer_factor: float = 2.0
    """A steered feature's activation is multiplied by this."""
    freeze: bool = False
    """Hold attention patterns and norm scales at their values on the prompt."""


@dataclass(frozen=True)
class InterventionRow:
    layer: int
    pos: int
    feature: int
    mode: str  # "ablate" | "steer"
    activation: float
    new_activation: float
    predicted: float  # the graph's change of the target, along every path
    predicted_direct: float  # ...along the direct edges only
    actual: float  # the model's change of the target


@dataclass(frozen=True)
class Interventions:
    rows: tuple[InterventionRow, ...]
    correlation: float  # Pearson r of predicted and actual over the rows (nan if undefined)
    baseline: float  # the target in the spliced model without intervention


@torch.no_grad()
def run_interventions(
    model: HookedTransformer,
    coders_by_layer,
    graph: Graph,
    cfg: InterventionConfig,
) -> Interventions:
    """Ablate and steer the graph's ``cfg.n_features`` most influential features (through
    per-layer transcoders by layer, or a CLT)."""
    coders = as_dictionaries(coders_by_layer)
    prompt = run_prompt(model, coders, graph.tokens.to(model.cfg.device))
    weights, vectors = _objective(graph, prompt.logits.shape[-1], prompt.logits.dtype)
    vectors = vectors.to(prompt.logits.device)

    def target(edit=None) -> float:
        hooks = _splice_hooks(model, coders, prompt, edit, cfg.freeze)
        logits = model.run_with_hooks(prompt.tokens[None], fwd_hooks=hooks)[0, -1]
        return float((vectors @ logits).double().cpu() @ weights)

    baseline = target()
    infl = node_influence(graph.adjacency, graph.logit_weights())[: graph.n_features]
    top = infl.argsort(descending=True)[: cfg.n_features].tolist()
    rows = []
    for i in top:
        li, p, f = graph.features[i].tolist()
        a = float(graph.activations[i])
        for mode, new in (("ablate", 0.0), ("steer", a * cfg.steer_factor)):
            pred, direct = predict(graph, i, new - a)
            actual = target((li, p, f, new)) - baseline
            rows.append(InterventionRow(li, p, f, mode, a, new, pred, direct, actual))
    return Interventions(tuple(rows), _pearson(rows), baseline)


def predict(graph: Graph, i: int, delta: float) -> tuple[float, float]:
    """The graph's change of the target when feature node ``i`` changes by ``delta``:
    (along every path, along the direct edges)."""
    A, n_f = graph.adjacency.double(), graph.n_features
    per_unit = A[:, :n_f] / graph.activations.double()[None, :]  # [n, n_f]
    w = graph.logit_probs.double()
    logits = slice(graph.logit_start, graph.n_nodes)
    current = torch.zeros(n_f, dtype=torch.float64)
    current[i] = delta
    total = torch.zeros(graph.n_nodes, dtype=torch.float64)
    for _ in range(graph.n_nodes + 1):
        if not current.any():
            break
        step = per_unit @ current  # [n]: change of every node's input
        total += step
        current = step[:n_f].clone()
        current[i] = 0.0  # the intervened feature is held
    direct = float(per_unit[logits, i] @ w) * delta
    return float(total[logits] @ w), direct


def _objective(graph: Graph, V: int, dtype) -> tuple[Tensor, Tensor]:
    """(weights [k] float64, read-out vectors [k, d_vocab]) of the graph's logit nodes."""
    if graph.config.target_tokens is not None:
        a, b = graph.config.target_tokens
        vec = torch.zeros(1, V, dtype=dtype)
        vec[0, a], vec[0, b] = 1.0, -1.0
    else:
        vec = torch.full((graph.n_logits, V), -1.0 / V, dtype=dtype)
        vec[torch.arange(graph.n_logits), graph.logit_tokens] += 1.0
    return graph.logit_probs.double(), vec


def _splice_hooks(model, d: Dictionaries, prompt, edit, freeze: bool):
    """Hooks splicing every transcoder (error added back): a layer's input is encoded at its
    input hook and its features' writes wait for the MLP outputs they reach; ``edit =
    (layer, pos, feature, value)`` sets one activation."""
    store: dict[int, Tensor] = {}  # layer -> its live input
    pending: dict[int, Tensor] = {}  # output layer -> the writes into it so far
    hooks = []
    if freeze:
        hooks += [(n, lambda act, hook, v=v: v.expand(act.shape)) for n, v in prompt.frozen.items()]

    def read(act, hook, li):
        x = store[li] = act.to(d.dtype)
        z = d.activate(li, d.pre_acts(li, x))
        if edit is not None and edit[0] == li:
            z = z.clone()
            z[:, edit[1], edit[2]] = edit[3]
        for m, W in d.decoders(li).items():
            pending[m] = z @ W if m not in pending else pending[m] + z @ W

    def splice(act, hook, m):
        return d.finish(m, pending.pop(m), store[m]).to(act.dtype) + prompt.error[m]

    for li in d.layers:
        hooks.append((d.in_hook(li), lambda act, hook, li=li: read(act, hook, li)))
        if d.writes_to(li):
            hooks.append((full_name(li, "hook_mlp_out"), lambda a, hook, m=li: splice(a, hook, m)))
    return hooks


def _pearson(rows: list[InterventionRow]) -> float:
    if len(rows) < 2:
        return float("nan")
    x = np.array([r.predicted for r in rows])
    y = np.array([r.actual for r in rows])
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def write_interventions(results: dict[str, Interventions], path: str | Path) -> Path:
    """The rows of each run as CSV (one line per run, feature and mode; ``model`` names the
    run, e.g. ``live`` or ``frozen``)."""
    buf = io.StringIO()
    names = ["model", *(f.name for f in dataclasses.fields(InterventionRow))]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for name, result in results.items():
        writer.writerows({"model": name, **dataclasses.asdict(r)} for r in result.rows)
    return write_text(Path(path), buf.getvalue())


def plot_interventions(results: dict[str, Interventions], path: str | Path) -> Path:
    """One panel per run (e.g. the live and the frozen model): the actual against the
    predicted change of the target, by mode, with the run's correlation in its title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results), 4.2))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        _scatter(ax, result)
        ax.set_title(f"{name} model, r = {result.correlation:.3f}")
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)


def _scatter(ax, result: Interventions) -> None:
    for mode, color in (("ablate", "#d62728"), ("steer", "#1f77b4")):
        rows = [r for r in result.rows if r.mode == mode]
        ax.scatter([r.predicted for r in rows], [r.actual for r in rows], s=14, c=color,
                   label=mode)  # fmt: skip
    values = [v for r in result.rows for v in (r.predicted, r.actual)] or [0.0]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="#999", lw=0.8)
    ax.set_xlabel("predicted change (graph)")
    ax.set_ylabel("actual change (model)")
    ax.legend()
