"""Tables and plots from synthetic metrics records, checked against hand-computed numbers;
the paper's published numbers as data."""

import math

import numpy as np
import pandas as pd
import pytest

from tcspec.tables import build_tables, interpolate_log_l0, pareto_figure, records_frame
from tcspec.tables.paper import REFERENCES
from tcspec.tables.records import layer_label, layer_span

ORIG, ZERO, MEAN = 3.30, 4.10, 3.70  # original / zero-ablated / mean-ablated CE at every layer

# (l1, L0, CE) per sweep point. Transcoder L0 range [10, 160], SAE [20, 320]: overlap [20, 160].
TC = [(1e-3, 160.0, 3.45), (2e-3, 40.0, 3.50), (4e-3, 10.0, 3.60)]
SAE = [(1e-3, 320.0, 3.47), (2e-3, 80.0, 3.55), (4e-3, 20.0, 3.70)]
LAYERS = (1, 2)


def _record(name: str, kind: str, layer: int, l1: float, l0: float, ce: float) -> dict:
    return {
        "dictionary": name,
        "kind": kind,
        "layers": [layer],
        "member": f"l1_{l1:g}",
        "point": {"l1": l1},
        "opts": {
            "l1": l1,
            "lr": 1e-3,
            "d_sae": 64,
            "expansion": 4,
            "activation": "relu",
            "k": None,
        },
        "d_sae": 64,
        "splice": "each",
        "metrics": {
            "l0": l0 + layer,  # layer 2 a little apart from layer 1
            "l1": 10 * l1,
            "mse": 0.01,
            "fvu": 0.1 * ce - 0.3,
            "dead_fraction": 0.125,
            "ce_loss_original": ORIG,
            "ce_loss_replaced": ce,
            "ce_loss_zero_ablated": ZERO,
            "ce_loss_mean_ablated": MEAN,
            "ce_recovered": (ZERO - ce) / (ZERO - ORIG),
            "kl": ce - ORIG,
        },
    }


def _records(layers=LAYERS, shift_l0: bool = False) -> list[dict]:
    recs = []
    for layer in layers:
        for name, kind, sweep in (("tc", "transcoder", TC), ("sae", "sae", SAE)):
            recs += [_record(name, kind, layer, *p) for p in sweep]
    if not shift_l0:
        for r in recs:
            r["metrics"]["l0"] -= r["layers"][0]
    return recs


def _md_rows(md: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and separator included)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|")]  # fmt: skip


ALL = ("sparsity_fidelity", "matched_l0", "pareto")
TABLES = ("sparsity_fidelity", "matched_l0")  # no plots: faster


def _build(tmp_path, records=None, include=TABLES, **kw):
    kw = {"reference": None, "title": "unit"} | kw
    records = _records() if records is None else records
    return build_tables(records, tmp_path, include=list(include), **kw)


# ---------------------------------------------------------------------- files
def test_writes_every_file_and_nothing_else(tmp_path):
    paths = _build(tmp_path, include=ALL)
    names = {p.name for p in paths}
    expected = {
        f"{t}.{ext}" for t in ("sparsity_fidelity", "matched_l0") for ext in ("md", "tex", "csv")
    }
    expected |= {"pareto_L1.png", "pareto_L2.png", "index.md", "results.csv"}
    assert names == expected
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temp files left behind
    assert all(p.stat().st_size > 0 for p in paths)


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown table"):
        _build(tmp_path, include=["sparsity_fidelity", "pareto_plot"])
    with pytest.raises(ValueError, match="unknown reference"):
        _build(tmp_path, reference="fig9")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- sparsity-fidelity
def test_sparsity_fidelity_csv_holds_the_records_sorted(tmp_path):
    _build(tmp_path)
    csv = pd.read_csv(tmp_path / "sparsity_fidelity.csv")
    assert len(csv) == 12
    assert list(csv["kind"]) == ["transcoder"] * 6 + ["sae"] * 6
    assert list(csv["layer"]) == [1, 1, 1, 2, 2, 2] * 2
    assert list(csv["l1_coef"][:3]) == [1e-3, 2e-3, 4e-3]
    for rec in _records():
        m = rec["metrics"]
        row = csv[
            (csv["dictionary"] == rec["dictionary"])
            & (csv["layer"] == rec["layers"][0])
            & np.isclose(csv["l1_coef"], rec["point"]["l1"])
        ]
        assert len(row) == 1
        for key in ("l0", "ce_loss_replaced", "ce_recovered", "kl", "fvu", "dead_fraction"):
            assert row[key].item() == pytest.approx(m[key], rel=1e-12), key
        assert row["d_sae"].item() == 64


