"""Sparse probing: the probe separates what is separable and not what is not, the toy
corpus's families are labels, and the same code path reads a local labelled dataset through
`datasets` (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.evaluation.probing import (
    binary_tasks,
    load_labelled,
    pooled,
    probe_accuracy,
    sparse_probing,
    top_latents,
)
from tcspec.models.corpus import FAMILIES, TEXT_FAMILY, family_documents
from tcspec.plan.stages import STAGES
from tcspec.spec import ProbeDataSpec


def test_probe_accuracy_separates_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g, dtype=torch.float64)
    y = (x[:, 3] > 0).double()
    assert probe_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.9
    noise = torch.randint(0, 2, (400,), generator=g).double()
    assert abs(probe_accuracy(x[:300], noise[:300], x[300:], noise[300:]) - 0.5) < 0.12


def test_top_latents_are_those_that_differ():
    z = torch.zeros(100, 8, dtype=torch.float64)
    y = torch.tensor([1.0] * 50 + [0.0] * 50)
    z[:50, 5], z[50:, 2] = 3.0, 1.0
    assert set(top_latents(z, y, 2).tolist()) == {5, 2}


def test_binary_tasks_are_balanced_and_skip_small_classes():
    labels = ["a"] * 30 + ["b"] * 30 + ["c"] * 5
    tasks, skipped = binary_tasks(labels, None, 10, 5, seed=0)
    assert [t.label for t in tasks] == ["a", "b"] and skipped == ["c"]
    for t in tasks:
        assert t.train_y.sum() == 10 and len(t.train) == 20 and t.test_y.sum() == 5
        assert not set(t.train.tolist()) & set(t.test.tolist())
        assert all(labels[i] == t.label for i, y in zip(t.train.tolist(), t.train_y) if y)


def test_family_documents_are_labelled_by_family():
    docs = family_documents(0, 20)
    labels = [y for _, y in docs]
    assert set(labels) == set(FAMILIES) | {TEXT_FAMILY}
    assert all(labels.count(f) == 20 for f in FAMILIES)
    assert all(" plus " in t for t, y in docs if y == "addition")


@pytest.fixture(scope="module")
def toy_model(toy_model_dir):
    from tcspec.models.load import load_model

    return load_model(toy_model_dir, "cpu")


def _coder(d_model: int) -> Coder:
    hook = "blocks.0.hook_mlp_out"
    cfg = CoderConfig(kind="sae", d_in=d_model, d_out=d_model, d_sae=64, activation="relu",
                      in_hook=hook, out_hook=hook, layer=0)  # fmt: skip
    return Coder(cfg, seed=0)


def test_toy_families_separate_above_chance(toy_model):
    """The stage's path on the toy corpus: raw activations and k-sparse latents of a
    (here untrained, random) dictionary of a barely trained toy model tell document
    families apart above chance (50%); the quickstart's dictionaries: README."""
    docs = family_documents(0, 80)
    texts, labels = [t for t, _ in docs], [y for _, y in docs]
    tasks, _ = binary_tasks(labels, ["greater_than", "capital", TEXT_FAMILY], 50, 30, seed=0)
    coder = _coder(toy_model.cfg.d_model)
    bos = (toy_model.tokenizer.bos_token_id,)
    raw, latents = pooled(toy_model, coder, texts, coder.cfg.in_hook, 32, bos)
    assert raw.shape == (len(texts), toy_model.cfg.d_model) and latents.shape[1] == 64
    rows = sparse_probing(raw, latents, tasks, [1, 5])
    by = {(r["class"], r["probe"], r["k"]): r["accuracy"] for r in rows}
    for t in tasks:  # chance on 60 balanced test texts: 0.5 +- 0.065
        assert by[(t.label, "raw", None)] > 0.7
        assert by[(t.label, "sparse", 5)] > 0.65


def test_a_local_labelled_dataset_reads_through_datasets(tmp_path, toy_model):
    """`probe.dataset` with local JSON lines files: `datasets.load_dataset` reads them
    (HF_HUB_OFFLINE is set for the whole test session), and the same pooling and probes
    run on them."""
    rows = [{"text": t, "topic": y} for t, y in family_documents(1, 25, split="train")]
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = ProbeDataSpec(path="json", data_files=[path], label_column="topic")
    texts, labels = load_labelled(spec)
    assert texts == [r["text"] for r in rows] and labels == [r["topic"] for r in rows]
    tasks, _ = binary_tasks(labels, ["addition"], 15, 10, seed=0)
    coder = _coder(toy_model.cfg.d_model)
    raw, latents = pooled(toy_model, coder, texts, coder.cfg.in_hook, 32, ())
    (raw_row, sparse_row) = sparse_probing(raw, latents, tasks, [2])
    assert raw_row["accuracy"] > 0.8 and sparse_row["k"] == 2
    with pytest.raises(ValueError, match="no column `label`"):
        load_labelled(ProbeDataSpec(path="json", data_files=[path]))


def test_probe_stage_tabulates_the_raw_reference_row(micro_attribution_run, tmp_path):
    """The probe task and the sparse_probing table over the micro run's toy model and
    transcoder (its trained tasks are shared by content address; only the probe and the
    tables run here)."""
    import yaml

    from tcspec import layout
    from tcspec.plan import compile_plan
    from tcspec.plan.store import save_task
    from tcspec.spec.loader import load_spec
    from tcspec.tasks import run_task

    results, _ = micro_attribution_run
    spec = yaml.safe_load(
        (Path(__file__).parents[1] / "workflow" / "micro_attribution.yaml").read_text()
    )
    del spec["interp"], spec["circuits"]
    spec |= {"experiment": "micro-probe", "tables": {"include": ["sparse_probing"]},
             "probe": {"k": [1, 4], "train_per_class": 20, "test_per_class": 10}}  # fmt: skip
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = compile_plan(load_spec(path))
    for t in plan.tasks.values():
        save_task(results, t)
    todo = [t for t in plan.tasks.values() if not t.done(results).exists()]
    assert sorted(t.stage for t in todo) == ["probe", "tables"]
    for t in sorted(todo, key=lambda t: STAGES.index(t.stage)):
        run_task(t, results, device="cpu")
    table = (layout.tables_dir(results, "micro-probe") / "sparse_probing.csv").read_text()
    rows = [r.split(",") for r in table.splitlines()]
    assert (
        rows[1][0] == "raw activations (reference)" and rows[1][2] == "blocks.0.ln2.hook_normalized"
    )
    assert [r[3] for r in rows[1:]] == ["all", "1", "4"]
    assert all(0.5 < float(r[4]) <= 1.0 for r in rows[1:])  # above chance, each
    assert int(rows[1][6]) == len(FAMILIES) + 1  # every task family and pydoc text
