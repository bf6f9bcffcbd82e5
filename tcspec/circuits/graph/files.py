"""A graph on disk: the graph JSON of circuit-tracer / Neuronpedia, and the full adjacency.

The JSON (``create_graph_files``'s format, ``schema_version`` 1) holds ``metadata``,
``qParams``, ``nodes`` and ``links`` of the *pruned* graph. Node ids and types:

| node | ``node_id`` | ``feature`` | ``layer`` | ``feature_type`` | ``jsNodeId`` |
|---|---|---|---|---|---|
| feature | ``{l}_{f}_{pos}`` | Cantor ``(l+f)(l+f+1)/2 + f`` | ``"l"`` | ``cross layer transcoder`` | ``{l}_{f}-0`` |
| error | ``{l}_-1_{pos}`` | -1 | ``"l"`` | ``mlp reconstruction error`` | ``{l}_-1-{pos}`` |
| token | ``E_{id}_{pos}`` | pos | ``"E"`` | ``embedding`` | ``E_{id}-{pos}`` |
| logit | ``{L+1}_{id}_{last}`` | id | ``"L+1"`` | ``logit`` | ``L_{id}-{last}`` |

(error ids as in circuit-tracer's ``frontend/graph_models.py``: the ``-1`` slot keeps them
apart from feature ids). A node's ``influence`` is its cumulative influence score (lower is
more important), a link's ``weight`` is ``A[target, source]``. Kept: nodes on a kept edge,
and every token and logit. The replacement and completeness scores are in
``metadata.scores``.

The adjacency file (safetensors) holds the unpruned graph at full precision:
``adjacency [n, n]``, ``features [n_features, 3]``, ``activations``, ``tokens``,
``logit_tokens``, ``logit_probs``, ``logit_values``; its metadata the config and ``n_layers``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tcspec.atomic import atomic_write, write_json
from tcspec.circuits.graph.attribute import Graph
from tcspec.circuits.graph.prune import Pruned, prune_graph, score_graph

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"


def cantor(layer: int, feature: int) -> int:
    """Neuronpedia's feature number for schema_version 1."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def display_token(s: str) -> str:
    return s.replace("\n", "\u23ce").replace("\t", "\u2192")


def _node(node_id, feature, layer, pos, kind, js, influence, activation=None, **extra) -> dict:
    out = {
        "node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
        "feature_type": kind, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
        "reverse_ctx_idx": 0, "jsNodeId": js, "clerp": "", "influence": influence,
        "activation": activation,
    }  # fmt: skip
    out.update(extra)
    return out


def node_records(graph: Graph, cumulative: torch.Tensor, clerps: dict | None = None) -> list:
    """One JSON node per graph node, in adjacency order."""
    clerps, c = clerps or {}, cumulative.tolist()
    out = []
    for i, (li, p, f) in enumerate(graph.features.tolist()):
        out.append(_node(f"{li}_{f}_{p}", cantor(li, f), str(li), p, FEATURE_TYPE,
                         f"{li}_{f}-0", c[i], float(graph.activations[i]),
                         clerp=clerps.get((li, f), "")))  # fmt: skip
    for li in range(graph.n_layers):
        for p in range(graph.n_pos):
            i = graph.error_index(li, p)
            out.append(_node(f"{li}_-1_{p}", -1, str(li), p, ERROR_TYPE, f"{li}_-1-{p}", c[i]))
    for p, t in enumerate(graph.tokens.tolist()):
        i = graph.token_start + p
        out.append(_node(f"E_{t}_{p}", p, "E", p, "embedding", f"E_{t}-{p}", c[i]))
    last, layer = graph.n_pos - 1, str(graph.n_layers + 1)
    for k, t in enumerate(graph.logit_tokens.tolist()):
        prob = float(graph.logit_probs[k])
        label = display_token(graph.logit_strs[k])
        out.append(_node(f"{layer}_{t}_{last}", t, layer, last, "logit", f"L_{t}-{last}", None,
                         token_prob=prob, is_target_logit=k == 0,
                         clerp=f'Output "{label}" (p={prob:.3f})'))  # fmt: skip
    return out


def graph_json(graph: Graph, slug: str, scan: str = "tcspec", transcoder_list=(),
               clerps: dict | None = None, pruned: Pruned | None = None) -> dict:  # fmt: skip
    """The graph JSON of the pruned graph. ``clerps`` maps (layer, feature) to a label."""
    pruned = pruned or prune_graph(graph)
    nodes = node_records(graph, pruned.cumulative, clerps)
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    A = graph.adjacency
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(A[t, s])}
        for t, s in zip(dst.tolist(), src.tolist())
    ]
    used = {x for link in links for x in (link["source"], link["target"])}
    kept = [n for n in nodes if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    cfg, scores = graph.config, score_graph(graph)
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": list(transcoder_list),
        "prompt_tokens": [display_token(s) for s in graph.token_strs],
        "prompt": graph.prompt,
        "node_threshold": cfg.node_threshold,
        "schema_version": SCHEMA_VERSION,
        "generation_settings": {
            "max_n_logits": cfg.max_n_logits,
            "desired_logit_prob": cfg.desired_logit_prob,
            "batch_size": cfg.batch_size,
            "update_interval": cfg.update_interval,
            "max_feature_nodes": cfg.max_feature_nodes,
        },
        "pruning_settings": {
            "node_threshold": cfg.node_threshold,
            "edge_threshold": cfg.edge_threshold,
        },  # fmt: skip
        "scores": {"replacement": scores.replacement, "completeness": scores.completeness},
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": kept, "links": links}


def write_graph_json(graph: Graph, path: str | Path, slug: str | None = None, **kw) -> Path:
    """Write `graph_json` (slug: the file's stem by default) atomically."""
    path = Path(path)
    return write_json(path, graph_json(graph, slug or path.stem, **kw), indent=None)


def write_adjacency(graph: Graph, path: str | Path) -> Path:
    """The unpruned graph at full precision, as safetensors."""
    tensors = {
        "adjacency": graph.adjacency, "features": graph.features,
        "activations": graph.activations, "tokens": graph.tokens,
        "logit_tokens": graph.logit_tokens, "logit_probs": graph.logit_probs,
        "logit_values": graph.logit_values,
    }  # fmt: skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "config": json.dumps(dataclasses.asdict(graph.config), sort_keys=True),
        "n_layers": str(graph.n_layers),
        "prompt": graph.prompt,
        "token_strs": json.dumps(list(graph.token_strs)),
        "logit_strs": json.dumps(list(graph.logit_strs)),
    }
    return atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))


def read_adjacency(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of `write_adjacency`."""
    return load_file(str(path))