def test_sparsity_fidelity_markdown_is_formatted(tmp_path):
    _build(tmp_path)
    md = (tmp_path / "sparsity_fidelity.md").read_text()
    rows = _md_rows(md)
    assert rows[0] == [
        "dictionary", "kind", "layer", "d_sae", "L1 coef", "L0", "CE", "CE rec. %", "KL", "FVU",
        "dead %",
    ]  # fmt: skip
    # tc, layer 1, l1 2e-3: L0 40, CE 3.50, recovered (4.1-3.5)/0.8 = 75 %, KL 0.2, FVU 0.05.
    assert len(rows) == 2 + 12
    assert rows[3] == ["tc", "transcoder", "1", "64", "0.002", "40.0", "3.5000", "75.00", "0.2000",
                     "0.0500", "12.5"]  # fmt: skip
    assert "Layer 1 CE baselines: original 3.3000, zero-ablated 4.1000, mean-ablated 3.7000." in md
    tex = (tmp_path / "sparsity_fidelity.tex").read_text()
    assert "\\begin{tabular}" in tex and "CE rec. \\%" in tex and "d\\_sae" in tex
    assert "tc & transcoder & 1 & 64 & 0.002 & 40.0 & 3.5000 & 75.00" in tex


def test_missing_metrics_and_joint_splices_are_shown_not_fatal(tmp_path):
    recs = _records(layers=(1,))
    bare = {"dictionary": "tc", "kind": "transcoder", "layers": [1], "point": {"l1": 8e-3}}
    joint = {"dictionary": "tc", "kind": "transcoder", "layers": [0, 1], "point": {"l1": 1e-3}}
    joint |= {"d_sae": 64, "splice": "all"}
    joint["metrics"] = {"ce_loss_replaced": 3.9, "kl": float("nan"), "ce_recovered": None}
    _build(tmp_path, records=[*recs, bare, joint], include=ALL)
    md = (tmp_path / "sparsity_fidelity.md").read_text()
    assert "| 0,1 (all)" in md
    (joint,) = [r for r in _md_rows(md) if r[2] == "0,1 (all)"]
    assert joint[6:] == ["3.9000", "–", "–", "–", "–"]  # CE; no recovered, KL, FVU, dead
    (bare,) = [r for r in _md_rows(md) if r[4] == "0.008"]
    assert bare[3] == "–" and bare[5:] == ["–"] * 6  # no d_sae, no metrics
    res = pd.read_csv(tmp_path / "results.csv")
    assert len(res) == 8 and res["ce_loss_replaced"].isna().sum() == 1
    assert (tmp_path / "pareto_L1.png").exists()


def test_results_csv_flattens_every_record(tmp_path):
    _build(tmp_path)
    res = pd.read_csv(tmp_path / "results.csv")
    assert len(res) == 12
    for col in ("dictionary", "kind", "layers", "member", "point.l1", "opts.lr", "opts.expansion",
                "l0", "l1", "mse", "fvu", "ce_loss_original", "ce_recovered", "kl",
                "ce_recovered_mean_ablation"):  # fmt: skip
        assert col in res.columns, col
    assert res["ce_recovered_mean_ablation"].isna().all()  # no record has it: NaN, not absent
    assert res["l1"].tolist()[:3] == pytest.approx([0.01, 0.02, 0.04])  # the metric, not the coef


# ---------------------------------------------------------------------- matched L0
def test_interpolation_is_linear_in_log_l0_and_never_extrapolates():
    l0, ce = np.array([160.0, 40.0, 10.0]), np.array([3.45, 3.50, 3.60])
    # 20 is halfway between 10 and 40 in log L0: (3.60 + 3.50) / 2.
    got = interpolate_log_l0(l0, ce, np.array([20.0, 10.0, 160.0, 9.99, 161.0, 0.0, -1.0]))
    assert got[:3] == pytest.approx([3.55, 3.60, 3.45], abs=1e-12)
    assert np.isnan(got[3:]).all()
    # Points without an L0 or value drop out; duplicates at one L0 average.
    got = interpolate_log_l0([10, 10, 40, float("nan"), 0], [1.0, 3.0, 4.0, 9.0, 9.0], [20.0])
    assert got == pytest.approx([3.0])


