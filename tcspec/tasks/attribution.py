"""circuits stage, `task: attribution`: an attribution graph per prompt through one sweep
point's transcoders, or one cross-layer transcoder (``tcspec.circuits.graph``).

Config: ``tcspec.plan.configs.CircuitConfig`` with an ``AttributionSpec`` whose prompts the plan
resolved, and the feature pages' settings. The task's folder is a circuit-tracer data folder:
each prompt's pruned graph JSON (``layout.graph_json``) and their index
(``layout.GRAPH_METADATA``), circuit-tracer's feature files (``layout.CT_FEATURES``). Per
prompt, in ``prompt-<i>/``: the full adjacency (safetensors), the HTML viewer, the
interventions CSV and plot (live, and with attention and norms frozen, where the graph is
exact: r near 1 unless the graph is wrong). Every feature a pruned graph keeps gets its
statistics, examples and dashboard page (``layout.graph_pages``) and a card in the viewer
(``layout.GRAPH_CARDS``). ``attribution.csv`` holds one summary row per prompt: scores,
interventions, and where the graph's influence lies (``circuits.graph.profile``). BOS is
prepended to each prompt: the graph treats position 0 as BOS.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tcspec import atomic, layout
from tcspec.tasks import model as model_task


def run_attribution(ctx) -> dict:
    import pandas as pd

    cfg, c = ctx.config, ctx.config.circuit
    model = model_task.load(ctx)
    coders = load_dictionaries(ctx, model, f"circuits.dictionary `{c.dictionary.name}`")
    graph_cfg = graph_config(c, model.tokenizer)
    label = dictionary_label(cfg.coders[0])
    rows, kept, index = [], {}, []
    for i, text in enumerate(c.prompts):
        tokens = prompt_tokens(model, text)
        row, meta = one_prompt(model, coders, tokens, text, graph_cfg, ctx.out, i, label)
        for layer, f in meta.pop("features"):
            kept.setdefault(layer, set()).add(f)
        index.append(meta)
        rows.append({"prompt": text, "dictionary": label, "folder": f"prompt-{i:03d}"} | row)
    pages = write_pages(ctx, model, coders, kept, label)
    atomic.write_json(ctx.out / layout.GRAPH_METADATA, {"graphs": index})
    frame = pd.DataFrame(rows)
    atomic.write_text(ctx.out / layout.ATTRIBUTION, frame.to_csv(index=False))
    return {
        "prompts": len(rows),
        "mean_replacement": float(frame["replacement"].mean()),
        "feature_pages": pages,
    }


def dictionary_label(ref) -> str:
    """A circuit task's dictionary (a `CoderRef` of it) as its files and the tables name it:
    ``<name>-<member>``."""
    return f"{ref.dictionary}-{ref.member}"


def write_pages(ctx, model, coders, kept: dict[int, set[int]], label: str) -> int:
    """Statistics, examples and a dashboard of every feature the pruned graphs keep, per
    layer (`layout.graph_pages`), the same as circuit-tracer's feature files (in
    `layout.CT_FEATURES`/<label>/), and the viewer's feature cards (`layout.GRAPH_CARDS`:
    circuit-tracer's page of each feature, its automatic label and, for a CLT, where it
    writes). Returns the number of pages."""
    from tcspec.features.files import load_stats
    from tcspec.interop.feature_data import feature_pages
    from tcspec.interop.feature_data import write_pages as write_ct_pages
    from tcspec.tasks import interp as interp_task
    from tcspec.tasks import tokens as tokens_task

    p = ctx.config.pages
    tokens = tokens_task.load(ctx, "eval", p.eval_tokens)
    stats_cfg = interp_task.stats_config(
        model, p.examples, p.bands, p.context_window, ctx.config.seed, ctx.config.bos
    )
    cards = {}
    for layer, feats in sorted(kept.items()):
        out, chosen = layout.graph_pages(ctx.out, layer), sorted(feats)
        view = _layer_view(ctx, coders, layer)
        meta = _pages_meta(label, layer, chosen)
        interp_task.write_site(
            model, view, tokens, stats_cfg, lambda count, n, chosen=chosen: chosen, out,
            meta["label"], lambda stats, meta=meta: meta,
        )  # fmt: skip
        stats = load_stats(out / layout.STATS)  # as saved: the vocabulary's strings
        pages = feature_pages(stats, chosen, transcoder_id=f"layer_{layer}")
        write_ct_pages(pages, ctx.out / layout.CT_FEATURES / label, layer=layer)
        cards |= {f"{layer}_{f}": page | _card_extra(stats, f) for f, page in pages.items()}
    text = "window.TCSPEC_CARDS = " + json.dumps(cards, allow_nan=False) + ";\n"
    atomic.write_text(ctx.out / layout.GRAPH_PAGES / layout.GRAPH_CARDS, text)
    return len(cards)


def _layer_view(ctx, coders, layer: int):
    """(coder, input hook, write norms or None) of one layer's features."""
    from tcspec.dictionaries.shapes import layer_view
    from tcspec.tasks import interp as interp_task

    coder, norms = layer_view(coders, layer)
    coder = coder.float()
    layers = [ref.layer for ref in ctx.config.coders]  # one ref (at its first layer): a CLT
    dep = f"coder_{layers.index(layer) if layer in layers else 0}"
    return coder, interp_task.coder_hooks(ctx, coder, dep)[0], norms


