"""Feature pages for circuit-tracer's graph viewer, from the interp stage's statistics.

circuit-tracer's frontend shows a feature from one JSON file per feature (its
`frontend/feature_models.py` schema):

    {transcoder_id, index, examples_quantiles: [{quantile_name, examples: [{tokens,
     tokens_acts_list, train_token_ind, is_repeated_datapoint}]}], top_logits, bottom_logits,
     act_min, act_max, quantile_values, histogram, activation_frequency}

For a scan that starts with `./` it fetches `{scan}/{feature}.json`, where `feature` is the
Cantor pairing of (layer, feature index) that its graph files use for transcoder features.
The local server serves its data folder under `./data/`, so a set exported with
`scan: ./data/features/<name>` finds pages written to `<data dir>/features/<name>/`.

The input is a folder written by `tcspec.features.files.save_stats`: `hist` [d_sae, n_bins] over
(0, max], `max`, `frequency`, optional `logit_{top,bottom}_ids`, and the examples (top and
per-band random ones, with context) of the page features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from tcspec.atomic import write_text
from tcspec.features.files import LoadedStats, load_stats
from tcspec.features.stats import quantiles_from_hist

PERCENTILES = [i / 100 for i in range(1, 101)]
"""`quantile_values` holds the 1st..100th percentiles: the viewer reports an activation's
percentile as the index of the first value at or above it, plus one."""


def cantor_pair(layer: int, feature: int) -> int:
    """circuit-tracer's id of a transcoder feature: (layer + f)(layer + f + 1)/2 + f."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def feature_pages(
    stats: LoadedStats,
    features: Sequence[int],
    *,
    transcoder_id: str,
) -> dict[int, dict]:
    """feature index -> its page (the schema in the module docstring)."""
    t, vocab = stats.tensors, stats.vocab
    d_sae = int(t["count"].shape[0])
    bad = [f for f in features if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"features {bad[:5]} are outside 0..{d_sae - 1}")
    idx = torch.as_tensor(list(features), dtype=torch.int64)
    vmax = t["max"].float()
    pct = quantiles_from_hist(t["hist"][idx], vmax[idx], PERCENTILES)  # [F, 100]
    n_bands = int(stats.meta.get("config", {}).get("bands", 1))
    by_feature = {f: g for f, g in stats.examples.groupby("feature")} if len(stats.examples) else {}
    pages = {}
    for i, f in enumerate(features):
        f = int(f)
        top = [vocab[j] for j in t["logit_top_ids"][f].tolist()] if "logit_top_ids" in t else []
        bottom = (
            [vocab[j] for j in t["logit_bottom_ids"][f].tolist()] if "logit_bottom_ids" in t else []
        )
        pages[f] = {
            "transcoder_id": transcoder_id,
            "index": f,
            "examples_quantiles": _quantiles(by_feature.get(f), vocab, float(vmax[f]), n_bands),
            "top_logits": top,
            "bottom_logits": bottom,
            "act_min": 0.0,
            "act_max": float(vmax[f]),
            "quantile_values": [float(v) for v in pct[i]],
            "histogram": [float(v) for v in t["hist"][f].tolist()],
            "activation_frequency": float(t["frequency"][f]),
        }
    return pages


def _quantiles(frame, vocab: list[str], vmax: float, n_bands: int) -> list[dict]:
    """Top examples, then each activation band's random examples, highest band first."""
    if frame is None or frame.empty:
        return []
    groups: list[dict] = []
    seen: set[tuple[int, int]] = set()
    frame = frame.sort_values(["section", "band", "rank"], ascending=[False, False, True])
    for (section, band), g in frame.groupby(["section", "band"], sort=False):
        if section == "top":
            name = "Top activations"
        else:
            lo, hi = band * vmax / n_bands, (band + 1) * vmax / n_bands
            name = f"Band {band + 1} of {n_bands}: activations in ({lo:.3g}, {hi:.3g}]"
        examples = []
        for row, col, tokens, acts, center in g[
            ["row", "col", "tokens", "acts", "center"]
        ].itertuples(index=False):
            key = (int(row), int(col))
            examples.append(
                {
                    "tokens": [vocab[int(j)] for j in tokens],
                    "tokens_acts_list": [0.0 if math.isnan(a) else float(a) for a in acts],
                    "train_token_ind": int(center),
                    "is_repeated_datapoint": key in seen,
                }
            )
            seen.add(key)
        groups.append({"quantile_name": name, "examples": examples})
    return groups


def write_feature_data(
    stats_dir: str | Path,
    out_dir: str | Path,
    *,
    layer: int,
    transcoder_id: str | None = None,
    features: Sequence[int] | None = None,
) -> list[Path]:
    """Write `{cantor_pair(layer, f)}.json` into `out_dir` for each feature of the
    statistics folder `stats_dir` (default: the page features, those with examples).

    Call once per layer of a transcoder set with the same `out_dir`; ids do not collide.
    """
    stats = load_stats(Path(stats_dir))
    if features is None:
        features = [int(f) for f in stats.meta.get("pages", [])]
    pages = feature_pages(stats, features, transcoder_id=transcoder_id or f"layer_{layer}")
    return write_pages(pages, out_dir, layer=layer)


def write_pages(pages: dict[int, dict], out_dir: str | Path, *, layer: int) -> list[Path]:
    """Write each page of `feature_pages` (of one layer) as `{cantor_pair(layer, f)}.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f, page in pages.items():
        path = out_dir / f"{cantor_pair(layer, f)}.json"
        written.append(write_text(path, json.dumps(page, allow_nan=False)))
    return written
