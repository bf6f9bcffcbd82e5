"""The blind study: sampling, the packet, ratings ingest, Table 1 and the proxies."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tcspec import layout
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.features import study
from tcspec.features.files import save_stats
from tcspec.features.stats import StatsConfig, feature_statistics
from tcspec.features.study import (
    build_study,
    cohen_kappa,
    eligible_features,
    feature_order,
    feature_proxies,
    proxy_summary,
    table1,
    token_concentration,
    two_proportion_z,
    validate_ratings,
)
from tcspec.plan import compile_plan
from tcspec.spec.loader import parse_spec

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
V, D, T, ROWS, F = 30, 8, 12, 60, 24
N = 4  # study features per dictionary
SPEC = (ROOT / "tests" / "workflow" / "tiny.yaml").read_text() + (
    "interp: {features: 4, dashboard_features: 6,\n"
    "        dictionaries: [{name: tc, layer: 1, where: {l1: 0.001}}, {name: sae}]}\n"
)


def stats_folder(folder: Path, label: str, kind: str, seed: int) -> Path:
    """A real statistics folder of a random dictionary on synthetic token-driven inputs."""
    g = torch.Generator().manual_seed(seed)
    coder = Coder(CoderConfig(kind=kind, d_in=D, d_out=D, d_sae=F), seed=seed)
    emb = torch.randn(V, D, generator=g)
    tokens = np.random.default_rng(seed).integers(1, V, size=(ROWS, T)).astype(np.int32)
    tokens[:, 0] = 0
    order: list[int] = []

    def choose(count, n_tokens):
        order.extend(
            feature_order(
                count.numpy(),
                n_tokens,
                n=N,
                seed=0,
                label=label,
                live_threshold=1e-4,
                min_examples=4,
            )
        )
        return order[:6]

    cfg = StatsConfig(top_k=6, bands=3, per_band=2, context_window=3, batch_contexts=8)
    s = feature_statistics(coder, lambda t: emb[t], tokens, V, cfg, choose)
    s.meta = {
        "label": label, "dictionary": label.split("-")[0], "kind": kind, "layer": 0,
        "member": "single", "study": order[:N],
        "proxies": {str(f): p for f, p in feature_proxies(s.examples, s.r2, order[:N]).items()},
    }  # fmt: skip
    vocab = ["<bos>"] + [f"w{i}" for i in range(1, V)]
    vocab[7] = "<script>alert(1)</script>"
    save_stats(s, folder, vocab)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Results folder with the study packet of the tiny spec built from two dictionaries."""
    results = tmp_path_factory.mktemp("results")
    spec = parse_spec(SPEC, "tiny.yaml")
    folders = [
        stats_folder(results / "s1", "tc-L1-l1_0.001", "transcoder", 1),
        stats_folder(results / "s2", "sae-L1-single", "sae", 2),
    ]
    out = study_dir(spec, results)
    summary = build_study(folders, out, n=N, seed=0)
    return spec, results, out, summary


def ingest(study_dir: Path, results: Path, ratings: Path) -> Path:
    """Ingest ratings where the CLI puts them for the experiment `tiny`."""
    return study.ingest(study_dir, ratings, *layout.ratings_files(results, "tiny"))


def tiny_table1(results: Path):
    return table1(*layout.ratings_files(results, "tiny"))


def study_dir(spec, results: Path) -> Path:
    (task,) = compile_plan(spec).stage("study")
    return task.dir(results)


# ------------------------------------------------------------------------------ sampling
def test_eligible_features_exclude_zero_dead_and_rare():
    count = np.array([50, 50, 0, 3, 4, 1, 9])
    assert eligible_features(count, 1000, 1e-3, 4).tolist() == [1, 4, 6]


def test_feature_order_is_seeded_and_complete():
    count = np.full(100, 10)
    a = feature_order(count, 1000, n=5, seed=0, label="tc", live_threshold=1e-4, min_examples=4)
    b = feature_order(count, 1000, n=5, seed=0, label="tc", live_threshold=1e-4, min_examples=4)
    c = feature_order(count, 1000, n=5, seed=0, label="sae", live_threshold=1e-4, min_examples=4)
    assert a == b and a != c
    assert sorted(a) == list(range(1, 100))


def test_asking_for_more_features_than_live_is_one_clear_error():
    count = np.array([9, 9, 9, 0, 2])
    with pytest.raises(ValueError, match=r"asks for 5 .* of `tc`, but only 2 qualify .*at most 2"):
        feature_order(count, 100, n=5, seed=0, label="tc", live_threshold=1e-4, min_examples=4)


