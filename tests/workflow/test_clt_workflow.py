"""A cross-layer transcoder through the pipeline: the spec compiles to one `clt` train task
per sweep point (resources from `clt_cost`), the micro spec's tasks run in order (the jobs
Snakemake would run, in this process), the CLT evaluates spliced into both layers beside
the per-layer transcoders, lands in the tables, and its circuit-tracer export loads back
exactly."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tcspec import layout
from tcspec.dictionaries import clt_io
from tcspec.models.hooks import full_name
from tcspec.plan import compile_plan, group_task
from tcspec.plan.cost import clt_cost
from tcspec.plan.stages import STAGES
from tcspec.plan.store import save_task
from tcspec.spec.loader import SpecError, load_spec, parse_spec
from tcspec.tasks import run_task
from tcspec.training import CHECKPOINT
from tcspec.vocab import TRAINING_FILE
from tests.pages_check import assert_pages_complete, browser, click_every_feature, needs_chromium

ROOT = Path(__file__).resolve().parents[2]
MICRO_CLT = ROOT / "tests" / "workflow" / "micro_clt.yaml"


def test_plan_has_one_clt_task_per_sweep_point():
    spec = load_spec(MICRO_CLT)
    text = (
        MICRO_CLT.read_text()
        .replace("    k: 8\n    lr: 1.0e-3", "    k: [4, 8]\n    lr: 1.0e-3", 1)
        .replace("dictionary: {name: clt}", "dictionary: {name: clt, where: {k: 8}}")
    )
    swept = compile_plan(parse_spec(text, str(MICRO_CLT), MICRO_CLT.parent))
    plan = compile_plan(spec)
    (clt,) = plan.stage("clt")
    assert [t.config.opts.k for t in swept.stage("clt")] == [4, 8]
    assert clt.config.layers == (0, 1) and clt.config.d_sae == 64 and clt.config.steps == 128
    assert all(clt.id not in g for g in plan.groups)  # its own loop, not a training pass
    cost = clt_cost(clt.config.shape(), 64, 128)
    assert clt.resources["flops"] == cost.flops and clt.resources["params"] == cost.params
    # 2 layers x (32 x 64 encoder) + 64 x 32 x 3 decoder blocks + biases
    assert cost.params == 2 * 32 * 64 + 64 * 32 * 3 + 2 * 64 + 2 * 32
    (acts,) = plan.stage("acts")
    hooks = {full_name(b, h) for b in (0, 1) for h in ("ln2.hook_normalized", "hook_mlp_out")}
    assert set(acts.config.hooks) == hooks
    clt_evals = [t for t in plan.stage("evaluate") if t.config.coders[0].kind == "clt"]
    assert len(clt_evals) == 1 and clt_evals[0].id.startswith("clt-all-")
    (export,) = plan.stage("export")
    assert [r.stage for r in export.config.coders] == ["clt"]


def test_clt_spec_checks_its_fields():
    text = MICRO_CLT.read_text()
    with pytest.raises(SpecError, match="`k` goes with `activation: topk`"):
        parse_spec(
            text.replace("    k: 8\n    lr: 1.0e-3", "    lr: 1.0e-3", 1), str(MICRO_CLT), ROOT
        )
    with pytest.raises(SpecError, match="`hook_mlp_in` is not allowed"):
        parse_spec(
            text.replace("kind: clt", "kind: clt\n    in_hook: hook_mlp_in"), str(MICRO_CLT), ROOT
        )


def run_plan(plan, results: Path) -> None:
    """Every task in stage order, as the jobs of a Snakemake run would."""
    for t in [*plan.tasks.values(), *(group_task([plan.get("train", i) for i in g], plan)
                                      for g in plan.groups)]:  # fmt: skip
        save_task(results, t)
    for stage in STAGES:
        if stage == "train":
            for g in plan.groups:
                run_task(group_task([plan.get("train", i) for i in g], plan), results, "cpu")
            continue
        for t in plan.stage(stage):
            if not t.done(results).exists():  # a task shared with an earlier spec
                run_task(t, results, "cpu")


@pytest.fixture(scope="module")
def micro_clt_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    plan = compile_plan(load_spec(MICRO_CLT))
    run_plan(plan, results)
    return plan, results


def clt_graph(plan):
    """The attribution task through the CLT (the other one traces the per-layer set)."""
    (graph,) = [t for t in plan.stage("circuits") if t.config.coders[0].kind == "clt"]
    return graph


def test_clt_trains_evaluates_spliced_everywhere_and_tabulates(micro_clt_run):
    plan, results = micro_clt_run
    (clt,) = plan.stage("clt")
    assert not layout.checkpoint_dir(results, clt.id).exists()  # removed once saved
    training = json.loads((clt.dir(results) / TRAINING_FILE).read_text())
    assert training["steps"] == 128 and training["l0"] == 16.0 and 0 < training["fvu"] < 1
    records = [
        json.loads((t.dir(results) / layout.METRICS).read_text()) for t in plan.stage("evaluate")
    ]
    (rec,) = [r for r in records if r["kind"] == "clt"]
    m = rec["metrics"]
    assert rec["splice"] == "all" and rec["layers"] == [0, 1] and rec["d_sae"] == 64
    assert m["l0"] == 16.0  # TopK: k = 8 per layer, 2 layers
    assert [row["block"] for row in rec["per_layer"]] == [0, 1]
    assert all(row["l0"] == 8.0 and 0 < row["fvu"] < 1.5 for row in rec["per_layer"])
    assert m["ce_loss_zero_ablated"] > m["ce_loss_original"] > 0 and m["kl"] >= 0
    joint_tc = [r for r in records if r["kind"] == "transcoder" and r["splice"] == "all"]
    assert joint_tc and joint_tc[0]["metrics"]["ce_loss_original"] == m["ce_loss_original"]
    (tables,) = plan.stage("tables")
    folder = tables.dir(results) / layout.TABLES
    table = pd.read_csv(folder / "sparsity_fidelity.csv").set_index(["dictionary", "layer"])
    clt = table.loc["clt"]  # its layers and its total, every metric it can have
    assert list(clt.index) == ["0 (of 0,1)", "1 (of 0,1)", "0,1 (all)"]
    assert list(clt["l0"]) == [8.0, 8.0, 16.0] and clt[["fvu", "dead_fraction"]].notna().all().all()
    assert table.loc[("tc", "0,1 (all)"), "l0"] == pytest.approx(16.0, abs=0.01)  # summed
    assert (
        "| clt          | CLT        | 0,1 (all)  |"
        in (folder / "sparsity_fidelity.md").read_text()
    )
    matched = pd.read_csv(folder / "matched_l0.csv").astype({"layers": str})
    for block in ("0", "1", "0,1"):  # per layer and in total, side by side
        rows = matched[matched["layers"] == block]
        assert set(rows["family"]) == {"clt", "tc"} and rows["fvu"].notna().all(), block
    total = matched[matched["layers"] == "0,1"]
    assert total["ce_loss_replaced"].notna().all() and total["dead_fraction"].notna().all()


def test_circuit_tracer_export_loads_back_exactly(micro_clt_run):
    plan, results = micro_clt_run
    (clt,) = plan.stage("clt")
    (export,) = plan.stage("export")
    folder = export.dir(results) / layout.EXPORT / "clt-single"
    saved, loaded = clt_io.load(clt.dir(results)), clt_io.load_circuit_tracer(folder)
    assert loaded.cfg.activation == "topk" and loaded.cfg.k == 8
    assert loaded.cfg.d_sae == saved.cfg.d_sae and loaded.cfg.n_layers == 2
    a, b = saved.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_clt_imports_back_and_evaluates_the_same(micro_clt_run):
    """`kind: pretrained, format: circuit-tracer` on the export folder: one import task, then
    the same spliced evaluation, number for number."""
    plan, results = micro_clt_run
    (export,) = plan.stage("export")
    folder = export.dir(results) / layout.EXPORT / "clt-single"
    text = MICRO_CLT.read_text().split("dictionaries:")[0].replace("micro_clt", "micro_clt_ct")
    text += f"dictionaries:\n  ct: {{kind: pretrained, format: circuit-tracer, path: {folder}}}\n"
    imported = compile_plan(parse_spec(text, str(MICRO_CLT), MICRO_CLT.parent))
    (task,) = imported.stage("import")
    assert task.config.kind == "clt" and not imported.stage("acts")
    run_plan(imported, results)
    (ev,) = imported.stage("evaluate")
    (original,) = [t for t in plan.stage("evaluate") if t.config.coders[0].kind == "clt"]
    a, b = (json.loads((t.dir(results) / layout.METRICS).read_text()) for t in (original, ev))
    assert b["kind"] == "clt" and b["layers"] == [0, 1]
    assert a["metrics"] == b["metrics"] and a["per_layer"] == b["per_layer"]


def test_interrupted_clt_task_resumes_bitwise(micro_clt_run, tmp_path):
    """A pass stopped after its step-16 checkpoint (the batches fail at step 20) leaves the
    checkpoint in the task's checkpoint folder; rerunning the task resumes from it and ends
    with the uninterrupted run's weights, bit for bit."""
    from tcspec.data.cache import ActivationReader
    from tcspec.training import train
    from tcspec.training.clt import CLTRun

    plan, results = micro_clt_run
    (clt,) = plan.stage("clt")
    c, shape = clt.config, clt.config.shape()
    fresh = tmp_path / "results"
    shutil.copytree(results, fresh, ignore=shutil.ignore_patterns("clt-L0-1-*"))
    (acts,) = plan.stage("acts")
    reader = ActivationReader(
        acts.dir(fresh) / layout.CACHE, sorted(shape.in_names + shape.out_names),
        batch_size=c.opts.batch_size, seed=c.data_seed,
    )  # fmt: skip

    def failing(start: int):
        for step, batch in enumerate(reader.iter_batches(start), start):
            if step == 20:
                raise OSError("the node went away")
            yield batch

    ckpt = layout.checkpoint_dir(fresh, clt.id) / CHECKPOINT
    ckpt.parent.mkdir(parents=True)
    run = CLTRun(clt.id, c.opts, shape, c.steps, clt.dir(fresh), "cpu")
    with pytest.raises(OSError, match="went away"):
        train([run], failing, c.steps, ckpt.parent, progress=False, log=lambda _: None)
    assert ckpt.exists() and not clt.done(fresh).exists()
    run_task(clt, fresh, "cpu")
    a, b = clt_io.load(clt.dir(results)).state_dict(), clt_io.load(clt.dir(fresh)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not ckpt.exists()


def test_interp_studies_each_clt_layer_and_a_layer_selects_one():
    """`interp.dictionaries: [{name: clt}]` makes one interp task per CLT layer, all naming
    the one clt task; `layer: 1` keeps the layer-1 one; circuits refuse a layer, and
    greater-than refuses the MLP0 de-embeddings."""
    plan = compile_plan(load_spec(MICRO_CLT))
    (clt,) = plan.stage("clt")
    refs = [t.config.coder for t in plan.stage("interp")]
    assert [(r.id, r.layer, r.label) for r in refs] == [
        (clt.id, 0, "clt-L0-single"),
        (clt.id, 1, "clt-L1-single"),
    ]
    text = MICRO_CLT.read_text().replace(
        "[{name: clt}], features", "[{name: clt, layer: 1}], features"
    )
    one = compile_plan(parse_spec(text, str(MICRO_CLT), MICRO_CLT.parent))
    assert [t.config.coder.layer for t in one.stage("interp")] == [1]
    graph = clt_graph(plan)
    assert [r.id for r in graph.config.coders] == [clt.id]
    assert {d for _, d in graph.deps.values()} == {plan.stage("model")[0].id, clt.id,
                                                   plan.stage("tokens")[0].id}  # fmt: skip
    bad = MICRO_CLT.read_text().replace(
        "dictionary: {name: clt}", "dictionary: {name: clt, layer: 1}"
    )
    with pytest.raises(SpecError, match="a graph traces all its layers"):
        parse_spec(bad, str(MICRO_CLT), MICRO_CLT.parent)
    gt = "  - {task: greater_than, dictionary: {name: clt}, mlp0_deembeddings: true}\n"
    with pytest.raises(SpecError, match="MLP0 is no extended embedding"):
        parse_spec(MICRO_CLT.read_text() + gt, str(MICRO_CLT), MICRO_CLT.parent)


def test_clt_dashboards_show_where_each_feature_writes(micro_clt_run):
    from tcspec.dictionaries.clt_views import write_norms
    from tcspec.features.files import WRITE_BLOCKS, WRITE_NORMS, load_stats

    plan, results = micro_clt_run
    (clt,) = plan.stage("clt")
    model = clt_io.load(clt.dir(results))
    for task in plan.stage("interp"):
        block = task.config.coder.layer
        stats = load_stats(task.dir(results) / layout.STATS)
        assert stats.meta["kind"] == "clt" and stats.meta["layer"] == block
        assert stats.meta[WRITE_BLOCKS] == [0, 1][block:]
        assert torch.equal(stats.tensors[WRITE_NORMS], write_norms(model, block))
        assert int((stats.tensors["count"] > 0).sum()) > 0 and stats.meta["pages"]
        f = stats.meta["pages"][0]
        page = (task.dir(results) / layout.DASHBOARD / "features" / f"{f}.html").read_text()
        assert "Where it writes" in page and page.count("<td>layer ") == 2 - block
        norm = float(stats.tensors[WRITE_NORMS][f, -1])
        assert f"{norm:.3g}" in page or f"{norm:.3f}" in page
    (study,) = plan.stage("study")
    assert study.done(results).exists()


def test_attribution_graph_through_the_clt(micro_clt_run):
    import pandas as pd

    plan, results = micro_clt_run
    graph = clt_graph(plan)
    (row,) = pd.read_csv(graph.dir(results) / layout.ATTRIBUTION).to_dict("records")
    assert row["dictionary"] == "clt-single" and row["features_active"] > 0
    assert 0 < row["replacement"] <= 1 and 0 < row["completeness"] <= 1
    assert row["intervention_r_frozen"] > 0.95  # exact where attention and norms are frozen
    folder = graph.dir(results) / row["folder"]
    data = json.loads((graph.dir(results) / row["graph"]).read_text())
    layers = {n["layer"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"}
    assert layers and layers <= {"0", "1"}
    viewer = (folder / layout.VIEWER).read_text()
    assert "features/{feature}.html" in viewer  # links the per-layer dashboards
    assert_pages_complete(graph.dir(results))
    cards = (graph.dir(results) / layout.GRAPH_PAGES / layout.GRAPH_CARDS).read_text()
    assert '"writes": [[0, ' in cards  # a layer-0 CLT feature writes to layers 0 and 1


def test_the_clt_and_the_per_layer_graphs_side_by_side(micro_clt_run):
    """Both dictionaries traced on the same prompt: one comparison by dictionary (and its
    plot) and their agreement, in the tables."""
    import pandas as pd

    plan, results = micro_clt_run
    (tables,) = plan.stage("tables")
    shown = layout.tables_dir(results, tables.config.experiment)
    by = pd.read_csv(shown / "attribution_by_dictionary.csv")
    assert set(by["dictionary"]) == {"clt-single", "tc-single"} and (by["prompts"] == 1).all()
    rows = pd.read_csv(shown / "attribution.csv")
    for name, part in rows.groupby("dictionary"):
        got = by[by["dictionary"] == name].iloc[0]
        assert got["replacement"] == pytest.approx(part["replacement"].mean())
        assert got["intervention_r_frozen"] == pytest.approx(part["intervention_r_frozen"].mean())
    (pair,) = pd.read_csv(shown / "attribution_agreement.csv").to_dict("records")
    assert {pair["a"], pair["b"]} == {"clt-single", "tc-single"}
    assert 0 <= pair["token_overlap"] <= 1 and 0 <= pair["layer_agreement"] <= 1
    assert (shown / "attribution_by_dictionary.png").stat().st_size > 1000
    assert "attribution_by_dictionary.png" in (shown / "index.md").read_text()


@needs_chromium
def test_clicking_every_clt_feature_node_shows_its_card(micro_clt_run):
    plan, results = micro_clt_run
    graph = clt_graph(plan)
    with browser() as b:
        page = b.new_page()
        for folder in sorted(graph.dir(results).glob("prompt-*")):
            assert click_every_feature(page, folder / layout.VIEWER) > 0
            assert page.locator("#card .writes").count() == 1  # where the last one writes


def test_clt_trains_from_a_stream(tmp_path):
    """`acts: {source: stream}`: no acts task; the clt task reads the model and tokens and
    trains from the shuffle buffer (its state in the checkpoint)."""
    text = (
        MICRO_CLT.read_text()
        .split("interp:")[0]
        .replace(
            "acts: {batch_contexts: 16, shard_tokens: 2048}",
            "acts: {source: stream, batch_contexts: 16, buffer_tokens: 512}",
        )
    )
    plan = compile_plan(parse_spec(text, str(MICRO_CLT), MICRO_CLT.parent))
    (clt,) = plan.stage("clt")
    assert not plan.stage("acts") and set(clt.deps) == {"model", "tokens"}
    assert clt.config.stream is not None and clt.config.stream.buffer_tokens == 512
    run_plan(plan, tmp_path)
    training = json.loads((clt.dir(tmp_path) / TRAINING_FILE).read_text())
    assert training["steps"] == 128 and training["l0"] == 16.0 and 0 < training["fvu"] < 1


def stream_spec(folder: Path, train_tokens: int) -> Path:
    """micro_clt.yaml with `acts: {source: stream}` and `train_tokens` training tokens,
    written to `folder` (no interp, dashboards or circuits)."""
    text = (
        MICRO_CLT.read_text()
        .split("interp:")[0]
        .replace(
            "acts: {batch_contexts: 16, shard_tokens: 2048}",
            "acts: {source: stream, batch_contexts: 16, buffer_tokens: 512}",
        )
        .replace("train_tokens: 8192", f"train_tokens: {train_tokens}")
        .replace("micro_clt", "micro_clt_stream")
    )
    path = folder / "micro_clt_stream.yaml"
    path.write_text(text)
    return path


def test_killed_clt_stream_task_resumes_to_identical_weights(tmp_path):
    """SIGKILL the clt job (`tcspec task clt ID`, streaming from the model) at a random
    step after its first checkpoint; the rerun resumes from the checkpoint (the stream's
    position and shuffle buffer rebuilt from the provenance it holds) and its CLT equals an
    uninterrupted job's bitwise (512 steps)."""
    sys.path.insert(0, str(ROOT / "tests" / "workflow"))
    import harness

    from tcspec.training import read_checkpoint

    spec = stream_spec(tmp_path, 32768)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    plan = harness.plan(spec)
    (clt,) = plan.stage("clt")
    assert clt.config.stream is not None and clt.config.steps == 512
    harness.store(clean, spec)
    for stage in ("model", "tokens"):  # upstream of the clt task, once for both runs
        run_task(plan.stage(stage)[0], clean, "cpu")
    harness.copy_results(clean, killed)
    ckpt = harness.job_checkpoints(killed, "clt", clt.id, spec) / CHECKPOINT
    delay = random.Random(7).uniform(0.0, 0.3)
    kill = harness.kill_task("clt", clt.id, killed, trigger=ckpt, delay_s=delay, spec=spec)
    assert kill.killed and not clt.done(killed).exists(), kill
    at = read_checkpoint(ckpt)["step"]
    assert 0 < at < 512 and at % 16 == 0 and read_checkpoint(ckpt)["source"] is not None

    for results in (killed, clean):  # the rerun, and the uninterrupted job
        rerun = harness.start_task("clt", clt.id, results, spec=spec)
        assert rerun.wait(timeout=300) == 0, harness.job_log(results, "clt", clt.id, spec)
    log = harness.job_log(killed, "clt", clt.id, spec).read_text()
    assert f"resuming from {ckpt} at step {at}/512" in log
    assert not ckpt.exists()  # a finished task drops its checkpoint
    a, b = clt_io.load(clt.dir(clean)).state_dict(), clt_io.load(clt.dir(killed)).state_dict()
    assert a.keys() == b.keys() and len(a) == 5
    for k in a:
        assert torch.equal(a[k], b[k]), (k, at)


def test_greater_than_study_through_the_clt(micro_clt_run):
    """`{task: greater_than, dictionary: {name: clt}}`: one circuits task on the trained CLT,
    its features traced with all their decoders; keep-top-k at both layers."""
    plan, results = micro_clt_run
    (clt,) = plan.stage("clt")
    circuit = "  - {task: greater_than, dictionary: {name: clt}, prompts: 8, keep_top_k: 6}\n"
    text = MICRO_CLT.read_text() + circuit
    (task,) = [
        t
        for t in compile_plan(parse_spec(text, str(MICRO_CLT), MICRO_CLT.parent)).stage("circuits")
        if t.config.circuit.task == "greater_than"
    ]
    assert [r.id for r in task.config.coders] == [clt.id] and ("clt", clt.id) in task.deps.values()
    save_task(results, task)
    run_task(task, results, "cpu")
    summary = json.loads((task.dir(results) / layout.SUMMARY).read_text())
    assert summary["coders"][0]["kind"] == "clt" and summary["prompts"] == 8
    assert set(summary["keep_top_k"]["by_layer"]) == {"0", "1"}
    assert summary["faithfulness"]["exact"] and summary["graph"]["nodes"] > 3
    curve = (task.dir(results) / "keep_top_k.csv").read_text().splitlines()
    assert len(curve) == 1 + 2 * (7 + 7)  # header, 2 layers x (features, neurons) x k 0..6
    for name in ("graph.json", "report.md", "greater_than.csv", "deembedding.csv"):
        assert (task.dir(results) / name).stat().st_size > 0
