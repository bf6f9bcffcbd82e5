"""The workflow's per-stage costs, and the activation cache's throughput against the forward.

Stages: Snakemake writes one `benchmark:` file per job, `<results>/benchmarks/<stage>/<id>.tsv`
(columns s, h:m:s, max_rss, ..., mean_load, cpu_time). They are summed per stage here; a
results folder without them is reported as "not run yet".

Caching: `cache_activations` (forward + conversion + shard writes + checksums) against the bare
forward of the quickstart-shaped toy model on the same tokens, as far as the last hooked block
(the same compute) and to the logits (bench/cache_throughput.py's model and hooks).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import interleaved, markdown_table, threads

STAGE_ORDER = ["model", "tokens", "acts", "train", "evaluate", "interp", "circuits", "tables"]


# ------------------------------------------------------------------------------- stages
def read_benchmarks(results: Path) -> dict[str, list[dict]]:
    """Rows of every `benchmarks/<stage>/<id>.tsv` under `results`, by stage."""
    out: dict[str, list[dict]] = {}
    for tsv in sorted((Path(results) / "benchmarks").glob("*/*.tsv")):
        with tsv.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                row["id"] = tsv.stem
                out.setdefault(tsv.parent.name, []).append(row)
    return out


def _num(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:  # Snakemake writes "NA" where it could not measure
        return float("nan")


def stage_table(results: Path) -> str:
    by_stage = read_benchmarks(results)
    if not by_stage:
        return f"`{results}`: not run yet (no `benchmarks/<stage>/<id>.tsv` files)."
    order = [s for s in STAGE_ORDER if s in by_stage] + sorted(set(by_stage) - set(STAGE_ORDER))
    rows, total = [], 0.0
    for stage in order:
        rs = by_stage[stage]
        wall = [_num(r, "s") for r in rs]
        cpu = [_num(r, "cpu_time") for r in rs]
        rss = [_num(r, "max_rss") for r in rs]
        slowest = max(rs, key=lambda r: _num(r, "s"))
        total += sum(wall)
        rows.append([stage, len(rs), sum(wall), max(wall), sum(cpu), max(rss), slowest["id"]])
    rows.append(["**all**", sum(r[1] for r in rows), total, "", "", "", ""])
    return "\n\n".join([
        f"From `{results}/benchmarks` (Snakemake `benchmark:` files; jobs may have run in "
        "parallel, so the stage sums are work, not elapsed time).",
        markdown_table(["stage", "jobs", "wall s (sum)", "wall s (max)", "cpu s (sum)",
                        "max RSS MB", "slowest job"], rows),  # fmt: skip
    ])  # fmt: skip


# ------------------------------------------------------------------------------ caching
def cache_vs_forward(tiny: bool) -> tuple[str, dict]:
    from bench.cache_throughput import HOOKS, quickstart_model
    from tcspec.data.cache import cache_activations

    n_contexts, bc = (32, 16) if tiny else (512, 32)
    model = quickstart_model("cpu")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 4096, size=(n_contexts, 128)).astype(np.int32)
    tokens[:, 0] = 0
    batches = [torch.as_tensor(tokens[i : i + bc], dtype=torch.long)
               for i in range(0, n_contexts, bc)]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="tcspec-bench-pipe-"))

    def forward(stop):
        def fn():
            with torch.inference_mode():
                for b in batches:
                    model(b, return_type=None if stop else "logits", stop_at_layer=stop)

        return fn

    def cache():
        shutil.rmtree(work / "cache", ignore_errors=True)
        cache_activations(model, tokens, HOOKS, work / "cache", batch_contexts=bc,
                          progress=False)  # fmt: skip

    with threads(1):
        t = interleaved({"forward, blocks 0-1": forward(2), "forward to logits": forward(None),
                         "cache_activations": cache}, 2 if tiny else 3)  # fmt: skip
    size = sum(f.stat().st_size for f in (work / "cache").rglob("*.npy"))
    shutil.rmtree(work)
    n_tok = tokens.size
    rows = [[name, tm.wall() * 1e3, n_tok / tm.wall() / 1e3] for name, tm in t.items()]
    same = t["forward, blocks 0-1"].wall() / t["cache_activations"].wall()
    full = t["forward to logits"].wall() / t["cache_activations"].wall()
    text = "\n\n".join([
        f"Quickstart-shaped toy model (2 layers, d_model 128), {n_contexts} contexts x 128 "
        f"tokens, batches of {bc}; caches 4 hooks ({size / 1e6:.0f} MB fp32); 1 thread; min "
        "of interleaved rounds.",
        markdown_table(["what", "wall ms", "k tokens/s"], rows),
        f"Caching / same-compute forward: **{same:.2f}x** (goal >= 0.85); caching / forward "
        f"to logits: {full:.2f}x.",
    ])  # fmt: skip
    return text, {"caching / same-compute forward": same}


def run(tiny: bool = False, results: Path = Path("results")) -> tuple[str, dict]:
    """Stage table from `results` and the caching comparison: (Markdown, headline numbers)."""
    a = stage_table(results)
    b, hb = cache_vs_forward(tiny)
    return f"### stages\n\n{a}\n\n### activation cache vs forward\n\n{b}", hb
