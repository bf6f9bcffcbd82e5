"""Attribution graphs through transcoders (circuit-tracer's definitions), for any prompt.

- `attribute`: `GraphConfig`, `Graph`, `attribution_graph` (the batched backward passes);
- `replacement`: the local replacement model the graph is exact in, and its refusals;
- `prune`: influence, pruning, replacement and completeness scores;
- `profile`: where a graph's influence lies (layers, positions), and two graphs' agreement;
- `interventions`: ablate and steer features in the model, against the graph's prediction;
- `files`: the graph JSON (circuit-tracer / Neuronpedia schema) and the adjacency file;
- `viewer`: a static HTML viewer that opens from disk.
"""

from tcspec.circuits.graph.attribute import Graph, GraphConfig, attribution_graph
from tcspec.circuits.graph.files import (
    graph_json,
    read_adjacency,
    write_adjacency,
    write_graph_json,
)
from tcspec.circuits.graph.interventions import (
    InterventionConfig,
    InterventionRow,
    Interventions,
    plot_interventions,
    run_interventions,
    write_interventions,
)
from tcspec.circuits.graph.profile import Profile, agreement, profile, profile_cells
from tcspec.circuits.graph.prune import Pruned, Scores, prune_graph, score_graph
from tcspec.circuits.graph.viewer import write_viewer

__all__ = [
    "Graph",
    "Profile",
    "agreement",
    "profile",
    "profile_cells",
    "GraphConfig",
    "InterventionConfig",
    "InterventionRow",
    "Interventions",
    "Pruned",
    "Scores",
    "attribution_graph",
    "graph_json",
    "plot_interventions",
    "prune_graph",
    "read_adjacency",
    "run_interventions",
    "score_graph",
    "write_adjacency",
    "write_graph_json",
    "write_interventions",
    "write_viewer",
]
