"""circuits stage, `task: attribution`: an attribution graph per prompt through one sweep
point's transcoders, or one cross-layer transcoder (``tcspec.circuits.graph``).

Config: ``tcspec.configs.CircuitConfig`` with an ``AttributionSpec`` whose prompts the plan
resolved. Per prompt, in ``prompt-<i>/``: the pruned graph JSON, the full adjacency
(safetensors), the HTML viewer (linking the feature dashboards of an interp task that studied
the same dictionary), the interventions CSV and scatter plot (in the real model, attention
and norms live). ``attribution.csv`` holds one summary row per prompt, with the
interventions' correlation both live and with attention and norms frozen (where the graph is
exact: near 1 unless the graph is wrong). BOS is prepended to each prompt: the graph treats
position 0 as BOS.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tcspec import atomic, layout
from tcspec.tasks import model as model_task


def run(ctx) -> dict:
    import pandas as pd

    cfg, c = ctx.config, ctx.config.circuit
    model = model_task.load(ctx)
    coders = load_dictionaries(ctx, model, f"circuits.dictionary `{c.dictionary.name}`")
    graph_cfg = graph_config(c, model.tokenizer)
    dashboards = dashboard_urls(ctx, cfg.coders)
    label = f"{cfg.coders[0].dictionary}-{cfg.coders[0].member}"
    rows = []
    for i, text in enumerate(c.prompts):
        tokens = prompt_tokens(model, text)
        folder = layout.prompt_dir(ctx.out, i)
        row = one_prompt(model, coders, tokens, text, graph_cfg, folder, dashboards, label)
        rows.append({"prompt": text, "dictionary": label, "folder": folder.name} | row)
    frame = pd.DataFrame(rows)
    atomic.write_text(ctx.out / layout.ATTRIBUTION, frame.to_csv(index=False))
    return {"prompts": len(rows), "mean_replacement": float(frame["replacement"].mean())}


def load_dictionaries(ctx, model, field: str):
    """The transcoders the graphs trace through: one per layer (a dict layer -> Coder), or
    one cross-layer transcoder (a `tcspec.clt.model.CLT`), in the model's dtype."""
    from tcspec import coders as coders_mod
    from tcspec.circuits.attribution import check_transcoders
    from tcspec.kinds import CLT

    refs = ctx.config.coders
    if refs[0].kind == CLT:
        from tcspec.clt import io

        clt = io.load(ctx.coder_dir(refs[0]), ctx.device).to(model.cfg.dtype)
        check_transcoders(model, clt, field)
        return clt
    coders = {
        ref.layer: coders_mod.load(ctx.coder_dir(ref), ctx.device).to(model.cfg.dtype)
        for ref in refs
    }
    check_transcoders(model, coders, field)
    return coders


def one_prompt(model, coders, tokens, text, graph_cfg, folder: Path, dashboards, label) -> dict:
    """The graph files of one prompt, and its summary row."""
    from tcspec.circuits.graph import (
        InterventionConfig,
        attribution_graph,
        plot_interventions,
        prune_graph,
        run_interventions,
        score_graph,
        write_adjacency,
        write_graph_json,
        write_interventions,
        write_viewer,
    )

    graph = attribution_graph(model, coders, tokens, graph_cfg, prompt=text)
    pruned = prune_graph(graph)
    scores = score_graph(graph)
    write_graph_json(graph, folder / layout.GRAPH_JSON, slug=f"{label}-{folder.name}",
                     scan=label, pruned=pruned)  # fmt: skip
    write_adjacency(graph, folder / layout.ADJACENCY)
    write_viewer(graph, folder / layout.VIEWER, _relative(dashboards, folder))
    result = run_interventions(model, coders, graph, InterventionConfig())
    frozen = run_interventions(model, coders, graph, InterventionConfig(freeze=True))
    runs = {"live": result, "frozen": frozen}
    write_interventions(runs, folder / layout.INTERVENTIONS)
    plot_interventions(runs, folder / layout.INTERVENTIONS_PLOT)
    return {
        "replacement": scores.replacement,
        "completeness": scores.completeness,
        "nodes_kept": int(pruned.node_mask.sum()),
        "features_active": graph.n_active,
        "features_in_graph": graph.n_features,
        "intervention_r": _number(result.correlation),
        "intervention_r_frozen": _number(frozen.correlation),
        "tokens": graph.n_pos,
        "seconds": round(graph.seconds, 3),
    }


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def graph_config(c, tokenizer):
    """The library's GraphConfig of a spec entry (a target's texts as token ids)."""
    from tcspec.circuits.graph import GraphConfig

    target = None
    if c.target is not None:
        target = (_one_token(tokenizer, c.target.correct, "correct"),
                  _one_token(tokenizer, c.target.incorrect, "incorrect"))  # fmt: skip
    return GraphConfig(
        max_n_logits=c.max_n_logits, desired_logit_prob=c.desired_logit_prob,
        max_feature_nodes=c.max_feature_nodes, target_tokens=target,
        batch_size=c.batch_size, update_interval=c.update_interval,
        node_threshold=c.node_threshold, edge_threshold=c.edge_threshold,
    )  # fmt: skip


def _one_token(tokenizer, text: str, field: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"circuits.target.{field}: {text!r} is {len(ids)} tokens for the model's "
            "tokenizer; a target must be exactly one token"
        )
    return ids[0]


def prompt_tokens(model, text: str):
    """[seq] token ids of a prompt with BOS first."""
    import torch

    tok = model.tokenizer
    if tok.bos_token_id is None:
        raise ValueError("circuits task attribution: the model's tokenizer has no BOS token")
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    if len(ids) > model.cfg.n_ctx:
        raise ValueError(
            f"circuits.prompts: {text[:40]!r}... is {len(ids)} tokens with BOS, longer than "
            f"the model's n_ctx {model.cfg.n_ctx}"
        )
    return torch.tensor(ids, device=model.cfg.device)


def dashboard_urls(ctx, refs) -> dict[int, Path]:
    """Layer -> the dashboard folder of an interp task that studied that layer's coder (or
    that layer's features of the CLT)."""
    ids = {ref.id for ref in refs}
    return {
        t.config.coder.layer: t.dir(ctx.results) / layout.DASHBOARD
        for t in ctx.deps_of("interp")
        if t.config.coder.id in ids
    }


def _relative(dashboards: dict[int, Path], folder: Path) -> dict[str, str] | None:
    """Per-layer page templates, relative to the viewer's folder."""
    if not dashboards:
        return None
    return {
        str(layer): Path(os.path.relpath(d, folder)).as_posix() + "/features/{feature}.html"
        for layer, d in dashboards.items()
    }
