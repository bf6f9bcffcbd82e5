"""Matryoshka prefix FVU: the library function against the definition and against the
evaluate stage's FVU at full width, and its table from evaluation records."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.evaluation.prefixes import prefix_fvu, prefix_key
from tcspec.evaluation.spliced import evaluate_coders
from tcspec.tables import build_tables, records_frame
from tcspec.tables.matryoshka import prefix_table

torch.set_num_threads(1)
D, F, WIDTHS = 32, 24, (4, 12, 24)


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D, d_mlp=64, n_heads=2, d_head=16, n_ctx=16, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg).eval()


def _coder(kind: str, activation: str = "batchtopk") -> Coder:
    out = "hook_mlp_out" if kind != "sae" else "ln2.hook_normalized"
    cfg = CoderConfig(kind, D, D, F, activation, 4, "blocks.1.ln2.hook_normalized",
                      f"blocks.1.{out}", 1)  # fmt: skip
    c = Coder(cfg, seed=3)
    with torch.no_grad():
        c.W_dec.mul_(0.3)
        if cfg.thresholded:
            c.threshold.fill_(0.1)
    return c.requires_grad_(False)


@pytest.mark.parametrize(
    "kind, activation",
    [("sae", "batchtopk"), ("skip_transcoder", "batchtopk"), ("transcoder", "topk")],
)
def test_prefix_fvu_is_the_definition_and_full_width_is_evaluates_fvu(model, kind, activation):
    coder = _coder(kind, activation)
    tokens = torch.randint(0, 50, (6, 16), generator=torch.Generator().manual_seed(1))
    fvus = prefix_fvu(model, coder, 1, tokens, 4, WIDTHS)
    assert list(fvus) == list(WIDTHS)
    _, cache = model.run_with_cache(tokens)
    x = cache[coder.cfg.in_hook].reshape(-1, D).double()
    y = cache[coder.cfg.out_hook].reshape(-1, D).double()
    c64 = _coder(kind, activation).double()
    z = c64.encode(x)
    assert activation != "topk" or ((z > 0).sum(1) <= 4).all()  # k per token
    for w in WIDTHS:
        y_hat = c64.decode(z * (torch.arange(F) < w), x)
        ref = float((y - y_hat).square().sum() / (y - y.mean(0)).square().sum())
        assert fvus[w] == pytest.approx(ref, rel=1e-5)
    full = evaluate_coders(model, [(coder, 1)], tokens, 4, progress=False)[0]
    assert fvus[F] == pytest.approx(full["fvu"], rel=1e-9)
    with pytest.raises(ValueError, match=r"prefix widths \[25\]"):
        prefix_fvu(model, coder, 1, tokens, 4, [25])


def test_prefix_table_is_long_form_and_built(tmp_path):
    def record(name, matryoshka, activation="batchtopk"):
        metrics = {"l0": 4.0, "fvu": 0.2}
        if matryoshka:
            metrics |= {prefix_key(w): 1.0 - w / 30 for w in WIDTHS}
        opts = {"activation": activation, "k": 4, "matryoshka": list(WIDTHS[:-1])}
        return {"dictionary": name, "kind": "sae", "layers": [1], "member": "k_4",
                "point": {"k": 4}, "opts": opts, "d_sae": F, "splice": "each",
                "metrics": metrics}  # fmt: skip

    records = [record("mat", True), record("plain", False), record("mat_topk", True, "topk")]
    table = prefix_table(records_frame(records))
    assert sorted(set(table["dictionary"])) == ["mat", "mat_topk"]
    for name in ("mat", "mat_topk"):
        rows = table[table["dictionary"] == name]
        assert rows["width"].tolist() == list(WIDTHS)
        assert rows["fvu"].tolist() == pytest.approx([1.0 - w / 30 for w in WIDTHS])
    paths = build_tables(
        records, tmp_path, include=["matryoshka_prefixes"], title="t", reference=None
    )
    assert {p.name for p in paths} >= {"matryoshka_prefixes.md", "matryoshka_prefixes.csv"}
    csv = pd.read_csv(tmp_path / "matryoshka_prefixes.csv")
    for name in ("mat", "mat_topk"):
        assert csv[csv["dictionary"] == name]["width"].tolist() == list(WIDTHS)
    assert len(csv) == 2 * len(WIDTHS)
    md = (tmp_path / "matryoshka_prefixes.md").read_text()
    assert "| mat " in md and "| mat_topk " in md


def test_a_jumprelu_l0_coef_sweep_is_one_family_with_its_coefficient_shown(tmp_path):
    def record(c, l0):
        opts = {"activation": "jumprelu", "l0_coef": c, "l1": 0.0, "k": None}
        return {"dictionary": "jr", "kind": "transcoder", "layers": [1], "member": f"c{c}",
                "point": {"l0_coef": c}, "opts": opts, "d_sae": F, "splice": "each",
                "metrics": {"l0": l0, "fvu": 0.1}}  # fmt: skip

    df = records_frame([record(1e-3, 30.0), record(1e-2, 10.0)])
    assert df["family"].tolist() == ["jr", "jr"]
    assert df["sweep"].tolist() == ["λ0=0.001", "λ0=0.01"]
    assert df["l1_coef"].isna().all()
    build_tables(
        [record(1e-3, 30.0), record(1e-2, 10.0)], tmp_path, include=["sparsity_fidelity"],
        title="t", reference=None,
    )  # fmt: skip
    csv = pd.read_csv(tmp_path / "sparsity_fidelity.csv")
    assert csv["l0_coef"].tolist() == [1e-3, 1e-2]
    assert "L0 coef" in (tmp_path / "sparsity_fidelity.md").read_text()