def test_matched_l0_against_hand_computed_values(tmp_path):
    _build(tmp_path)
    long = pd.read_csv(tmp_path / "matched_l0.csv")
    layer1 = long[long["layer"] == 1]
    # Grid: the overlap's ends (20, 160) and the 1-2-5 values inside it (50, 100).
    assert sorted(set(layer1["l0"])) == [20.0, 50.0, 100.0, 160.0]

    def at(family: str, l0: float, col: str = "ce_loss_replaced") -> float:
        return layer1[(layer1["family"] == family) & (layer1["l0"] == l0)][col].item()

    assert at("tc", 20.0) == pytest.approx(3.55)  # halfway from 10 (3.60) to 40 (3.50)
    assert at("sae", 20.0) == pytest.approx(3.70)  # its own end point
    t = math.log(100 / 40) / math.log(160 / 40)
    assert at("tc", 100.0) == pytest.approx(3.50 + t * (3.45 - 3.50))
    t = math.log(100 / 80) / math.log(320 / 80)
    assert at("sae", 100.0) == pytest.approx(3.55 + t * (3.47 - 3.55))
    assert at("sae", 100.0, "kl") == pytest.approx(at("sae", 100.0) - ORIG)
    assert at("tc", 160.0, "ce_recovered") == pytest.approx((ZERO - 3.45) / (ZERO - ORIG))
    md = (tmp_path / "matched_l0.md").read_text()
    assert "nothing is extrapolated" in md
    assert "ΔCE vs best" in md
    tc, sae = [r for r in _md_rows(md) if r[:2] == ["1", "20.0"]]
    assert tc[2:5] == ["tc", "transcoder", "3.5500"] and tc[-2] == "best"
    assert sae[2:5] == ["sae", "SAE", "3.7000"] and sae[-2] == "+0.1500"  # one seed: no mark
    assert at("sae", 20.0, "delta_ce") == pytest.approx(0.15)
    assert at("tc", 20.0, "fvu") == pytest.approx(0.1 * 3.55 - 0.3)  # FVU interpolated too
    assert at("sae", 20.0, "dead_fraction") == pytest.approx(0.125)


def test_matched_l0_rows_only_where_two_families_are_measured(tmp_path):
    recs = _records()
    for r in recs:  # move the SAE sweep to L0 [1000, 16000]: no overlap with the transcoder
        if r["kind"] == "sae":
            r["metrics"]["l0"] *= 50
    _build(tmp_path, records=recs)
    assert pd.read_csv(tmp_path / "matched_l0.csv").empty
    assert "No layer has two dictionary families" in (tmp_path / "matched_l0.md").read_text()


# ---------------------------------------------------------------------- plots
def test_pareto_png_is_a_valid_image(tmp_path):
    from PIL import Image

    _build(tmp_path, include=ALL)
    for layer in LAYERS:
        path = tmp_path / f"pareto_L{layer}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size == (800, 520)


def test_pareto_figure_draws_families_baselines_and_published_points():
    df = records_frame(_records(layers=(15,)))
    ref = REFERENCES["pythia_410m_fig3"].frame()
    fig = pareto_figure(df, "unit: layer 15", ref)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == [
        "tc (transcoder)",
        "sae (SAE)",
        "transcoder (paper)",
        "MLP-out SAE (paper)",
    ]
    assert "original model: CE 3.3000" in labels
    assert any(lab.startswith("MLP zero-ablated: CE 4.1") for lab in labels)
    assert ax.get_xscale() == "log"
    paper = next(line for line in ax.get_lines() if line.get_label() == "transcoder (paper)")
    assert paper.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))  # hollow
    assert list(paper.get_xdata()) == [27.5, 44.0, 82.7, 148.2, 203.8]
    notes = {t.get_text() for t in ax.texts}
    assert {"λ=0.001", "λ=0.002", "λ=0.004", "λ=2.5e-5"} <= notes


