"""Seeds as a sweep axis: the plan trains every sweep point once per seed (the seed the
spec already trained keeps its id), and the tables pool the seeds into a mean and a sample
standard deviation (checked here against the per-seed records), draw error bars and say
where two families differ by more than their spread."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest

from tcspec.plan import compile_plan
from tcspec.spec.loader import parse_spec
from tcspec.tables import build_tables, matched_l0, records_frame
from tcspec.tables.curves import Curve, curves_figure
from tcspec.tables.seeds import apart, pool_seeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402

SPEC = """
experiment: seeds
seed: 0
model: {kind: toy, recipe: greater_than_fast}
data: {kind: toy, context: 32, train_tokens: 4096, eval_tokens: 1024}
layers: [0]
dictionaries:
  tc: {kind: transcoder, expansion: 2, activation: topk, k: [4, 8]SEED}
  sae: {kind: sae, expansion: 2, l1: [1.0e-3, 3.0e-3]SEED}
"""


def _plan(seed: str):
    return compile_plan(parse_spec(SPEC.replace("SEED", seed), "spec.yaml"))


def test_a_seed_list_trains_every_point_once_per_seed():
    seeded, single = _plan(", seed: [0, 1, 2]"), _plan("")
    train = {t.id: t for t in seeded.stage("train")}
    assert len(train) == 3 * len(single.stage("train")) == 12
    seeds = sorted((t.label["dictionary"], t.config.opts.seed) for t in train.values())
    assert seeds == sorted((d, s) for d in ("sae", "tc") for s in (0, 1, 2) for _ in range(2))
    # seed 0 is the spec's seed: those points are the unseeded spec's tasks (shared outputs)
    assert {t.id for t in single.stage("train")} == {
        i for i, t in train.items() if t.config.opts.seed == 0
    }
    names = {i.rsplit("-", 1)[0] for i in train}
    assert {"tc-L0-k_4", "tc-L0-k_4-seed_1", "tc-L0-k_4-seed_2", "sae-L0-l1_0.003-seed_2"} <= names
    members = {t.label["member"] for t in train.values()}
    assert "k_8-seed_1" in members and "l1_0.001-seed_0" in members
    assert len(seeded.stage("evaluate")) == 12


def test_a_dictionarys_own_seed_names_its_tasks():
    """A seed other than the spec's (the data order's) is in the readable name."""
    (t,) = [t for t in _plan(", seed: 3").stage("train") if t.id.startswith("tc-L0-k_4")]
    assert t.config.opts.seed == 3 and t.id.startswith("tc-L0-k_4-seed_3-")
    assert t.label["member"] == "k_4"  # not swept: not a sweep coordinate


# ---------------------------------------------------------------------- tables
ORIG, ZERO = 3.30, 4.10
TC = {4: [(4.0, 3.60), (4.0, 3.62), (4.0, 3.61)], 16: [(16.0, 3.45), (16.0, 3.47), (16.0, 3.44)]}
SAE = {
    1e-3: [(18.0, 3.50), (17.0, 3.52), (19.0, 3.51)],
    3e-3: [(5.0, 3.75), (6.0, 3.70), (5.5, 3.72)],
}
"""Per sweep point, per seed 0, 1, 2: (L0, CE)."""


def _record(name, kind, point, seed, l0, ce, dead=0.1):
    return {
        "dictionary": name, "kind": kind, "layers": [0], "splice": "each", "d_sae": 64,
        "member": "-".join(f"{a}_{v:g}" for a, v in (point | {"seed": seed}).items()),
        "point": point | {"seed": seed},
        "opts": {"activation": "topk" if "k" in point else "relu", "seed": seed, "lr": 1e-3},
        "metrics": {
            "l0": l0, "fvu": ce - 3.3, "dead_fraction": dead + seed / 100, "kl": ce - ORIG,
            "ce_loss_original": ORIG, "ce_loss_replaced": ce, "ce_loss_zero_ablated": ZERO,
            "ce_recovered": (ZERO - ce) / (ZERO - ORIG),
        },
    }  # fmt: skip


def _records() -> list[dict]:
    recs = []
    for name, kind, axis, sweep in (("tc", "transcoder", "k", TC), ("sae", "sae", "l1", SAE)):
        for value, seeds in sweep.items():
            for seed, (l0, ce) in enumerate(seeds):
                recs.append(_record(name, kind, {axis: value}, seed, l0, ce))
    return recs


def test_sparsity_table_shows_each_points_mean_and_sample_std(tmp_path):
    recs = _records()
    build_tables(recs, tmp_path, include=["sparsity_fidelity"], reference=None, title="s")
    table = pd.read_csv(tmp_path / "sparsity_fidelity.csv")
    assert len(table) == 4 and (table["n_seeds"] == 3).all()
    for _, row in table.iterrows():
        mine = [r["metrics"] for r in recs if r["dictionary"] == row["dictionary"]
                and r["member"].startswith(row["member"] + "-seed")]  # fmt: skip
        assert len(mine) == 3
        for m in ("l0", "ce_loss_replaced", "fvu", "dead_fraction", "ce_recovered"):
            values = [x[m] for x in mine]
            assert row[m] == pytest.approx(statistics.mean(values))
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(values))  # n - 1
        assert row["seeds"] == "0,1,2"
    md = (tmp_path / "sparsity_fidelity.md").read_text()
    sd = statistics.stdev([3.60, 3.62, 3.61])
    assert f"| 3.6100 ± {sd:.4f} |" in md
    assert "sample standard deviation (n − 1" in md
    assert "|   seeds |" in md.splitlines()[2]


def test_matched_l0_pools_seeds_and_calls_differences_beyond_the_spread():
    long = matched_l0(records_frame(_records()))
    at16 = long[long["l0"] == 16.0].set_index("family")
    # tc at k 16: its own point; sae interpolated in log L0 between its pooled points
    tc_ce = [3.45, 3.47, 3.44]
    assert at16.loc["tc", "ce_loss_replaced"] == pytest.approx(statistics.mean(tc_ce))
    assert at16.loc["tc", "ce_loss_replaced_std"] == pytest.approx(statistics.stdev(tc_ce))
    lo, hi = (5.5, statistics.mean([3.75, 3.70, 3.72])), (18.0, statistics.mean([3.50, 3.52, 3.51]))
    t = math.log(16 / lo[0]) / math.log(hi[0] / lo[0])
    assert at16.loc["sae", "ce_loss_replaced"] == pytest.approx(lo[1] + t * (hi[1] - lo[1]))
    assert at16.loc["tc", "delta_ce"] == 0 and at16.loc["sae", "delta_ce"] > 0
    assert at16.loc["sae", "delta_ce_apart"]  # ~0.05 apart, spreads ~0.02
    assert (at16[["fvu", "dead_fraction", "kl", "ce_recovered"]].notna()).all().all()
    assert (long["n_seeds"] == 3).all()


def test_the_rule_for_a_difference():
    assert apart(1.0, 0.1, 1.3, 0.1) is True
    assert apart(1.0, 0.2, 1.3, 0.2) is False
    assert apart(1.0, float("nan"), 1.3, 0.1) is None  # one seed: nothing can be said


def test_pareto_plot_has_error_bars(tmp_path):
    from tcspec.tables import pareto_figure

    fig = pareto_figure(records_frame(_records()), "s")
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["tc (transcoder)", "sae (SAE)"]
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 2
    tc = next(line for line in ax.get_lines() if line.get_label() == "tc (transcoder)")
    assert list(tc.get_ydata()) == pytest.approx([3.61, statistics.mean([3.45, 3.47, 3.44])])


def test_a_single_seed_has_no_spread():
    pooled = pool_seeds(records_frame([r for r in _records() if r["opts"]["seed"] == 0]))
    assert (pooled["n_seeds"] == 1).all() and pooled["l0_std"].isna().all()
    assert list(pooled["member"]) == ["k_4-seed_0", "k_16-seed_0", "l1_0.001-seed_0",
                                      "l1_0.003-seed_0"]  # fmt: skip


# ---------------------------------------------------------------------- training curves
def _curve(member: str, seed: int, dead: int) -> Curve:
    rows = tuple(
        {"step": s, "loss": 1.0 / s, "mse": 0.5 / s, "aux": 0.1, "l0": 8.0, "lr": 1e-3,
         "live": 1.0, "dead": dead}
        for s in (10, 20, 30)
    )  # fmt: skip
    return Curve("tc", (0,), member, seed, 64, 32, rows)


def test_training_curves_are_plotted_per_dictionary_and_linked(tmp_path):
    curves = [_curve(f"k_{k}-seed_{s}", s, dead=k) for k in (4, 8) for s in (0, 1)]
    fig = curves_figure(curves, "tc")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "aux", "mse", "L0", "dead fraction"]
    dead = fig.axes[4]
    (line,) = [ln for ln in dead.get_lines() if ln.get_label() == "k_8, seed 1"]
    assert list(line.get_xdata()) == [640, 1280, 1920]  # tokens: steps x 64
    assert list(line.get_ydata()) == [8 / 32] * 3  # dead features / features
    assert len({ln.get_color() for ln in dead.get_lines()}) == 2  # a colour per point
    assert len({ln.get_linestyle() for ln in dead.get_lines()}) == 2  # a style per seed
    clt = Curve(
        "clt", (0, 1), "single", 0, 64, 64, ({"step": 1, "loss": 1.0, "fvu": 0.5, "l0": 3},)
    )
    build_tables([], tmp_path, include=["training_curves"], reference=None, title="t",
                 curves=[*curves, clt])  # fmt: skip
    assert (tmp_path / "curves_tc_L0.png").exists() and (tmp_path / "curves_clt_L0-1.png").exists()
    index = (tmp_path / "index.md").read_text()
    assert "[curves_tc_L0.png](curves_tc_L0.png)" in index
    assert "![clt layers 0,1](curves_clt_L0-1.png)" in index


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_seeded_spec_runs_to_tables_with_spreads(tmp_path):
    """Two families x two points x three seeds through Snakemake: the tables' mean and
    spread are those of the per-seed metrics.json, and every dictionary's curve is drawn."""
    out = harness.snakemake(tmp_path, spec=harness.WORKFLOW / "micro_seeds.yaml")
    assert out.returncode == 0, out.stderr[-4000:]
    records = [json.loads(f.read_text()) for f in tmp_path.glob("tasks/evaluate/*/metrics.json")]
    assert len(records) == 12
    tables = tmp_path / "micro_seeds" / "tables"
    table = pd.read_csv(tables / "sparsity_fidelity.csv")
    assert len(table) == 4 and (table["n_seeds"] == 3).all()
    for _, row in table.iterrows():
        mine = [r["metrics"] for r in records if r["dictionary"] == row["dictionary"]
                and r["point"]["k"] == row["k"]]  # fmt: skip
        for m in ("fvu", "ce_loss_replaced", "dead_fraction"):
            values = [x[m] for x in mine]
            assert row[m] == pytest.approx(statistics.mean(values), rel=1e-9)
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
            assert row[f"{m}_std"] > 0 or m == "dead_fraction"  # seeds do differ
    long = pd.read_csv(tables / "matched_l0.csv")
    assert set(long["family"]) == {"tc", "sae"} and long["fvu_std"].notna().all()
    index = (tables / "index.md").read_text()
    for name in ("curves_tc_L0.png", "curves_sae_L0.png"):
        assert (tables / name).exists() and f"]({name})" in index


