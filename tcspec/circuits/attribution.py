"""Attribution through transcoders: the linear pieces a feature circuit is built from.

The model is a processed TransformerLens ``HookedTransformer`` (``fold_ln``: every norm is
``LNPre``, ``x_norm = (x - mean(x)) / scale``, or ``RMSPre`` without the centring) whose MLPs
are explained by transcoders, one per layer. On a batch of prompts, three things are held
fixed at their values on the prompt: every norm's scale, every attention pattern, and which
transcoder features are active. With them fixed, everything a node reads is linear in the
residual stream, and a node's value splits exactly into the contributions of the things
written into that stream:

- the embedding (token + position) at the node's position,
- each attention head ``(l, h)`` and source token ``s``:
  ``A[l,h](t, s) * (x_norm1[l](s) W_V W_O) . v`` (the pattern held fixed),
- each transcoder feature ``i`` of an earlier MLP at the same position: ``z_i * (f_dec_i . v)``,
- a skip transcoder's linear path ``(x_in W_skip) . v``,
- constants: attention output biases (value biases included), transcoder output biases,
  and the transcoder's reconstruction error ``(mlp_out - tc_out) . v``
  (or the whole MLP output of a layer without a transcoder).

Here ``v`` is the node's *pullback*: a vector in the residual stream such that the node's
value is ``v . resid(t) + bias``. Expanding a contribution into a node of its own pulls the
vector back once more (Dunefsky et al. 2024, "Circuit analysis with transcoders"):

- feature ``i`` at layer ``m``, reached with ``v``: ``c = f_dec_i . v`` (input-invariant
  weight) times the activation ``z_i`` (input-dependent) is its attribution; its own value
  is linear in its pre-activation, so ``v' = c * 1[z_i > 0] * N_m(f_enc_i)`` and
  ``bias' = c * 1[z_i > 0] * (b_enc_i - f_enc_i . b_dec)``, where ``N(w) = centre(w) / scale``
  is the pullback through a norm with its scale frozen (identity for a transcoder that reads
  the raw residual stream);
- head ``(l, h)``, source ``s``, reached with ``v`` at destination ``t``:
  ``v' = A(t, s) * N1_l,s(W_V W_O v)`` at position ``s``;
- a logit direction ``W_U w`` (``w = e_a - e_b`` or any weights over the vocabulary):
  ``v = N_final(W_U w)``, ``bias = b_U . w``.

Where nodes read: the residual stream is indexed by *reader* positions. Writers are numbered
``embed = 0``, ``attn l = 2l + 1``, ``mlp l = 2l + 2``; a reader at index ``r`` sees the writers
below ``r``. Attention ``l`` reads at ``2l + 1``; MLP ``l`` at ``2l + 2`` in a sequential block
(GPT-2: it sees attention ``l``) and at ``2l + 1`` in a parallel one (Pythia:
``cfg.parallel_attn_mlp``); the unembedding at ``2 n_layers + 1``.

Prompts are batched: every vector carries a leading prompt dimension ``n`` and prompts must
share their length, so a position means the same template slot in each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tcspec.circuits.graph.dictionaries import as_dictionaries, visible_decoder
from tcspec.circuits.trace import (  # noqa: F401 (re-exported: the attribution API)
    Trace,
    Transcoders,
    check_transcoders,
    total_feature_attributions,
    trace,
)
from tcspec.models.load import NORM_CENTRES, centre


# ----------------------------------------------------------------------------- nodes
class Node(NamedTuple):
    """One node of a circuit. ``kind`` is one of:

    ``logit`` (root: a logit direction at ``pos``), ``feature`` (``layer``, ``index`` = feature,
    ``pos``), ``head`` (``layer``, ``index`` = head, ``pos`` = destination, ``src`` = source),
    ``embed`` (``pos``), ``skip`` (a skip transcoder's linear path at ``layer``, ``pos``).
    """

    kind: str
    layer: int | None
    index: int | None
    pos: int
    src: int | None = None

    @property
    def id(self) -> str:
        """Short readable id: ``F1.123@7``, ``H0.2@7<3``, ``E@3``, ``S0@7``, ``L@13``."""
        if self.kind == "feature":
            return f"F{self.layer}.{self.index}@{self.pos}"
        if self.kind == "head":
            return f"H{self.layer}.{self.index}@{self.pos}<{self.src}"
        if self.kind == "embed":
            return f"E@{self.pos}"
        if self.kind == "skip":
            return f"S{self.layer}@{self.pos}"
        return f"L@{self.pos}"

    @property
    def expandable(self) -> bool:
        """Whether the node's value is linear in the residual stream it reads."""
        return self.kind in ("logit", "feature", "head", "skip")


@dataclass
class State:
    """A node's value as a linear function of the residual stream read at ``reader``:
    ``value = v . resid[reader][:, pos] + bias`` for each prompt."""

    v: Tensor  # [n, d_model]
    reader: int
    pos: int
    bias: Tensor  # [n]

    def __add__(self, other: State) -> State:
        if (self.reader, self.pos) != (other.reader, other.pos):
            raise ValueError("states read different places and cannot be summed")
        return State(self.v + other.v, self.reader, self.pos, self.bias + other.bias)


@dataclass
class Contributions:
    """The exact split of a state's ``v . resid`` into what wrote the residual stream.

    Candidates (nodes of their own): ``embed`` [n], ``heads[l]`` [n, n_heads, pos + 1],
    ``features[m]`` [n, d_sae], ``skip[m]`` [n]. Constants: ``errors[m]`` [n] (transcoder
    reconstruction error, or the whole MLP of a layer without a transcoder) and
    ``biases[name]`` [n].
    """

    pos: int
    embed: Tensor
    heads: dict[int, Tensor] = field(default_factory=dict)
    features: dict[int, Tensor] = field(default_factory=dict)
    skip: dict[int, Tensor] = field(default_factory=dict)
    errors: dict[int, Tensor] = field(default_factory=dict)
    biases: dict[str, Tensor] = field(default_factory=dict)

    def flat(self) -> tuple[Tensor, list[tuple[str, int | None, int]]]:
        """All candidates side by side: ``(values [n, N], blocks)``; ``blocks`` lists
        ``(kind, layer, width)`` in column order (decode a column with `node_at`)."""
        cols, blocks = [self.embed[:, None]], [("embed", None, 1)]
        for layer, h in sorted(self.heads.items()):
            cols.append(h.flatten(1))  # [n, n_heads * (pos + 1)]
            blocks.append(("head", layer, h.shape[1] * h.shape[2]))
        for layer, f in sorted(self.features.items()):
            cols.append(f)
            blocks.append(("feature", layer, f.shape[1]))
        for layer, s in sorted(self.skip.items()):
            cols.append(s[:, None])
            blocks.append(("skip", layer, 1))
        return torch.cat(cols, dim=1), blocks

    def node_at(self, blocks: list[tuple[str, int | None, int]], column: int) -> Node:
        """The node of column ``column`` of `flat`'s values."""
        for kind, layer, width in blocks:
            if column < width:
                if kind == "embed":
                    return Node("embed", None, None, self.pos)
                if kind == "head":
                    head, src = divmod(column, self.pos + 1)
                    return Node("head", layer, head, self.pos, src)
                if kind == "feature":
                    return Node("feature", layer, column, self.pos)
                return Node("skip", layer, None, self.pos)
            column -= width
        raise IndexError("column out of range")

    def head_source_mask(self, blocks: list[tuple[str, int | None, int]], src: int) -> Tensor:
        """[N] bool: the columns of `flat`'s values that are heads reading from ``src``."""
        masks = []
        for kind, _, width in blocks:
            mask = torch.zeros(width, dtype=torch.bool, device=self.embed.device)
            if kind == "head":
                mask[src :: self.pos + 1] = True  # columns are head * (pos + 1) + source
            masks.append(mask)
        return torch.cat(masks)

    def candidates_total(self) -> Tensor:
        """Sum of every candidate's contribution: [n]."""
        return self.flat()[0].sum(1)

    def errors_total(self) -> Tensor:
        return sum(self.errors.values(), torch.zeros_like(self.embed))

    def biases_total(self) -> Tensor:
        return sum(self.biases.values(), torch.zeros_like(self.embed))

    def total(self) -> Tensor:
        """``v . resid`` reassembled from its parts: [n]."""
        return self.candidates_total() + self.errors_total() + self.biases_total()


# ----------------------------------------------------------------------------- primitives
def norm_pullback(w: Tensor, scale: Tensor, centred: bool) -> Tensor:
    """Pull a direction ``w`` on a norm's output back to its input, the scale held fixed:
    ``w . (centre(x) / scale) == norm_pullback(w) . x``. w [n, d], scale [n] -> [n, d]."""
    return (centre(w) if centred else w) / scale[:, None]


def feature_attributions(v: Tensor, z: Tensor, W_dec: Tensor) -> Tensor:
    """Attribution of every feature of a transcoder to a node with pullback ``v``:
    ``z_i * (f_dec_i . v)``. v [n, d_out], z [n, d_sae], W_dec [d_sae, d_out] -> [n, d_sae]."""
    return z * (v @ W_dec.T)  # [n, d_sae]


def ov_pullback(v: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:
    """``W_V W_O v`` for every head: v [n, d], W_V [h, d, d_head], W_O [h, d_head, d] ->
    [n, h, d]."""
    Ov = torch.einsum("hkd,nd->nhk", W_O, v)  # [n, h, d_head]
    return torch.einsum("hek,nhk->nhe", W_V, Ov)  # [n, h, d]


def head_attributions(
    v: Tensor, pattern: Tensor, x_norm: Tensor, W_V: Tensor, W_O: Tensor
) -> Tensor:
    """Attribution of every (head, source token) to a node at destination ``t`` with pullback
    ``v``, patterns fixed: ``A(t, s) * (x_norm(s) W_V W_O) . v``.

    v [n, d], pattern [n, h, S] (row ``t`` of the pattern, sources ``0..S-1``), x_norm
    [n, S, d] (the attention layer's normalized input at the sources) -> [n, h, S].
    """
    u = ov_pullback(v, W_V, W_O)  # [n, h, d]
    return pattern * torch.einsum("nsd,nhd->nhs", x_norm, u)  # [n, h, S]


def logit_diff_weights(d_vocab: int, a: list[list[int]], b: list[list[int]]) -> Tensor:
    """Per-prompt weights over the vocabulary for the root ``W_U (e_a - e_b)``: the mean of the
    one-hots of ``a[n]`` minus that of ``b[n]`` (a single token each for a plain logit
    difference). Returns [n, d_vocab]; ``ValueError`` on an empty group or a token out of
    range."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} answer groups but {len(b)} counterfactual groups")
    w = torch.zeros(len(a), d_vocab)
    for n, (pos, neg) in enumerate(zip(a, b)):
        for group, sign in ((pos, 1.0), (neg, -1.0)):
            if not group:
                raise ValueError(f"prompt {n}: an answer group is empty")
            bad = [t for t in group if not 0 <= t < d_vocab]
            if bad:
                raise ValueError(f"prompt {n}: token ids {bad} are outside the vocabulary")
            w[n, list(group)] += sign / len(group)
    return w


# ----------------------------------------------------------------------------- attributor
class Attributor:
    """Contributions and pullbacks of nodes on one traced batch of prompts."""

    def __init__(self, model: HookedTransformer, coders: Transcoders, traced: Trace):
        self.model, self.dicts, self.trace = model, as_dictionaries(coders), traced
        cfg = model.cfg
        self.n_layers, self.parallel = cfg.n_layers, bool(cfg.parallel_attn_mlp)
        self.centred = NORM_CENTRES[cfg.normalization_type]
        self.n, self.seq = traced.tokens.shape
        attn = [model.blocks[li].attn for li in range(cfg.n_layers)]
        self.W_V = [a.W_V.detach() for a in attn]  # [h, d, d_head]
        self.W_O = [a.W_O.detach() for a in attn]  # [h, d_head, d]
        self.b_O = [a.b_O.detach() for a in attn]  # [d]
        # a head's value bias reaches the output through W_O, weighted by its pattern row
        self.bV_O = [torch.einsum("hk,hkd->hd", a.b_V, a.W_O).detach() for a in attn]  # [h, d]

    # reader indices ---------------------------------------------------------------
    def attn_reader(self, layer: int) -> int:
        return 2 * layer + 1

    def mlp_reader(self, layer: int) -> int:
        return 2 * layer + (1 if self.parallel else 2)

    @property
    def final_reader(self) -> int:
        return 2 * self.n_layers + 1

    # roots ------------------------------------------------------------------------
    @torch.no_grad()
    def logit_root(self, weights: Tensor, pos: int) -> State:
        """Root ``W_U w`` at ``pos``: weights [n, d_vocab] (see `logit_diff_weights`)."""
        self._check_pos(pos, "root position")
        W_U, b_U = self.model.W_U.detach(), self.model.b_U.detach()
        if weights.shape != (self.n, W_U.shape[1]):
            raise ValueError(
                f"root weights must be [{self.n}, {W_U.shape[1]}], got {tuple(weights.shape)}"
            )
        w = weights.to(W_U)
        v = norm_pullback(w @ W_U.T, self.trace.final_scale[:, pos], self.centred)  # [n, d]
        return State(v, self.final_reader, pos, w @ b_U)

    @torch.no_grad()
    def feature_root(self, layer: int, index: int, pos: int) -> State:
        """Root at transcoder feature ``index`` of ``layer`` at ``pos``: its activation."""
        if layer not in self.dicts.layers:
            raise ValueError(
                f"root layer {layer}: no transcoder there (layers {list(self.dicts.layers)})"
            )
        d_sae = self.dicts.encoder(layer).shape[1]
        if not 0 <= index < d_sae:
            raise ValueError(f"root feature {index} is out of range for d_sae {d_sae}")
        self._check_pos(pos, "root position")
        one = torch.ones(self.n, dtype=self.trace.embed.dtype, device=self.trace.embed.device)
        return self._feature_state(layer, index, pos, one)

    def _check_pos(self, pos: int, what: str) -> None:
        if not 0 <= pos < self.seq:
            raise ValueError(f"{what} {pos} is outside the prompts' {self.seq} tokens")

    # values -----------------------------------------------------------------------
    @torch.no_grad()
    def value(self, state: State) -> Tensor:
        """The node's value computed from the traced residual stream: [n]."""
        x = self.trace.resid[state.reader][:, state.pos]  # [n, d]
        return (state.v * x).sum(-1) + state.bias

    @torch.no_grad()
    def contributions(self, state: State) -> Contributions:
        """Split ``state.v . resid`` into everything written before ``state.reader``."""
        tr, v, t, r = self.trace, state.v, state.pos, state.reader
        out = Contributions(pos=t, embed=(v * tr.embed[:, t]).sum(-1))
        for li in range(self.n_layers):
            if 2 * li + 1 < r:
                pattern = tr.pattern[li][:, :, t, : t + 1]  # [n, h, t + 1]
                x1 = tr.ln1_normalized[li][:, : t + 1]  # [n, t + 1, d]
                out.heads[li] = head_attributions(v, pattern, x1, self.W_V[li], self.W_O[li])
                rows = pattern.sum(-1)  # [n, h]: one, up to rounding
                out.biases[f"attn{li}"] = v @ self.b_O[li] + (rows * (v @ self.bV_O[li].T)).sum(-1)
            if 2 * li + 2 < r:
                self._mlp_contributions(out, li, v)
        return out

    def _mlp_contributions(self, out: Contributions, m: int, v: Tensor) -> None:
        """Add what MLP m wrote, read with pullback ``v`` at position ``out.pos``: the
        features of each source layer writing m (summed over the layers a source writes),
        the output bias, the skip path and the reconstruction error (or the whole MLP)."""
        tr, d, t = self.trace, self.dicts, out.pos
        if not d.writes_to(m):
            out.errors[m] = (tr.mlp_out[m][:, t] * v).sum(-1)
            return
        vc = v.to(d.dtype)
        for li in d.sources(m):
            f = feature_attributions(vc, tr.z[li][:, t], d.decoders(li)[m]).to(v.dtype)
            out.features[li] = f if li not in out.features else out.features[li] + f
        out.biases[f"tc{m}"] = vc @ d.out_bias(m)
        if d.has_skip(m):
            out.skip[m] = ((tr.coder_in[m][:, t] @ d.skip_weight(m)) * vc).sum(-1)
        out.errors[m] = ((tr.mlp_out[m][:, t] - tr.tc_out[m][:, t]) * v).sum(-1)

    def contribution(self, state: State, node: Node) -> Tensor:
        """One candidate's entry of ``contributions(state)``: [n]."""
        if node.kind == "embed":
            return (state.v * self.trace.embed[:, state.pos]).sum(-1)
        if node.kind in ("feature", "head", "skip"):
            return self.value(self.child(state, node))
        raise ValueError(f"a {node.kind} node is not a contribution")

    # pullbacks --------------------------------------------------------------------
    @torch.no_grad()
    def child(self, state: State, node: Node) -> State:
        """The state of ``node`` as reached from ``state`` (its contribution is its value)."""
        if node.pos != state.pos:
            raise ValueError(f"{node.id} does not write to position {state.pos}")
        if node.kind == "feature":
            self._check_writer(state, 2 * node.layer + 2, node)
            # f_dec . v, f_dec: what the feature writes into the MLPs before the reader
            W = visible_decoder(self.dicts, node.layer, (state.reader - 1) // 2)  # [F, d]
            coeff = state.v.to(W.dtype) @ W[node.index]  # [n]
            return self._feature_state(node.layer, node.index, node.pos, coeff)
        if node.kind == "head":
            self._check_writer(state, 2 * node.layer + 1, node)
            li, h, s = node.layer, node.index, node.src
            u = ov_pullback(state.v, self.W_V[li][h : h + 1], self.W_O[li][h : h + 1])[
                :, 0
            ]  # [n, d]
            a = self.trace.pattern[li][:, h, node.pos, s]  # [n]
            v = a[:, None] * norm_pullback(u, self.trace.ln1_scale[li][:, s], self.centred)
            return State(v, self.attn_reader(li), s, torch.zeros_like(a))
        if node.kind == "skip":
            self._check_writer(state, 2 * node.layer + 2, node)
            W_skip = self.dicts.skip_weight(node.layer)  # [d, d]
            u = (state.v.to(W_skip.dtype) @ W_skip.T).to(state.v.dtype)  # [n, d]
            v = self._coder_pullback(node.layer, node.pos, u)
            return State(v, self.mlp_reader(node.layer), node.pos, torch.zeros_like(state.bias))
        raise ValueError(f"a {node.kind} node has nothing upstream to expand")

    def _check_writer(self, state: State, writer: int, node: Node) -> None:
        if writer >= state.reader:
            raise ValueError(f"{node.id} is not upstream of a node reading at {state.reader}")

    def _coder_pullback(self, layer: int, pos: int, w: Tensor) -> Tensor:
        tr = self.trace
        return norm_pullback(w, tr.coder_scale[layer][:, pos], tr.coder_centred[layer])

    def _feature_state(self, layer: int, index: int, pos: int, coeff: Tensor) -> State:
        """State of feature ``index`` reached with weight ``coeff`` [n] (``f_dec . v``)."""
        d = self.dicts
        gate = (self.trace.z[layer][:, pos, index] > 0).to(coeff.dtype)  # [n]
        k = coeff * gate  # [n]
        f_enc = d.encoder(layer)[:, index]  # [d_in]
        dtype = self.trace.embed.dtype
        v = self._coder_pullback(layer, pos, k[:, None].to(dtype) * f_enc.to(dtype))  # [n, d]
        bias = k * (d.encoder_bias(layer)[index] - f_enc @ d.input_bias(layer))  # [n]
        return State(v, self.mlp_reader(layer), pos, bias.to(dtype))