# ------------------------------------------------------------------------------- packet
def test_packet_is_blind(world):
    _, _, out, summary = world
    assert summary["features"] == 2 * N
    html = (out / "packet" / "packet.html").read_text()
    for leak in ("tc-L1", "sae-L1", "transcoder", "title="):
        assert leak not in html
    assert not re.search(r"[Ff]eature \d", html)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    key = json.loads((out / "key.json").read_text())
    ids = list(key["ids"])
    assert ids == [f"F{i:02d}" for i in range(1, 2 * N + 1)]
    for fid in ids:
        assert f'id="{fid}"' in html
    per_dict = pd.Series([v["dictionary"] for v in key["ids"].values()]).value_counts()
    assert per_dict.to_dict() == {"tc-L1-l1_0.001": N, "sae-L1-single": N}
    # the key names the features each folder sampled for the study
    for label, info in key["dictionaries"].items():
        study = json.loads((Path(info["folder"]) / "features.json").read_text())["study"]
        assert sorted(
            v["feature"] for v in key["ids"].values() if v["dictionary"] == label
        ) == sorted(study)


def test_template_lists_every_id_and_is_not_yet_valid(world):
    _, _, out, _ = world
    lines = (out / "packet" / "ratings.csv").read_text().splitlines()
    assert lines[0] == "id,rating,context_free,note"
    assert lines[1] == "F01,,0,"
    with pytest.raises(ValueError) as e:
        validate_ratings(out / "packet" / "ratings.csv", [f"F{i:02d}" for i in range(1, 9)])
    assert str(e.value).count("rating: empty") == 8


def test_proxies_file_has_one_row_per_id(world):
    _, _, out, _ = world
    proxies = pd.read_csv(out / "proxies.csv")
    assert len(proxies) == 2 * N
    assert set(proxies.columns) >= {
        "id",
        "distinct_tokens",
        "token_entropy_bits",
        "context_free_r2",
    }
    # inputs are a function of the token alone, so every feature is context-free
    assert (proxies["context_free_r2"] > 0.99).all() and proxies["context_free_proxy"].all()


# ------------------------------------------------------------------------------ ratings
PLAN = {  # per dictionary: (rating, context_free) of its 4 features in key order
    "tc-L1-l1_0.001": [("yes", 1), ("yes", 0), ("maybe", 0), ("no", 0)],
    "sae-L1-single": [("yes", 1), ("yes", 1), ("yes", 0), ("no", 0)],
}


def write_ratings(out: Path, path: Path) -> None:
    key = json.loads((out / "key.json").read_text())["ids"]
    given = {d: iter(v) for d, v in PLAN.items()}
    lines = ["id,rating,context_free,note"]
    for fid, v in key.items():
        rating, cf = next(given[v["dictionary"]])
        lines.append(f'{fid},{rating.upper() if cf else rating},{cf},"a note, with a comma"')
    path.write_text("\n".join(lines) + "\n")


def test_ingest_and_table1_counts(world, tmp_path):
    spec, results, out, _ = world
    ratings = tmp_path / "mine.csv"
    write_ratings(out, ratings)
    target = ingest(out, results, ratings)
    assert target == layout.ratings_files(results, "tiny")[0]
    assert target.read_bytes() == ratings.read_bytes()
    t = tiny_table1(results).set_index("class")
    tc, sae = t["tc-L1-l1_0.001"], t["sae-L1-single"]
    # by hand from PLAN: a "no" marked context-free does not count as context-free
    assert tc.tolist() == [2, 1, 1, 1, 4]
    assert sae.tolist() == [3, 0, 1, 2, 4]
    assert t["paper: transcoder"].tolist() == [41, 8, 1, 6, 50]
    assert t["paper: MLP-in SAE"].tolist() == [38, 8, 4, 16, 50]
    (test,) = tiny_table1(results).attrs["z_tests"]
    # 2/4 vs 3/4: p = 5/8, se = sqrt(5/8 * 3/8 * (1/4 + 1/4)) = 0.342327, z = -0.25 / se
    assert test["z"] == pytest.approx(-0.730297, rel=1e-5)
    assert test["p_value"] == pytest.approx(0.465209, rel=1e-4)


def test_two_proportion_z_on_the_papers_counts():
    # 41/50 vs 38/50: pooled p = 0.79, se = sqrt(0.79 * 0.21 * 0.04) = 0.0814616
    z, p = two_proportion_z(41, 50, 38, 50)
    assert z == pytest.approx(0.06 / 0.0814616, rel=1e-5)
    assert p == pytest.approx(0.46141, rel=1e-3)
    assert two_proportion_z(5, 5, 5, 5) == (0.0, 1.0)


def test_bad_ratings_are_located_and_nothing_is_overwritten(world, tmp_path):
    spec, results, out, _ = world
    good = tmp_path / "good.csv"
    write_ratings(out, good)
    target = ingest(out, results, good)
    before = target.read_bytes()
    bad = tmp_path / "ratings.csv"
    bad.write_text(
        "id,rating,context_free,note\n"
        "F01,yes,0,\n"
        "F99,yes,0,\n"  # line 3: unknown id
        "F02,perhaps,0,\n"  # line 4: bad rating
        "F03,no,2,\n"  # line 5: bad context_free
        "F01,no,0,\n"  # line 6: duplicate
        "F04,yes,0,extra,field\n"  # line 7: too many fields
        "F05,maybe,1,\n"  # line 8: context-free but not interpretable
    )
    with pytest.raises(ValueError) as e:
        ingest(out, results, bad)
    msg = str(e.value)
    for expected in (
        f"{bad}:3: id: `F99` is not in the packet (F01..F08)",
        f"{bad}:4: rating: `perhaps`; expected one of yes, maybe, no",
        f"{bad}:5: context_free: `2`; expected 0 or 1",
        f"{bad}:6: id: `F01` repeats line 2",
        f"{bad}:7: row: 5 fields, the header has 4",
        f"{bad}:8: context_free: 1 on rating `maybe`; a context-free feature is an "
        "interpretable one (rating yes)",
        f"{bad}:9: id: no row for 4 packet id(s): F04, F06, F07, F08",
    ):
        assert expected in msg
    assert "nothing was ingested" in msg
    assert target.read_bytes() == before


