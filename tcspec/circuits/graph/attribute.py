"""Attribution graphs: the direct effect of every source on every target, one prompt at a time.

Nodes, in adjacency order (rows are targets, columns sources, as in circuit-tracer):
``[selected features | errors (n_layers * n_pos, layer-major) | tokens (n_pos) | logits]``.
``A[t, s]`` is source ``s``'s value pushed through the frozen replacement model
(`replacement.py`) and read by target ``t``:

- a feature source ``(l, p, f)`` writes ``z * W_dec[f]`` into ``mlp_out[l]`` at ``p`` (a
  cross-layer transcoder's feature ``z * W_dec[l][f, m - l]`` into every ``mlp_out[m]``,
  ``m >= l``: one source, its edges summed over those writes); an error source its error
  vector; a token source its embedding ``W_E[token]``;
- a feature target is read by its encoder column ``W_enc[:, f]`` at its transcoder's input
  (the effect on its *pre-activation*); a logit target by ``e_tok - 1/d_vocab`` on the last
  position's logits (the logit minus the mean logit), or ``e_a - e_b`` for a logit difference.

Rows are computed a batch at a time: one forward pass with ``batch_size`` copies of the
prompt, then one backward pass per batch of targets, each copy seeded with one target's
read-out vector; the gradients at ``mlp_out`` and ``hook_embed`` are contracted with the
sources' vectors. A node's row plus its bias (`replacement_forward` with every
source off) is its value. With ``max_feature_nodes`` the features whose rows are computed are
chosen greedily by their influence on the logits through the rows computed so far
(`prune.partial_influence`), on circuit-tracer's schedule: rank the unvisited features, take
the next ``update_interval * batch_size`` of them in rank order (``batch_size`` a backward
pass), then rank again; the others stay out of the graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tcspec.circuits.graph.dictionaries import Dictionaries, as_dictionaries
from tcspec.circuits.graph.prune import partial_influence
from tcspec.circuits.graph.replacement import (
    Live,
    Prompt,
    last_logits,
    replacement_hooks,
    run_prompt,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class GraphConfig:
    """How a graph is built and pruned (circuit-tracer's defaults)."""

    max_n_logits: int = 10
    """At most this many top logits become target nodes."""
    desired_logit_prob: float = 0.95
    """Fewer when the top logits' cumulative probability reaches this."""
    max_feature_nodes: int | None = None
    """Cap on the features whose rows are computed (the most influential); None: all."""
    target_tokens: tuple[int, int] | None = None
    """Token ids ``(a, b)``: one target node, the logit difference ``a - b``, instead of the
    top logits."""
    node_threshold: float = 0.8
    """Pruning keeps the nodes that carry this fraction of the influence on the logits."""
    edge_threshold: float = 0.98
    """...and the edges that carry this fraction of the edge influence."""
    batch_size: int = 512
    """Targets per backward pass (copies of the prompt in the forward pass); circuit-tracer's
    default."""
    update_interval: int = 4
    """With ``max_feature_nodes``: backward passes between two rankings of the features still
    to visit (circuit-tracer's default)."""
    zero_positions: int = 1
    """Features and errors at the first this-many positions are no nodes (their output
    is a bias term): position 0 is the BOS token, as in circuit-tracer."""

    def __post_init__(self):
        if self.max_n_logits < 1:
            raise ValueError(f"max_n_logits must be >= 1, got {self.max_n_logits}")
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 1:
            raise ValueError(f"max_feature_nodes must be >= 1, got {self.max_feature_nodes}")
        if self.batch_size < 1 or self.update_interval < 1 or self.zero_positions < 0:
            raise ValueError("batch_size, update_interval must be >= 1 and zero_positions >= 0")
        if self.target_tokens is not None and len(self.target_tokens) != 2:
            raise ValueError(f"target_tokens must be two token ids, got {self.target_tokens}")


@dataclass(frozen=True)
class Graph:
    """An attribution graph over one prompt (node order in the module docstring)."""

    tokens: Tensor  # [n_pos] token ids
    token_strs: tuple[str, ...]  # the prompt's tokens as text
    n_layers: int
    features: Tensor  # [n_features, 3] long: (layer, pos, feature) of the selected features
    activations: Tensor  # [n_features]: their activations
    logit_tokens: Tensor  # [n_logits] token ids (``a`` of a logit difference)
    logit_strs: tuple[str, ...]  # their text (``"a - b"`` for a difference)
    logit_probs: Tensor  # [n_logits]: probabilities of the top logits (1 for a difference)
    logit_values: Tensor  # [n_logits]: each logit node's value (demeaned logit or difference)
    adjacency: Tensor  # [n_nodes, n_nodes]: A[target, source]
    config: GraphConfig
    n_active: int  # active features on the prompt before the cap
    backward_passes: int
    seconds: float
    prompt: str = ""

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + self.n_logits

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def logit_weights(self) -> Tensor:
        """[n_nodes]: the logit probabilities on the logit nodes, zero elsewhere."""
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start :] = self.logit_probs.to(w.dtype)
        return w


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class LogitTargets:
    tokens: Tensor  # [k]
    probs: Tensor  # [k]
    vectors: Tensor  # [k, d_vocab]: read-out of each target on the last position's logits
    values: Tensor  # [k]