# ---------------------------------------------------------------------- references and index
def test_reference_beside_ours(tmp_path):
    recs = _records(layers=(15, 16))
    paths = _build(tmp_path, records=recs, include=ALL, reference="pythia_410m_fig3")
    names = {p.name for p in paths}
    assert {"reference_pythia_410m_fig3.md", "reference_pythia_410m_fig3.tex",
            "reference_pythia_410m_fig3.csv"} <= names  # fmt: skip
    assert "pareto_pythia_410m_fig3.png" not in names  # drawn on pareto_L15.png instead
    ref = pd.read_csv(tmp_path / "reference_pythia_410m_fig3.csv")
    assert ref.equals(REFERENCES["pythia_410m_fig3"].frame())
    index = (tmp_path / "index.md").read_text()
    assert "## Published (Dunefsky et al. 2024, Fig. 3)" in index
    assert "| MLP-out SAE  | sae        |  8.5e-05 |  55.1 | 3.3596 |" in index


def test_reference_of_another_layer_gets_its_own_plot(tmp_path):
    paths = _build(tmp_path, include=ALL, reference="pythia_410m_fig3")
    assert (tmp_path / "pareto_pythia_410m_fig3.png") in paths
    paths = _build(tmp_path / "t1", reference="table1", include=["interpretability"])
    index = (tmp_path / "t1" / "index.md").read_text()
    assert "## Published (Dunefsky et al. 2024, Table 1)" in index
    assert "| interpretable" in index and "interpretability: not built yet" in index


def test_index_shows_every_table_and_plot(tmp_path):
    _build(tmp_path, include=ALL)
    index = (tmp_path / "index.md").read_text()
    assert index.startswith("# unit\n")
    for name in ("sparsity_fidelity.md", "matched_l0.md", "results.csv"):
        assert f"]({name})" in index
    for layer in LAYERS:
        assert f"![layer {layer}](pareto_L{layer}.png)" in index
    assert "## Sparsity and fidelity: unit" in index and "## Matched L0: unit" in index
    assert "| tc           | transcoder | 1       |      64 |     0.002 |  40.0 | 3.5000 |" in index


def test_empty_records_still_write_an_index(tmp_path):
    paths = _build(tmp_path, records=[], include=ALL)
    assert (tmp_path / "index.md") in paths
    assert "no single-layer records to plot" in (tmp_path / "index.md").read_text()


@pytest.mark.slow
def test_two_hundred_records_build(tmp_path):
    recs = []
    for layer in range(4):
        for name, kind in (("tc", "transcoder"), ("sae", "sae")):
            for i in range(25):
                r = _record(name, kind, layer, 1e-4 * 1.2**i, 500 / 1.2**i, 3.3 + 0.01 * i)
                recs.append(r)
    paths = _build(tmp_path, records=recs, include=ALL)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 200
    assert sum(p.suffix == ".png" for p in paths) == 4


# ---------------------------------------------------------------------- the paper's numbers
def test_every_published_table_is_written_as_published(tmp_path):
    """Each reference goes through the table writer and comes back number for number, and the
    data agrees with itself where the paper's text constrains it."""
    for key, ref in REFERENCES.items():
        assert ref.key == key and len(ref.frame()) == len(ref.rows)
        _build(tmp_path / key, reference=key, include=[])
        back = pd.read_csv(tmp_path / key / f"reference_{key}.csv")
        assert back.equals(ref.frame()), key
        assert f"## Published ({ref.citation})" in (tmp_path / key / "index.md").read_text()
    # Table 1 rates the same number of features of each dictionary
    t1 = REFERENCES["table1"].frame().set_index("class")
    counts = t1.loc[["interpretable", "maybe", "uninterpretable"]].sum()
    assert counts.nunique() == 1
    # Fig. 3: within a family, a larger L1 coefficient gives a sparser dictionary
    fig3 = REFERENCES["pythia_410m_fig3"].frame()
    for _, family in fig3.groupby("kind"):
        assert family.sort_values("lambda")["L0"].is_monotonic_decreasing