def test_a_bad_header_and_a_missing_packet_are_reported(world, tmp_path):
    spec, results, out, _ = world
    bad = tmp_path / "r.csv"
    bad.write_text("id,score\nF01,yes\n")
    with pytest.raises(ValueError, match=r"r.csv:1: header: expected the columns id, rating"):
        validate_ratings(bad, ["F01"])
    with pytest.raises(ValueError, match="run the interp stage"):
        ingest(tmp_path / "empty_results" / "study", tmp_path / "empty_results", bad)
    assert tiny_table1(tmp_path / "empty_results") is None


# ------------------------------------------------------------------------------ proxies
def test_token_concentration():
    assert token_concentration([5, 5, 5, 5]) == (1, 0.0)
    distinct, h = token_concentration([1, 2, 3, 4])
    assert distinct == 4 and h == pytest.approx(2.0)
    assert token_concentration([]) == (0, pytest.approx(math.nan, nan_ok=True))


def test_cohen_kappa_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1], bool)
    # po = 4/6; pe = (1/2)(1/2) + (1/2)(1/2) = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)


def test_proxy_summary_and_agreement(tmp_path):
    ids = [f"F{i}" for i in range(1, 5)]
    key = {
        "ids": {i: {"dictionary": "a" if n < 2 else "b", "feature": n} for n, i in enumerate(ids)},
        "dictionaries": {"a": {}, "b": {}},
    }
    (tmp_path / "key.json").write_text(json.dumps(key))
    pd.DataFrame({
        "id": ids, "dictionary": ["a", "a", "b", "b"], "feature": [0, 1, 2, 3],
        "distinct_tokens": [1, 3, 2, 6], "token_entropy_bits": [0.0, 1.5, 1.0, 2.5],
        "context_free_r2": [0.95, 0.2, 0.9, 0.1], "context_free_proxy": [True, False, True, False],
    }).to_csv(tmp_path / "proxies.csv", index=False)  # fmt: skip
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("id,rating,context_free,note\nF1,yes,1,\nF2,no,0,\nF3,yes,0,\nF4,maybe,0,\n")
    s = proxy_summary(tmp_path).set_index("dictionary")
    assert s.loc["a", "median_distinct_tokens"] == 2.0
    assert s.loc["all", "context_free_proxy_fraction"] == 0.5
    s = proxy_summary(tmp_path, ratings).set_index("dictionary")
    assert s.loc["a", "context_free_agreement"] == 1.0
    assert s.loc["b", "context_free_agreement"] == 0.5  # F3: proxy yes, raters no
    # all: proxy [1,0,1,0], raters [1,0,0,0]: po 3/4, pe 1/2*1/4 + 1/2*3/4 = 1/2, kappa 1/2
    assert s.loc["all", "context_free_kappa"] == pytest.approx(0.5)
    # yes-rated entropies {0, 1.0} vs others {1.5, 2.5}: every pair ordered, AUC 1
    assert s.loc["all", "entropy_auc"] == 1.0
    assert s.loc["all", "interpretable_fraction"] == 0.5


# ---------------------------------------------------------------------- the real stage
@pytest.mark.slow
def test_interp_stage_end_to_end(tmp_path):
    """The tiny workflow up to the interp stage, then ratings ingested into Table 1."""
    spec, results = tmp_path / "tiny.yaml", tmp_path / "results"
    spec.write_text(SPEC)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [sys.executable, "-m", "snakemake", "-c2", "study", "--config", f"spec={spec}"]
    out = subprocess.run(
        cmd + [f"results={results}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-4000:]
    folders = sorted((results / "tasks" / "interp").glob("*/dashboard"))
    assert len(folders) == 2
    for site in folders:
        meta = json.loads((site.parent / "stats" / "features.json").read_text())
        pages = sorted(p.stem for p in (site / "features").glob("*.html"))
        assert (site / "index.html").exists() and pages == sorted(map(str, meta["pages"]))
        assert set(meta["study"]) <= set(meta["pages"]) and len(meta["study"]) == N
    out_dir = study_dir(parse_spec(SPEC, "tiny.yaml"), results)
    assert len(json.loads((out_dir / "key.json").read_text())["ids"]) == 2 * N
    ratings = tmp_path / "ratings.csv"
    write_ratings(out_dir, ratings)
    ingest(out_dir, results, ratings)
    counts = tiny_table1(results).set_index("class")
    assert counts.loc["total", "tc-L1-l1_0.001"] == counts.loc["total", "sae-L1-single"] == N