def logit_targets(logits: Tensor, cfg: GraphConfig) -> LogitTargets:
    """The top logits of the last position (``logits`` [d_vocab]) until their probability
    reaches ``desired_logit_prob``, at most ``max_n_logits``; or the logit difference."""
    V = logits.shape[-1]
    probs = torch.softmax(logits.double(), -1)
    if cfg.target_tokens is not None:
        a, b = cfg.target_tokens
        for t in (a, b):
            if not 0 <= t < V:
                raise ValueError(f"target token {t} is outside the vocabulary (0..{V - 1})")
        vec = torch.zeros(1, V, dtype=logits.dtype, device=logits.device)
        vec[0, a], vec[0, b] = 1.0, -1.0
        toks, p = torch.tensor([a]), torch.ones(1, dtype=torch.float64)
    else:
        top_p, top = probs.topk(min(cfg.max_n_logits, V))
        n = int(torch.searchsorted(top_p.cumsum(0), cfg.desired_logit_prob)) + 1
        toks, p = top[: min(n, len(top))].cpu(), top_p[: min(n, len(top))].cpu()
        vec = torch.full((len(toks), V), -1.0 / V, dtype=logits.dtype, device=logits.device)
        vec[torch.arange(len(toks), device=logits.device), toks.to(logits.device)] += 1.0
    return LogitTargets(toks, p, vec, vec @ logits)


