"""`circuits: [{task: attribution, ...}]` from a spec to files: the micro pipeline run in this
process task by task (as its Snakemake jobs would; conftest's ``micro_attribution_run``),
then every prompt's graph JSON (against Neuronpedia's required fields), adjacency, viewer,
interventions and the summary table."""

from __future__ import annotations

import json

import jsonschema
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tcspec import layout
from tcspec.models.load import read_model_json
from tests.pages_check import assert_pages_complete, browser, click_every_feature, needs_chromium

NODE = {
    "type": "object",
    "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
    "properties": {
        "node_id": {"type": "string"},
        "feature": {"type": "integer"},
        "layer": {"type": "string"},
        "ctx_idx": {"type": "integer"},
        "feature_type": {
            "enum": ["cross layer transcoder", "mlp reconstruction error", "embedding", "logit"]
        },
        "influence": {"type": ["number", "null"]},
    },
}
GRAPH_SCHEMA = {  # Neuronpedia's graph-schema.json: its required fields (FIELD.md section 6)
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt", "schema_version"],
            "properties": {"schema_version": {"const": 1}},
        },
        "nodes": {"type": "array", "items": NODE},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {"weight": {"type": "number"}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def run(micro_attribution_run):
    return micro_attribution_run


def test_each_prompt_gets_its_graph_files(run):
    results, plan = run
    first, second = plan.stage("circuits")
    (model,) = plan.stage("model")
    bos = read_model_json(model.dir(results))["bos_token_id"]
    assert len(first.config.circuit.prompts) == 2 and second.config.circuit.prompts_file is None
    for task, n_prompts in ((first, 2), (second, 1)):
        out = task.dir(results)
        rows = pd.read_csv(out / layout.ATTRIBUTION)
        assert len(rows) == n_prompts
        assert list(rows["prompt"]) == task.config.circuit.prompts
        for i, row in rows.iterrows():
            folder = layout.prompt_dir(out, i)
            data = json.loads((out / row["graph"]).read_text())
            jsonschema.validate(data, GRAPH_SCHEMA)
            meta = data["metadata"]
            assert meta["prompt"] == row["prompt"]
            types = {n["feature_type"] for n in data["nodes"]}
            assert {"cross layer transcoder", "embedding", "logit"} <= types
            # all features traced: some error node carries enough influence to be kept
            assert ("mlp reconstruction error" in types) == (task is first)
            for score in ("replacement", "completeness"):
                assert 0 <= meta["scores"][score] <= 1
                assert meta["scores"][score] == pytest.approx(row[score])
            adjacency = load_file(folder / layout.ADJACENCY)
            n_feat = adjacency["features"].shape[0]
            assert (
                int(adjacency["tokens"][0]) == bos and len(meta["prompt_tokens"]) == row["tokens"]
            )
            n_pos, n_logits = row["tokens"], len(adjacency["logit_tokens"])
            n_nodes = (
                n_feat + 1 * n_pos + n_pos + n_logits
            )  # one layer: one error node per position
            assert adjacency["adjacency"].shape == (n_nodes, n_nodes)
            assert n_feat == row["features_in_graph"] <= row["features_active"]
            assert torch.isfinite(adjacency["adjacency"]).all()
            interventions = pd.read_csv(folder / layout.INTERVENTIONS)
            assert set(interventions["mode"]) == {"ablate", "steer"}
            assert set(interventions["model"]) == {"live", "frozen"}
            assert len(interventions) == 2 * 2 * min(10, n_feat)
            assert (folder / layout.INTERVENTIONS_PLOT).stat().st_size > 1000
            html = (folder / layout.VIEWER).read_text()
            assert "dashboard/features/{feature}.html" in html and "http://" not in html.replace(
                "http://www.w3.org/2000/svg", ""
            )
        index = json.loads((out / layout.GRAPH_METADATA).read_text())["graphs"]
        assert [g["slug"] + ".json" for g in index] == list(rows["graph"])
    # the target entry: one logit node, the difference "8" - "7", with probability 1
    data = json.loads(layout.graph_json(second.dir(results), "tc-single", 0).read_text())
    (logit,) = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert (
        logit["token_prob"] == 1.0
        and data["metadata"]["generation_settings"]["max_feature_nodes"] == 20
    )


def test_every_node_of_a_graph_has_its_feature_page_and_card(run):
    results, plan = run
    for task in plan.stage("circuits"):
        assert_pages_complete(task.dir(results))


@needs_chromium
def test_clicking_every_feature_node_shows_its_card(run):
    results, plan = run
    with browser() as b:
        page = b.new_page()
        for task in plan.stage("circuits"):
            for folder in sorted(task.dir(results).glob("prompt-*")):
                assert click_every_feature(page, folder / layout.VIEWER) > 0


def test_the_table_gathers_every_prompt(run):
    results, plan = run
    (tables,) = plan.stage("tables")
    shown = layout.tables_dir(results, tables.config.experiment)
    frame = pd.read_csv(shown / "attribution.csv")
    assert len(frame) == 3 and set(frame["dictionary"]) == {"tc-single"}
    assert frame["replacement"].between(0, 1).all() and frame["completeness"].between(0, 1).all()
    assert (frame["nodes_kept"] > 0).all()
    # with attention and norms frozen the graph is exact: its predictions match the model
    assert (frame["intervention_r_frozen"] > 0.99).all()
    index = (shown / "index.md").read_text()
    assert "Attribution graphs" in index


def test_circuit_tracers_local_server_lists_and_opens_the_graphs(run):
    """Where circuit-tracer is importable (it pins another TransformerLens, so usually in a
    venv of its own): its local server, serving an attribution task's folder as its data
    folder, lists the graphs and serves each graph and its features' files."""
    import urllib.request

    local_server = pytest.importorskip("circuit_tracer.frontend.local_server")
    results, plan = run
    out = plan.stage("circuits")[0].dir(results)
    server = local_server.serve(data_dir=str(out), port=8041)
    try:

        def get(path):
            with urllib.request.urlopen(f"http://localhost:8041{path}", timeout=10) as r:
                return json.loads(r.read())

        graphs = get("/data/graph-metadata.json")["graphs"]
        assert graphs
        for g in graphs:
            data = get(f"/graph_data/{g['slug']}.json")
            scan = data["metadata"]["scan"].removeprefix(".")
            feature = next(
                n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"
            )
            assert get(f"{scan}/{feature['feature']}.json")["examples_quantiles"]
    finally:
        server.stop()