# ---------------------------------------------------------------------- families.yaml
FAMILY_L0 = {("l1", 3e-4): 100.0, ("l1", 1e-3): 50.0, ("l1", 3e-3): 20.0,
             ("l0_coef", 1e-4): 54.0, ("l0_coef", 1e-3): 14.0}  # fmt: skip
"""Roughly the L0 each non-TopK sweep point of specs/families.yaml reaches (README)."""


def _families_records() -> list[dict]:
    """A metrics record per evaluation of specs/families.yaml, shaped as the evaluate stage
    writes it, with made-up metrics (L0 as the README's; BatchTopK a little off its k)."""
    from tcspec.spec.loader import load_spec

    plan = compile_plan(load_spec(Path(__file__).resolve().parents[2] / "specs/families.yaml"))
    train = {t.id: t.config for t in plan.stage("train")}
    recs = []
    for i, t in enumerate(plan.stage("evaluate")):
        (ref,) = t.config.coders
        opts = train[ref.id].opts
        point = t.config.point
        l0 = float(opts.k) + (i % 3) / 10 if opts.k else FAMILY_L0[next(iter(point.items()))]
        recs.append(_record(ref.dictionary, ref.kind, point, 0, l0, 3.4 + 1 / l0))
        recs[-1]["opts"] = opts.model_dump(mode="json")
    return recs