# ---------------------------------------------------------------------- registries and folder
def test_spec_choices_come_from_the_registries():
    from typing import get_args

    from tcspec.spec import Spec, TablesSpec
    from tcspec.tables.registry import TABLES, builder

    fields = TablesSpec.model_fields
    include = get_args(fields["include"].annotation)[0]  # list[Literal[...]] | None
    assert get_args(get_args(include)[0]) == tuple(TABLES)
    reference = get_args(fields["reference"].annotation)[0]
    assert get_args(reference) == tuple(REFERENCES)  # greater_than included
    assert TablesSpec(reference="greater_than").reference == "greater_than"
    assert all(callable(builder(name)) for name in TABLES)
    default = Spec.model_fields["tables"].default
    assert default.include is None  # the defaults and the tables of the spec's stages
    base = ("sparsity_fidelity", "matched_l0", "pareto")
    assert default.names(set()) == (*base, "training_curves")
    assert default.names({"attribution", "interp"}) == (
        *base, "training_curves", "interpretability", "attribution",
    )  # fmt: skip
    assert {"ground_truth", "sparse_probing"} <= set(default.names({"probe", "synthetic"}))
    assert TablesSpec(include=["pareto"]).names({"attribution"}) == ("pareto",)


def test_the_folder_holds_exactly_the_current_build(tmp_path):
    _build(tmp_path, include=ALL, reference="pythia_410m_fig3")
    (tmp_path / "stale.csv").write_text("old")
    paths = _build(tmp_path, include=["sparsity_fidelity"])
    names = {"sparsity_fidelity.md", "sparsity_fidelity.tex", "sparsity_fidelity.csv"}
    names |= {"index.md", "results.csv"}
    assert {p.name for p in tmp_path.iterdir()} == names == {p.name for p in paths}
    assert all(p.parent == tmp_path for p in paths)


def test_matched_l0_shows_no_blank_rows(tmp_path):
    # each layer's L0 grid differs (L0 + layer: 21..161 at layer 1, 22..162 at 2): a pair of
    # one layer with another layer's L0 has no value in any family and must not be printed
    _build(tmp_path, records=_records(shift_l0=True))
    long = pd.read_csv(tmp_path / "matched_l0.csv")
    rows = _md_rows((tmp_path / "matched_l0.md").read_text())[2:]
    assert len({(r[0], r[1]) for r in rows}) == len(long.groupby(["layer", "l0"])) == 8
    assert len(rows) == len(long)  # a family's row only where it is measured
    assert all(any(c != "–" for c in r[4:9]) for r in rows)
    assert sorted({float(r[1]) for r in rows if r[0] == "2"}) == [22.0, 50.0, 100.0, 162.0]


def test_a_table_with_a_figure_shows_the_figure_in_the_index(tmp_path):
    from tcspec.tables import ExtraTable

    png = tmp_path / "keep_top_k.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    curve = pd.DataFrame({"k": range(130), "prob_diff": np.linspace(0, 0.8, 130)})
    curve.attrs["notes"] = ["k: components kept."]
    extra = {"greater_than": [ExtraTable("keep_top_k-x", curve, "Keep-top-k", png)]}
    out = tmp_path / "tables"
    _build(out, include=["greater_than"], extra=extra)
    index = (out / "index.md").read_text()
    assert "![Keep-top-k](keep_top_k-x.png)" in index
    assert "| 129 |" not in index  # the rows stay in the files
    assert (out / "keep_top_k-x.png").read_bytes() == png.read_bytes()
    assert pd.read_csv(out / "keep_top_k-x.csv")["k"].tolist() == list(range(130))
    md = (out / "keep_top_k-x.md").read_text()
    assert "| 129 |" in md and "k: components kept." in md


def test_rows_whose_metrics_look_wrong_are_flagged_in_the_notes(tmp_path):
    records = _records()
    bad = records[0]
    bad["metrics"] = bad["metrics"] | {"fvu": 1.25, "ce_recovered": -0.5}
    _build(tmp_path, records, include=["sparsity_fidelity"])
    md = (tmp_path / "sparsity_fidelity.md").read_text()
    warnings = [line for line in md.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"Warning: {bad['dictionary']} 1 {bad['member']}:")
    assert "CE recovered -50.0% < 0" in warnings[0] and "FVU 1.25 > 1" in warnings[0]


def test_a_joint_splice_names_its_layer_set():
    """A record over a chosen layer set says which layers were spliced at once."""
    assert layer_span([0, 1]) == "0,1"
    assert layer_span(list(range(11))) == "0-10"
    assert layer_span([0, 1, 2, 5, 7, 8]) == "0-2,5,7,8"
    df = records_frame([{"dictionary": "tc", "kind": "transcoder", "layers": list(range(11)),
                         "splice": "all", "metrics": {}}])  # fmt: skip
    assert layer_label(df.iloc[0]) == "0-10 (all)"


