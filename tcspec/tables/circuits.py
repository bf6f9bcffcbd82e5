"""Circuit studies compared across dictionaries: the attribution graphs of every dictionary
traced on the same prompts, and the greater-than studies, merged into one table (and plot)
each with a column or row per dictionary.

Inputs are the circuit tasks' own tables (``attribution.csv``, ``greater_than.csv``,
``keep_top_k.csv``), keyed by the dictionary's label (``<name>-<member>``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tcspec.circuits.graph.profile import agreement, profile_of_cells
from tcspec.tables.extra import ExtraTable

SCORES = ["replacement", "completeness", "intervention_r_frozen", "intervention_r"]
"""Per-dictionary means of these, plotted side by side."""


# ----------------------------------------------------------------------------- attribution
def attribution_by_dictionary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dictionary, over its prompts: the mean scores, nodes kept, interventions'
    correlations (frozen and live), the influence-weighted mean layer and error share."""
    cols = [*SCORES, "nodes_kept", "features_active", "mean_layer", "error_share"]
    out = rows.groupby("dictionary", sort=False)[cols].mean().reset_index()
    return out.assign(prompts=rows.groupby("dictionary", sort=False).size().to_numpy())


def attribution_agreement(rows: pd.DataFrame) -> pd.DataFrame:
    """Every pair of dictionaries traced on the same prompt: the overlap of the prompt
    positions that carry most influence, the agreement of the influence across layers, and
    each one's mean layer (a shallower circuit has the smaller)."""
    out = []
    for prompt, group in rows.groupby("prompt", sort=False):
        group = group.drop_duplicates("dictionary")
        records = list(group.to_dict("records"))
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                overlap, layers = agreement(profile_of_cells(a), profile_of_cells(b))
                out.append({
                    "prompt": prompt, "a": a["dictionary"], "b": b["dictionary"],
                    "token_overlap": overlap, "layer_agreement": layers,
                    "mean_layer_a": a["mean_layer"], "mean_layer_b": b["mean_layer"],
                })  # fmt: skip
    return pd.DataFrame(out)


def plot_attribution(rows: pd.DataFrame, png: Path) -> Path:
    """Two panels: each dictionary's mean scores and interventions' correlations; its
    share of the features' influence per layer (averaged over its prompts)."""
    from matplotlib.figure import Figure

    from tcspec.atomic import save_figure

    summary = attribution_by_dictionary(rows)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    width = 0.8 / max(len(summary), 1)
    for i, r in enumerate(summary.to_dict("records")):
        xs = [j + i * width for j in range(len(SCORES))]
        left.bar(xs, [r[s] for s in SCORES], width, label=r["dictionary"])
        part = rows[rows["dictionary"] == r["dictionary"]]
        shares = pd.DataFrame([profile_of_cells(x).layer_share for x in part.to_dict("records")])
        right.plot(range(shares.shape[1]), shares.mean(), marker="o", label=r["dictionary"])
    left.set_xticks([j + 0.4 - width / 2 for j in range(len(SCORES))])
    left.set_xticklabels(["replacement", "completeness", "r (frozen)", "r (live)"])
    left.axhline(0, color="grey", lw=0.8)
    left.set_title("attribution graphs, mean over prompts")
    left.legend(fontsize=7)
    right.set_xlabel("layer")
    right.set_ylabel("share of the features' influence")
    right.set_title("where the circuit lies")
    right.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png, dpi=110)


def attribution_tables(rows: pd.DataFrame, work: Path) -> list[ExtraTable]:
    """The per-prompt rows, the per-dictionary comparison (with its plot, drawn into
    ``work``) and, where two or more dictionaries traced a prompt, their agreement."""
    columns = ["dictionary", "prompt", "replacement", "completeness", "nodes_kept",
               "features_active", "intervention_r", "intervention_r_frozen", "mean_layer",
               "error_share", "task", "folder"]  # fmt: skip
    out = [
        ExtraTable(
            "attribution", rows[columns], "Attribution graphs: scores per prompt and dictionary"
        ),
        ExtraTable(
            "attribution_by_dictionary",
            attribution_by_dictionary(rows),
            "Attribution graphs by dictionary, on the same prompts",
            plot_attribution(rows, work / "attribution_by_dictionary.png"),
        ),
    ]
    agree = attribution_agreement(rows)
    if len(agree):
        caption = "Attribution graphs of the same prompt through different dictionaries"
        out.append(ExtraTable("attribution_agreement", agree, caption))
    return out


# ----------------------------------------------------------------------------- greater-than
def greater_than_merged(studies: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per start year and their mean: the original metric and the studied layer's MLP
    zero-ablated (from the first study), then per dictionary its studied layer spliced and
    every one of its layers spliced, columns named by the dictionary."""
    first = next(iter(studies.values()))
    merged = first[["yy", "original", "mlp_zero_ablated"]]
    for label, frame in studies.items():
        cols = {"transcoder_spliced": label, "all_transcoders_spliced": f"{label} (all layers)"}
        part = frame[["yy", *cols]].rename(columns=cols)
        merged = merged.merge(part, on="yy", how="outer")
    mean = merged.drop(columns="yy").mean().to_frame().T.assign(yy="mean")
    both = pd.concat([mean, merged.astype({"yy": object})], ignore_index=True)
    return both[merged.columns]


def keep_top_k_merged(curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Keep-top-k per layer and k: the MLP neurons (from the first study) and each
    dictionary's features, columns named by the dictionary."""
    first = next(iter(curves.values()))
    neurons = first[first["method"] == "neurons"][["layer", "k", "prob_diff"]]
    merged = neurons.rename(columns={"prob_diff": "MLP neurons"})
    for label, frame in curves.items():
        part = frame[frame["method"] == "transcoder"][["layer", "k", "prob_diff"]]
        merged = merged.merge(part.rename(columns={"prob_diff": label}), on=["layer", "k"],
                              how="outer")  # fmt: skip
    return merged.sort_values(["layer", "k"], ignore_index=True)