def _pages_meta(label: str, layer: int, chosen: list[int]) -> dict:
    return {"label": f"{label} layer {layer}: graph features", "layer": layer, "study": [],
            "proxies": {}, "graph_features": chosen}  # fmt: skip


def _card_extra(stats, f: int) -> dict:
    """A feature's automatic label (its most frequent top-activating tokens, else its top
    de-embedding tokens) and, for a CLT feature, the norm of its decoder into each layer."""
    from tcspec.features.dashboards import top_tokens

    t, vocab = stats.tensors, stats.vocab
    ex = stats.examples[stats.examples["feature"] == f] if len(stats.examples) else None
    words = top_tokens(ex, vocab) if ex is not None and len(ex) else []
    if not words and "deembed_top_ids" in t:
        words = [vocab[j] for j in t["deembed_top_ids"][f][:3].tolist()]
    extra = {"label": " / ".join(w.strip() or repr(w) for w in words)}
    if "write_norms" in t:
        blocks = stats.meta.get("write_blocks", [])
        extra["writes"] = [[int(b), float(n)] for b, n in zip(blocks, t["write_norms"][f].tolist())]
    return extra


def load_dictionaries(ctx, model, field: str):
    """The transcoders the graphs trace through: one per layer (a dict layer -> Coder), or
    one cross-layer transcoder (a `tcspec.dictionaries.clt.CLT`), in the model's dtype."""
    from tcspec.circuits.attribution import check_transcoders
    from tcspec.dictionaries.shapes import load_set

    folders = [(ref.layer, ctx.coder_dir(ref)) for ref in ctx.config.coders]
    coders = load_set(folders, ctx.device, model.cfg.dtype)
    check_transcoders(model, coders, field)
    return coders


def one_prompt(model, coders, tokens, text, graph_cfg, out: Path, i: int, label: str):
    """The graph files of one prompt; its summary row, and its entry in the graph index
    (with the (layer, feature) pairs its pruned graph keeps, under ``features``)."""
    from tcspec.circuits.graph import (
        InterventionConfig,
        attribution_graph,
        graph_json,
        plot_interventions,
        profile,
        profile_cells,
        prune_graph,
        run_interventions,
        score_graph,
        write_adjacency,
        write_interventions,
        write_viewer,
    )

    folder = layout.prompt_dir(out, i)
    graph = attribution_graph(model, coders, tokens, graph_cfg, prompt=text)
    pruned = prune_graph(graph)
    scores, shape = score_graph(graph), profile(graph)
    path, slug = layout.graph_json(out, label, i), layout.graph_slug(label, i)
    data = graph_json(graph, slug, scan=layout.ct_scan(label), pruned=pruned)
    atomic.write_json(path, data, indent=None)
    write_adjacency(graph, folder / layout.ADJACENCY)
    pages, cards = _pages_urls(graph, folder, out)
    write_viewer(graph, folder / layout.VIEWER, pages, cards, slug=slug)
    result = run_interventions(model, coders, graph, InterventionConfig())
    frozen = run_interventions(model, coders, graph, InterventionConfig(freeze=True))
    runs = {"live": result, "frozen": frozen}
    write_interventions(runs, folder / layout.INTERVENTIONS)
    plot_interventions(runs, folder / layout.INTERVENTIONS_PLOT)
    keep = pruned.node_mask[: graph.n_features].cpu()
    meta = data["metadata"] | {"features": {tuple(x) for x in graph.features[keep, ::2].tolist()}}
    return {
        "graph": path.name,
        "replacement": scores.replacement,
        "completeness": scores.completeness,
        "nodes_kept": int(pruned.node_mask.sum()),
        "features_active": graph.n_active,
        "features_in_graph": graph.n_features,
        "intervention_r": _number(result.correlation),
        "intervention_r_frozen": _number(frozen.correlation),
        **profile_cells(shape),
        "tokens": graph.n_pos,
        "seconds": round(graph.seconds, 3),
    }, meta


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def graph_config(c, tokenizer):
    """The library's GraphConfig of a spec entry (a target's texts as token ids)."""
    from tcspec.circuits.graph import GraphConfig

    target = None
    if c.target is not None:
        target = (
            _target(tokenizer, c.target, "correct"),
            _target(tokenizer, c.target, "incorrect"),
        )
    return GraphConfig(
        max_n_logits=c.max_n_logits, desired_logit_prob=c.desired_logit_prob,
        max_feature_nodes=c.max_feature_nodes, target_tokens=target,
        batch_size=c.batch_size, update_interval=c.update_interval,
        node_threshold=c.node_threshold, edge_threshold=c.edge_threshold,
    )  # fmt: skip


def _target(tokenizer, target, field: str) -> int:
    """The token id of a target's `correct` or `incorrect` text."""
    from tcspec.models.tokenizer import target_token_id

    try:
        return target_token_id(tokenizer, getattr(target, field))
    except ValueError as e:
        raise ValueError(f"circuits.target.{field}: {e}") from None


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


def _pages_urls(graph, folder: Path, out: Path) -> tuple[dict[str, str], str]:
    """The viewer's links, relative to its folder: per layer, a feature's dashboard page;
    the feature cards."""
    pages = {
        str(layer): _rel(layout.graph_pages(out, layer) / layout.DASHBOARD, folder)
        + "/features/{feature}.html"
        for layer in range(graph.n_layers)
    }
    return pages, _rel(out / layout.GRAPH_PAGES / layout.GRAPH_CARDS, folder)


def _rel(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()