def _clt_and_per_layer_records() -> list[dict]:
    """A CLT over layers 0, 1 (clean-input rows per layer) beside TopK transcoders at k 8 and
    16 per layer, alone and spliced at once."""
    base = {"kind": "transcoder", "d_sae": 64, "opts": {"activation": "topk", "seed": 0}}
    ce = {"ce_loss_original": ORIG, "ce_loss_zero_ablated": ZERO}
    recs = []
    for k, fvu in ((8, 0.2), (16, 0.1)):
        member = {"dictionary": "tc", "member": f"k_{k}", "point": {"k": k}} | base
        for layer in (0, 1):
            m = {"l0": k, "fvu": fvu + layer / 10, "mse": 0.01 * (1 + layer), "dead_fraction": 0.1}
            recs.append(member | {"layers": [layer], "splice": "each", "metrics": m | ce})
        joint = {"ce_loss_replaced": 3.5 - k / 100, "kl": 0.02} | ce
        recs.append(member | {"layers": [0, 1], "splice": "all", "metrics": joint})
    layer_rows = [
        {"block": b, "l0": 6.0 + 6 * b, "fvu": 0.15, "mse": 0.01, "dead_fraction": 0.2 * b,
         "n_tokens": 100}
        for b in (0, 1)
    ]  # fmt: skip
    recs.append({
        "dictionary": "clt", "kind": "clt", "layers": [0, 1], "member": "single", "point": {},
        "opts": {"activation": "relu", "seed": 0}, "d_sae": 64, "splice": "all",
        "metrics": {"l0": 18.5, "ce_loss_replaced": 3.40, "kl": 0.03} | ce,
        "clean_layers": layer_rows, "per_layer": layer_rows,
    })  # fmt: skip
    return recs


def test_a_clt_has_every_metric_per_layer_and_in_total(tmp_path):
    """A CLT's layers and its total sit beside the per-layer transcoders in the sparsity
    and matched-L0 tables, with FVU and dead % in both."""
    _build(tmp_path, records=_clt_and_per_layer_records())
    table = pd.read_csv(tmp_path / "sparsity_fidelity.csv")
    clt = table[table["dictionary"] == "clt"].set_index("layer")
    assert clt.loc["0 (of 0,1)", "fvu"] == 0.15 and clt.loc["1 (of 0,1)", "l0"] == 12.0
    assert clt.loc["0,1 (all)", "l0"] == 18.5  # its own (spliced) total L0 is kept
    assert clt.loc["0,1 (all)", "fvu"] == pytest.approx(0.15)  # pooled over equal layers
    assert clt.loc["0,1 (all)", "dead_fraction"] == pytest.approx(0.1)
    joint = table[(table["dictionary"] == "tc") & (table["layer"] == "0,1 (all)")]
    assert list(joint["l0"]) == [16.0, 32.0]  # the layers' own L0 summed
    # pooled FVU: (0.01 + 0.02) / (0.01 / 0.2 + 0.02 / 0.3) at k 8
    assert joint["fvu"].iloc[0] == pytest.approx(0.03 / (0.01 / 0.2 + 0.02 / 0.3))
    long = pd.read_csv(tmp_path / "matched_l0.csv")
    total = long[long["layers"] == "0,1"].set_index(["l0", "family"])
    assert total.loc[(18.5, "clt"), "ce_loss_replaced"] == 3.40
    assert total.loc[(18.5, "clt"), "delta_ce"] == 0  # the best CE at L0 18.5
    t = math.log(18.5 / 16) / math.log(2)
    assert total.loc[(18.5, "tc"), "ce_loss_replaced"] == pytest.approx(3.42 - t * 0.08)
    assert total[["fvu", "dead_fraction"]].notna().all().all()
    layer0 = long[long["layer"] == 0].set_index(["l0", "family"])
    assert list(layer0.index) == [(6.0, "clt")]  # the transcoders start at L0 8: no overlap
    assert math.isnan(layer0.loc[(6.0, "clt"), "ce_loss_replaced"])  # no CE for one layer
    assert layer0.loc[(6.0, "clt"), "fvu"] == 0.15  # a single point: shown, not dropped
    md = (tmp_path / "matched_l0.md").read_text()
    assert "| 0,1 (all) |" in md and "| CLT " in md


