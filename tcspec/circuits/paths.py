"""Greedy path search from a root, and assembly of the paths into a graph with error nodes.

Search (Dunefsky et al. 2024, "Circuit analysis with transcoders"): a path starts at the
root; each iteration expands the last node of every path on the frontier into its
``branches`` upstream candidates with the largest attribution (transcoder features at the
same position, ``(head, source token)`` pairs, the embedding, a skip transcoder's linear
path), and keeps the ``top_paths`` new paths with the largest attribution as the next
frontier. With ``ignore_bos``, heads reading from the BOS position (source 0) are no
candidates: their contribution stays in the node's unexplained error, as in the paper's
code. A path's attribution is the contribution
of its last node to the root along that path. Attributions are averaged over the prompts of a
batch (prompts share a template, so positions align); candidates rank by the absolute mean.

Graph: the union of the kept paths, as a DAG from upstream nodes to the root. A node reached
along several kept edges is pulled back with the sum of their vectors, so its attribution is
its contribution to the root through every kept edge at once, and the weight of an edge
``u -> w`` is ``u``'s contribution to ``w``'s attribution. Every node with kept incoming edges
gets three error nodes, so that

    attribution(w) = sum of kept incoming edge weights
                     + error_transcoder   (transcoder reconstruction errors upstream of w,
                                           and whole MLPs of layers without a transcoder)
                     + error_bias         (attention and transcoder output biases, the
                                           node's own encoder bias, the unembedding bias)
                     + error_unexplained  (every candidate the search did not keep)

for each prompt (and so for the mean). ``checks`` in the graph holds the largest gap seen:
``node_sum_gap`` (the bookkeeping above) and ``completeness_gap`` (the node's value computed
from the traced residual stream against the sum of all of its parts).

``graph.json`` schema (``Graph.to_json``)::

    {"schema": "tcspec.circuit_graph/1",
     "root": node id, "prompts": n, "positions": [token text of each position, or "*" where
     the prompts differ], "settings": {iterations, branches, top_paths},
     "nodes": [{"id", "type", "layer", "feature", "head", "position", "source_position",
                "attribution", "token"}],
     "edges": [{"source": upstream id, "target": downstream id, "weight"}],
     "paths": [{"nodes": [ids, root first], "attribution"}],
     "checks": {"node_sum_gap", "completeness_gap"}}

Types: ``logit`` (a logit-direction root), ``feature``, ``head`` (``position`` is the
destination, ``source_position`` the source), ``embed``, ``skip``, ``error_transcoder``,
``error_bias``, ``error_unexplained``. A feature root has type ``feature`` and is named by
``root``. Attributions and weights are means over prompts, in the root's units.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tcspec.circuits.attribution import Attributor, Node, State

SCHEMA = "tcspec.circuit_graph/1"


def level(node: Node) -> int:
    """Where a node writes into the residual stream (writer index of attribution.py); the
    root (a reader of everything) ranks above all."""
    if node.kind in ("feature", "skip"):
        return 2 * node.layer + 2
    if node.kind == "head":
        return 2 * node.layer + 1
    if node.kind == "embed":
        return 0
    return 10**9


@dataclass(frozen=True)
class Path:
    """Nodes from the root upstream, and the last node's attribution along the path."""

    nodes: tuple[Node, ...]
    attribution: float

    def text(self) -> str:
        return " <- ".join(n.id for n in self.nodes) + f"  ({self.attribution:+.4g})"