def test_families_matched_l0_shows_every_metric_for_every_family(tmp_path):
    recs = _families_records()
    assert len(recs) == 20
    build_tables(recs, tmp_path, include=["matched_l0"], reference=None, title="families")
    long = pd.read_csv(tmp_path / "matched_l0.csv")
    assert set(long["family"]) == {r["dictionary"] for r in recs}  # all 10, none dropped
    metrics = ["ce_loss_replaced", "ce_recovered", "kl", "fvu", "dead_fraction"]
    assert long[metrics].notna().all().all()
    for r in recs:  # a family at one L0 (BatchTopK, the Matryoshkas) sits at its own L0
        if r["dictionary"].endswith(("batchtopk", "matryoshka", "matryoshka_topk")):
            mine = long[long["family"] == r["dictionary"]]
            assert list(mine["l0"]) == [r["metrics"]["l0"]]
    header = (tmp_path / "matched_l0.md").read_text().splitlines()[2]
    assert "FVU" in header and "dead %" in header


def test_matryoshka_prefixes_pool_seeds(tmp_path):
    from tcspec.evaluation.prefixes import prefix_key

    recs = []
    for seed, fvus in enumerate(([0.5, 0.3], [0.7, 0.2], [0.6, 0.25])):
        r = _record("mat", "sae", {"k": 4}, seed, 4.0, 3.5)
        r["opts"]["matryoshka"] = [16]
        r["metrics"] |= {prefix_key(16): fvus[0], prefix_key(64): fvus[1]}
        recs.append(r)
    build_tables(recs, tmp_path, include=["matryoshka_prefixes"], reference=None, title="m")
    csv = pd.read_csv(tmp_path / "matryoshka_prefixes.csv")
    assert csv["width"].tolist() == [16, 64] and (csv["n_seeds"] == 3).all()
    assert csv["fvu"].tolist() == pytest.approx([0.6, 0.25])
    assert csv["fvu_std"].tolist() == pytest.approx([0.1, 0.05])
    assert "| 0.6000 ± 0.1000 |" in (tmp_path / "matryoshka_prefixes.md").read_text()