def test_a_clt_and_per_layer_transcoders_share_a_plot_at_total_l0(tmp_path):
    paths = _build(tmp_path, records=_clt_and_per_layer_records(), include=["pareto"])
    assert {"pareto_L0.png", "pareto_L1.png", "pareto_L0-1.png"} <= {p.name for p in paths}
    assert "![layers 0,1 spliced at once](pareto_L0-1.png)" in (tmp_path / "index.md").read_text()
    joint = records_frame(_clt_and_per_layer_records())
    joint = joint[joint["splice"] == "all"]
    (ax,) = pareto_figure(joint, "joint").axes
    drawn = {ln.get_label(): list(ln.get_xdata()) for ln in ax.get_lines()}
    assert drawn["tc (transcoder)"] == [16.0, 32.0] and drawn["clt (CLT)"] == [18.5]


def test_greater_than_studies_merge_into_a_column_per_dictionary():
    from tcspec.tables.circuits import greater_than_merged, keep_top_k_merged

    def study(spliced, every):
        return pd.DataFrame({"yy": [10, 20], "original": [0.8, 0.6], "transcoder_spliced": spliced,
                             "all_transcoders_spliced": every, "mlp_zero_ablated": [0.1, 0.0]})  # fmt: skip

    merged = greater_than_merged({"tc-a": study([0.7, 0.5], [0.6, 0.4]),
                                  "clt-b": study([0.2, 0.4], [0.1, 0.3])})  # fmt: skip
    assert list(merged.columns) == ["yy", "original", "mlp_zero_ablated", "tc-a",
                                    "tc-a (all layers)", "clt-b", "clt-b (all layers)"]  # fmt: skip
    mean = merged.iloc[0]
    assert mean["yy"] == "mean" and mean["clt-b"] == pytest.approx(0.3)
    assert merged.iloc[2]["tc-a (all layers)"] == 0.4

    def curve(values):
        return pd.DataFrame({"layer": 0, "k": [0, 1, 0, 1], "prob_diff": values,
                             "method": ["transcoder"] * 2 + ["neurons"] * 2})  # fmt: skip

    k = keep_top_k_merged(
        {"tc-a": curve([0.1, 0.5, 0.0, 0.2]), "clt-b": curve([0.3, 0.6, 0.0, 0.2])}
    )
    assert k.to_dict("list") == {"layer": [0, 0], "k": [0, 1], "MLP neurons": [0.0, 0.2],
                                 "tc-a": [0.1, 0.5], "clt-b": [0.3, 0.6]}  # fmt: skip


def test_attribution_compared_by_dictionary_and_agreement_on_shared_prompts():
    from tcspec.tables.circuits import attribution_agreement, attribution_by_dictionary

    def row(d, prompt, rep, layers, top, mean_layer):
        return {"dictionary": d, "prompt": prompt, "replacement": rep, "completeness": 0.9,
                "intervention_r": 0.5, "intervention_r_frozen": 1.0, "nodes_kept": 10,
                "features_active": 50, "mean_layer": mean_layer, "error_share": 0.1,
                "layer_share": layers, "top_positions": top}  # fmt: skip

    rows = pd.DataFrame([
        row("tc", "p", 0.8, "0.75 0.25", "1 2 3", 0.25),
        row("tc", "q", 0.6, "0.5 0.5", "1 2", 0.5),
        row("clt", "p", 0.9, "1.0 0.0", "2 3 4", 0.0),
    ])  # fmt: skip
    by = attribution_by_dictionary(rows).set_index("dictionary")
    assert by.loc["tc", "replacement"] == pytest.approx(0.7) and by.loc["tc", "prompts"] == 2
    assert by.loc["clt", "prompts"] == 1
    (pair,) = attribution_agreement(rows).to_dict("records")  # only p is shared
    assert (pair["a"], pair["b"], pair["prompt"]) == ("tc", "clt", "p")
    assert pair["token_overlap"] == pytest.approx(2 / 4)  # {2, 3} of {1, 2, 3, 4}
    assert pair["layer_agreement"] == pytest.approx(0.75)  # 1 - (0.25 + 0.25) / 2