# ----------------------------------------------------------------------------- rows
class Rows:
    """One batched forward pass through the replacement model, then rows on demand."""

    def __init__(self, model: HookedTransformer, coders: Dictionaries, prompt: Prompt,
                 batch: int, zero_positions: int, targets: LogitTargets):  # fmt: skip
        self.model, self.coders, self.prompt, self.batch = model, coders, prompt, batch
        self.targets, self.passes = targets, 0
        L, seq = model.cfg.n_layers, prompt.n_pos
        self.live = Live(embed=prompt.embed, coder_in={}, mlp_out=[None] * L)
        hooks = replacement_hooks(model, coders, prompt, batch, self.live)
        with torch.enable_grad():
            toks = prompt.tokens.expand(batch, -1)
            resid = model.run_with_hooks(toks, fwd_hooks=hooks, stop_at_layer=L)
            self.live.logits = last_logits(model, prompt, resid)  # [batch, 1, d_vocab]
        self.error = prompt.error.clone()  # [L, seq, d]: error sources
        self.error[:, :zero_positions] = 0
        self.active = active_features(prompt, zero_positions)  # [n_active, 3]
        self.blocks = self._decoder_blocks()
        self.n_cols = len(self.active) + L * seq + seq

    def _decoder_blocks(self) -> list[tuple[dict[int, Tensor], Tensor, Tensor]]:
        """Per source layer with active features, in column order: ``(vectors, pos [n],
        slot [n])``, ``vectors`` by output layer m [seq, n_max, d]: each position's
        ``a * W_dec[f]`` into m padded to the most at one position, and where each active
        feature of the layer sits in that padding."""
        out, dtype = [], self.prompt.embed.dtype
        for li in self.coders.layers:
            idx = self.active[self.active[:, 0] == li]
            if not len(idx):
                continue
            pos, f = idx[:, 1].contiguous(), idx[:, 2].contiguous()
            first = torch.searchsorted(pos, pos, right=False)  # first index of each position
            slot = torch.arange(len(pos)) - first  # rank within its position
            a = self.prompt.z[li][pos, f]  # [n]
            vectors = {}
            for m, W in self.coders.decoders(li).items():
                v = self.prompt.embed.new_zeros(self.prompt.n_pos, int(slot.max()) + 1,
                                                self.prompt.embed.shape[-1])  # fmt: skip
                v[pos, slot] = (a[:, None] * W[f]).detach().to(dtype)
                vectors[m] = v
            out.append((vectors, pos, slot))
        return out

    def rows(self, seeds: list[tuple[int, int, int] | int]) -> Tensor:
        """Rows of the targets ``seeds``: ``(layer, pos, feature)`` for a feature, an int
        ``k`` for logit target ``k``. Returns [len(seeds), n_cols] in column order
        ``[active features | errors | tokens]``."""
        if not 0 < len(seeds) <= self.batch:
            raise ValueError(f"between 1 and {self.batch} seeds per pass, got {len(seeds)}")
        live, outputs, grads = self.live, [], []
        seeded: dict[int, Tensor] = {}
        logit_seed = None
        for b, s in enumerate(seeds):
            if isinstance(s, int):
                if logit_seed is None:
                    logit_seed = torch.zeros_like(live.logits)
                logit_seed[b, -1] = self.targets.vectors[s]
            else:
                li, p, f = s
                if li not in seeded:
                    seeded[li] = torch.zeros_like(live.coder_in[li])
                seeded[li][b, p] = self.coders.encoder(li)[:, f].detach().to(seeded[li].dtype)
        for li, g in seeded.items():
            outputs.append(live.coder_in[li])
            grads.append(g)
        if logit_seed is not None:
            outputs.append(live.logits)
            grads.append(logit_seed)
        inputs = [live.embed, *live.mlp_out]
        with torch.enable_grad():
            got = torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True)
        self.passes += 1
        return self._contract(got[0], list(got[1:]))[: len(seeds)]

    def _contract(self, g_embed: Tensor | None, g_out: list[Tensor | None]) -> Tensor:
        """Gradients at the injection points -> edges from every source: [batch, n_cols]."""
        B, seq, L = self.batch, self.prompt.n_pos, self.model.cfg.n_layers
        zero = torch.zeros_like(self.prompt.embed).expand(B, seq, -1)
        g_out = [zero if g is None else g for g in g_out]
        feats = []
        for vectors, pos, slot in self.blocks:
            total = None  # [B, n]: summed over the output layers the features write
            for m, v in vectors.items():
                per_pos = torch.bmm(g_out[m].transpose(0, 1), v.transpose(1, 2))  # [seq, B, n_max]
                part = per_pos[pos, :, slot].T  # [B, n]
                total = part if total is None else total + part
            feats.append(total)
        errors = torch.stack([(g_out[li] * self.error[li]).sum(-1) for li in range(L)], 1)
        tokens = (zero if g_embed is None else g_embed) * self.prompt.embed
        return torch.cat([*feats, errors.flatten(1), tokens.sum(-1)], dim=1).detach()


def active_features(prompt: Prompt, zero_positions: int) -> Tensor:
    """(layer, pos, feature) of every nonzero activation at positions >= zero_positions,
    ordered by layer, then position, then feature: [n_active, 3] long."""
    parts = []
    for li in sorted(prompt.z):
        idx = prompt.z[li].nonzero()  # [n, 2]: (pos, feature), row-major
        idx = idx[idx[:, 0] >= zero_positions].cpu()
        parts.append(torch.cat([torch.full((len(idx), 1), li), idx], 1))
    return torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)