def _check_settings(iterations: int, branches: int, top_paths: int) -> None:
    for name, value in (
        ("iterations", iterations),
        ("branches", branches),
        ("top_paths", top_paths),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def find_paths(
    att: Attributor,
    root: Node,
    root_state: State,
    iterations: int,
    branches: int,
    top_paths: int,
    ignore_bos: bool = False,
) -> list[Path]:
    """Greedy path search (see the module docstring); paths of every length found, sorted
    by absolute attribution, at most ``iterations * top_paths``. With ``ignore_bos``, heads
    reading from position 0 are never candidates."""
    _check_settings(iterations, branches, top_paths)
    frontier: list[tuple[Path, State]] = [
        (Path((root,), float(att.value(root_state).mean())), root_state)
    ]
    found: list[Path] = []
    for _ in range(iterations):
        candidates = []
        for path, state in frontier:
            contrib = att.contributions(state)
            values, blocks = contrib.flat()  # [n, N]
            mean = values.mean(0)  # [N]
            if ignore_bos:
                mean = mean.masked_fill(contrib.head_source_mask(blocks, 0), 0.0)
            top = mean.abs().topk(min(branches, mean.numel()))
            for score, j in zip(top.values.tolist(), top.indices.tolist()):
                if score == 0:
                    break
                node = contrib.node_at(blocks, j)
                candidates.append((Path(path.nodes + (node,), float(mean[j])), state))
        candidates.sort(key=lambda c: -abs(c[0].attribution))
        frontier = []
        for path, state in candidates[:top_paths]:
            found.append(path)
            if path.nodes[-1].expandable:
                frontier.append((path, att.child(state, path.nodes[-1])))
        if not frontier:
            break
    return sorted(found, key=lambda p: -abs(p.attribution))


@dataclass
class Graph:
    """Merged paths with error nodes (see the module docstring). Per-prompt values are kept
    for checks and ablations; `to_json` writes means."""

    root: Node
    nodes: dict[Node, Tensor]  # node -> attribution [n]
    edges: dict[tuple[Node, Node], Tensor]  # (upstream, downstream) -> weight [n]
    errors: dict[tuple[str, Node], Tensor]  # (error type, node it feeds) -> [n]
    paths: list[Path]
    checks: dict[str, float] = field(default_factory=dict)
    settings: dict[str, int] = field(default_factory=dict)

    def to_json(self, positions: list[str] | None = None) -> dict:
        def record(node: Node, value: Tensor) -> dict:
            return {
                "id": node.id,
                "type": node.kind,
                "layer": node.layer,
                "feature": node.index if node.kind == "feature" else None,
                "head": node.index if node.kind == "head" else None,
                "position": node.pos,
                "source_position": node.src,
                "attribution": float(value.mean()),
                "token": _token(positions, node.src if node.kind == "head" else node.pos),
            }

        nodes = [record(self.root, self.nodes[self.root])]
        nodes += [record(n, v) for n, v in self.nodes.items() if n != self.root]
        edges = [
            {"source": u.id, "target": w.id, "weight": float(x.mean())}
            for (u, w), x in self.edges.items()
        ]
        for (kind, target), x in self.errors.items():
            eid = error_id(kind, target)
            nodes.append({"id": eid, "type": kind, "layer": None, "feature": None, "head": None,
                          "position": target.pos, "source_position": None,
                          "attribution": float(x.mean()), "token": _token(positions, target.pos)})  # fmt: skip
            edges.append({"source": eid, "target": target.id, "weight": float(x.mean())})
        return {
            "schema": SCHEMA,
            "root": self.root.id,
            "prompts": int(self.nodes[self.root].numel()),
            "positions": positions,
            "settings": self.settings,
            "nodes": nodes,
            "edges": edges,
            "paths": [
                {"nodes": [n.id for n in p.nodes], "attribution": p.attribution} for p in self.paths
            ],
            "checks": dict(self.checks),
        }


def error_id(kind: str, target: Node) -> str:
    """Id of an error node: ``err_transcoder>F1.5@7``."""
    return f"err_{kind.removeprefix('error_')}>{target.id}"


def _token(positions: list[str] | None, pos: int | None) -> str | None:
    return positions[pos] if positions is not None and pos is not None else None


@torch.no_grad()
def build_graph(att: Attributor, root: Node, root_state: State, paths: list[Path]) -> Graph:
    """Merge ``paths`` (all starting at ``root``) into a `Graph` with error nodes."""
    parents: dict[Node, list[Node]] = defaultdict(list)
    children: dict[Node, list[Node]] = defaultdict(list)
    for path in paths:
        if path.nodes[0] != root:
            raise ValueError(f"path {path.text()} does not start at the root {root.id}")
        for downstream, upstream in zip(path.nodes, path.nodes[1:]):
            if upstream not in children[downstream]:
                children[downstream].append(upstream)
                parents[upstream].append(downstream)
    states = {root: root_state}
    values = {root: att.value(root_state)}
    edges: dict[tuple[Node, Node], Tensor] = {}
    order = sorted(parents, key=lambda n: (-level(n), -n.pos))  # downstream first
    for node in order:
        for p in parents[node]:  # every parent is finished: it lies downstream
            edges[(node, p)] = att.contribution(states[p], node)
        values[node] = sum(edges[(node, p)] for p in parents[node])
        if node.expandable:
            states[node] = _sum(att.child(states[p], node) for p in parents[node])
    errors: dict[tuple[str, Node], Tensor] = {}
    node_gap = completeness_gap = 0.0
    for node, ups in children.items():
        state = states[node]
        contrib = att.contributions(state)
        kept = sum(edges[(u, node)] for u in ups)
        parts = {
            "error_transcoder": contrib.errors_total(),
            "error_bias": contrib.biases_total() + state.bias,
            "error_unexplained": contrib.candidates_total() - kept,
        }
        errors.update({(k, node): v for k, v in parts.items()})
        node_gap = max(node_gap, _gap(values[node], kept + sum(parts.values())))
        completeness_gap = max(
            completeness_gap, _gap(att.value(state), contrib.total() + state.bias)
        )
    return Graph(
        root=root,
        nodes={root: values[root]} | {n: values[n] for n in order},
        edges=edges,
        errors=errors,
        paths=list(paths),
        checks={"node_sum_gap": node_gap, "completeness_gap": completeness_gap},
    )


def _sum(states) -> State:
    it = iter(states)
    total = next(it)
    for s in it:
        total = total + s
    return total


def _gap(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())