# ----------------------------------------------------------------------------- the graph
def attribution_graph(
    model: HookedTransformer,
    coders_by_layer,
    tokens: Tensor,
    cfg: GraphConfig,
    prompt: str = "",
) -> Graph:
    """The attribution graph of ``model`` on ``tokens`` [seq] (one prompt, BOS first when
    ``cfg.zero_positions`` is 1) through the transcoders ``coders_by_layer`` (a dict layer
    -> `Coder`, or a `tcspec.dictionaries.clt.CLT`)."""
    t0 = time.perf_counter()
    coders = as_dictionaries(coders_by_layer)
    run = run_prompt(model, coders, tokens)
    targets = logit_targets(run.logits[-1], cfg)
    n_active, k = len(active_features(run, cfg.zero_positions)), len(targets.tokens)
    n_visit = n_active if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, n_active)
    batch = max(1, min(cfg.batch_size, max(k, n_visit)))
    rows = Rows(model, coders, run, batch, cfg.zero_positions, targets)
    logit_rows = torch.cat(
        [rows.rows(list(range(i, min(i + batch, k)))) for i in range(0, k, batch)]
    )
    visited, feature_rows = _visit_features(
        rows, logit_rows, targets.probs, n_visit, cfg.update_interval
    )
    order = torch.argsort(visited)  # node order: by (layer, pos, feature)
    selected, feature_rows = visited[order], feature_rows[order]
    feats = rows.active[selected]
    activations = [run.z[li][p, f] for li, p, f in feats.tolist()]
    return Graph(
        tokens=tokens.detach().cpu(),
        token_strs=tuple(token_str(model, t) for t in tokens.tolist()),
        n_layers=model.cfg.n_layers,
        features=feats,
        activations=torch.stack(activations).cpu() if activations else torch.zeros(0),
        logit_tokens=targets.tokens,
        logit_strs=_logit_strs(model, targets.tokens, cfg),
        logit_probs=targets.probs,
        logit_values=targets.values.detach().cpu(),
        adjacency=_assemble(selected, feature_rows, logit_rows, n_active).cpu(),
        config=cfg,
        n_active=n_active,
        backward_passes=rows.passes,
        seconds=time.perf_counter() - t0,
        prompt=prompt,
    )


def _assemble(selected: Tensor, feature_rows: Tensor, logit_rows: Tensor, n_active: int) -> Tensor:
    """The [n, n] adjacency from the rows over ``[active features | errors | tokens]``: keep
    the selected features' columns, append zero columns for the logits."""
    n_cols = logit_rows.shape[1]
    cols = torch.cat([selected, torch.arange(n_active, n_cols)]).to(logit_rows.device)
    n_f, n_src, k = len(selected), len(cols), len(logit_rows)
    adjacency = logit_rows.new_zeros(n_src + k, n_src + k)
    adjacency[:n_f, :n_src] = feature_rows[:, cols]
    adjacency[n_src:, :n_src] = logit_rows[:, cols]
    return adjacency


def _visit_features(
    rows: Rows, logit_rows: Tensor, probs: Tensor, n_visit: int, update_interval: int
) -> tuple[Tensor, Tensor]:
    """Compute the rows of ``n_visit`` active features, a batch per backward pass: all of
    them in order, or (capped) on circuit-tracer's schedule: rank the unvisited features by
    their influence on the logits through the rows so far, visit the next
    ``update_interval`` batches of them in rank order, rank again. Returns (indices into
    the active features [n_visit], rows [n_visit, n_cols])."""
    n_active = len(rows.active)
    done: list[Tensor] = []
    got: list[Tensor] = [logit_rows.new_zeros(0, rows.n_cols)]
    visited = torch.zeros(n_active, dtype=torch.bool)
    n_done = 0
    while n_done < n_visit:
        if n_visit == n_active:
            pending = torch.arange(n_active)
        else:
            matrix = torch.cat([logit_rows, *got])
            row_nodes = torch.cat([torch.full((len(logit_rows),), -1), *done]).long()
            infl = partial_influence(matrix, row_nodes.to(matrix.device), probs.to(matrix))
            rank = torch.argsort(infl[:n_active], descending=True).cpu()
            queue = min(update_interval * rows.batch, n_visit - n_done)
            pending = rank[~visited[rank]][:queue]
        for nxt in pending.split(rows.batch):
            got.append(rows.rows([tuple(rows.active[i].tolist()) for i in nxt]))
            done.append(nxt)
            visited[nxt] = True
            n_done += len(nxt)
    return torch.cat([torch.zeros(0, dtype=torch.long), *done]), torch.cat(got)


def token_str(model: HookedTransformer, token: int) -> str:
    """A token's text, or ``<id>`` for a model without a tokenizer."""
    tok = getattr(model, "tokenizer", None)
    return f"<{token}>" if tok is None else tok.decode([token])


def _logit_strs(model: HookedTransformer, toks: Tensor, cfg: GraphConfig) -> tuple[str, ...]:
    if cfg.target_tokens is not None:
        a, b = cfg.target_tokens
        return (f"{token_str(model, a)} - {token_str(model, b)}",)
    return tuple(token_str(model, t) for t in toks.tolist())
