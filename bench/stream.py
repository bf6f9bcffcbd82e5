"""Streamed activations: sharing one stream, stream vs cache, and memory against train tokens.

Sections (models with random weights, built here; CPU fp32 unless ``--device``):

- ``shared``: one stream job training L layers x S sweep points (transcoders at
  ``ln2.hook_normalized -> hook_mlp_out``) against the same L x S dictionaries as separate
  stream jobs (each its own stream of its layer's two hooks), in this process (interpreter
  start-ups not counted). Beside the measured wall-time ratio it prints the ideal
  (F_max + sum T) / sum (F_l + T): F_l the forward to layer l per training batch (a forward of
  ``batch_contexts`` contexts, scaled to ``batch_size`` rows), T one dictionary's training per
  batch (``train_group`` with one member on batches already in memory).
- ``throughput``: training tokens/s per dictionary (each dictionary sees every token), 3
  sweep points at layer 0: from a stream, and from an activation cache (the caching job's
  time stated beside).
- ``rss``: peak RSS of a stream job (one transcoder, tokens memory-mapped from a file as
  ``load_tokens`` gives them) at N and 10 N train tokens, each in a fresh process.

    python bench/stream.py                  # quickstart shapes, a few minutes on 2 cores
    python bench/stream.py --tiny           # seconds (the smoke test)
    python bench/stream.py --only shared --shape gpt2-like --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import interleaved, markdown_table  # noqa: E402
from tcspec.data.cache import ActivationReader, cache_activations  # noqa: E402
from tcspec.data.stream import ActivationStream, StreamConfig  # noqa: E402
from tcspec.dictionaries.coders import CoderConfig  # noqa: E402
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT, full_name  # noqa: E402
from tcspec.spec import TranscoderSpec  # noqa: E402
from tcspec.training import Member, train_group  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A model, the dictionaries trained on it, and the stream feeding them."""

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    context: int
    layers: int  # L: dictionaries at layers 0..L-1
    sweep: int  # S: sweep points (l1 values) per layer
    d_sae: int
    batch_size: int
    steps: int
    batch_contexts: int = 32
    buffer_tokens: int = 0  # 0: four batches


SHAPES = {
    # specs/quickstart.yaml: the toy model, expansion 8, batch 1024, l1 x 3, layers 0 and 1
    "quickstart": Shape("quickstart", 2, 128, 512, 4, 2048, 128, 2, 3, 1024, 1024, 24),
    # gpt2-small's model; dictionaries narrowed to expansion 4 so a CPU finishes
    "gpt2-like": Shape("gpt2-like", 12, 768, 3072, 12, 50257, 128, 12, 2, 3072, 1024, 6, 8),
    "tiny": Shape("tiny", 3, 32, 64, 2, 97, 16, 3, 2, 64, 64, 6, 8),
}


# ------------------------------------------------------------------------------- builders
def random_model(s: Shape, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A HookedTransformer of shape ``s`` with random weights (seeded), in eval mode."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tcspec.models.load import quiet_deprecation

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=s.n_layers, d_model=s.d_model, d_mlp=s.d_mlp, n_heads=s.n_heads,
        d_head=s.d_model // s.n_heads, n_ctx=s.context, d_vocab=s.d_vocab, act_fn="gelu",
        normalization_type="LN", seed=0, device=device, dtype=dtype,
    )  # fmt: skip
    with quiet_deprecation():
        return HookedTransformer(cfg).eval()


BOS = 0
"""The BOS id of `random_tokens`, left out of the streams (`data.bos: exclude`, the default)."""


def random_tokens(s: Shape, rows: int, seed: int = 0) -> np.ndarray:
    """int32 [rows, context] of random ids, BOS (id 0) first in every row."""
    t = np.random.default_rng(seed).integers(1, s.d_vocab, size=(rows, s.context))
    t[:, 0] = BOS
    return t.astype(np.int32)


def transcoders(s: Shape, root: Path, layers: range, sweep: int, **opts) -> list[Member]:
    """``sweep`` transcoders (l1 1e-4, 3e-4, ...) at each of ``layers``."""
    base = dict(d_sae=s.d_sae, batch_size=s.batch_size, lr_warmup_steps=10,
                checkpoint_every=10**9) | opts  # fmt: skip
    out = []
    for layer in layers:
        i, o = full_name(layer, TRANSCODER_IN), full_name(layer, TRANSCODER_OUT)
        for p in range(sweep):
            l1 = 1e-4 * 3**p
            spec = TranscoderSpec(kind="transcoder", l1=l1, **base)
            cfg = CoderConfig("transcoder", s.d_model, s.d_model, s.d_sae, in_hook=i,
                              out_hook=o, layer=layer)  # fmt: skip
            name = f"L{layer}-l1-{l1:.0e}"
            out.append(Member(name, spec, cfg, i, o, root / name, p))
    return out


def hooks_of(members: list[Member]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for m in members for k in (m.in_key, m.out_key)))


def stream_for(model, tokens, s: Shape, members: list[Member]) -> ActivationStream:
    buffer = s.buffer_tokens or 4 * s.batch_size
    cfg = StreamConfig(hooks=hooks_of(members), batch_size=s.batch_size, buffer_tokens=buffer,
                       batch_contexts=s.batch_contexts, exclude_tokens=(BOS,))  # fmt: skip
    return ActivationStream(model, tokens, cfg)


def quiet_train(members, batches, steps, ckpt, device) -> list[dict]:
    return train_group(members, batches, steps, ckpt, device=device, progress=False,
                       log=lambda _: None)  # fmt: skip


def rows_for(s: Shape, steps: int) -> int:
    """Token rows a stream needs for ``steps`` batches without wrapping, buffer included."""
    buffer = s.buffer_tokens or 4 * s.batch_size
    rows = steps * s.batch_size + buffer + s.batch_contexts * (s.context - 1)
    return -(-rows // (s.context - 1))


# ------------------------------------------------------------------------------ sections
def forward_times(model, tokens, s: Shape, rounds: int) -> list[float]:
    """F_l per training batch, l = 0..L-1: a forward to block l, min over rounds."""
    ids = torch.as_tensor(tokens[: s.batch_contexts], dtype=torch.long, device=model.cfg.device)

    def to(layer: int):
        def run():
            with torch.no_grad():
                model(ids, return_type=None, stop_at_layer=layer + 1)
            _sync(model.cfg.device)

        return run

    t = interleaved({layer: to(layer) for layer in range(s.layers)}, rounds)
    scale = s.batch_size / (s.batch_contexts * (s.context - 1))
    return [t[layer].wall() * scale for layer in range(s.layers)]


def train_time(s: Shape, root: Path, device: str, rounds: int) -> float:
    """T: one dictionary's training per batch, from batches already in memory."""
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.randn(s.batch_size, s.d_model, generator=g).to(device)
             for k in (full_name(0, TRANSCODER_IN), full_name(0, TRANSCODER_OUT))}  # fmt: skip

    def batches(start: int):
        while True:
            yield batch

    def run():
        (m,) = transcoders(s, root / "T", range(1), 1)
        quiet_train([m], batches, s.steps, root / "ckT", device)

    return interleaved({"T": run}, rounds)["T"].wall() / s.steps


def run_shared(s: Shape, device: str = "cpu", rounds: int = 2) -> tuple[str, dict]:
    model = random_model(s, device)
    tokens = random_tokens(s, rows_for(s, s.steps))
    root = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    F = forward_times(model, tokens, s, rounds)
    T = train_time(s, root, device, rounds)
    K = s.layers * s.sweep
    ideal = (max(F) + K * T) / (s.sweep * sum(F) + K * T)
    forwards: dict[str, list[tuple[int, int]]] = {"shared": [], "separate": []}

    def job(name: str, ms: list[Member]) -> None:
        src = stream_for(model, tokens, s, ms)
        quiet_train(ms, src.iter_batches, s.steps, root / f"ck-{name}", device)
        forwards[name].append((ms[0].config.layer, src.next_forward + 1))  # + the probe

    def shared():
        job("shared", transcoders(s, root / "shared", range(s.layers), s.sweep))

    def separate():
        for m in transcoders(s, root / "separate", range(s.layers), s.sweep):
            job("separate", [m])

    t = interleaved({"shared": shared, "separate": separate}, rounds, warmup=0)
    measured = t["shared"].wall() / t["separate"].wall()
    # the same with the forwards each job ran (its buffer's first fill, the probe) counted
    per_fwd = [f * s.batch_contexts * (s.context - 1) / s.batch_size for f in F]
    n_shared = forwards["shared"][-1][1]
    n_separate = forwards["separate"][-K:]
    ideal_jobs = (per_fwd[-1] * n_shared + K * T * s.steps) / (
        sum(per_fwd[layer] * n for layer, n in n_separate) + K * T * s.steps
    )
    rows = [[f"F_{layer} (forward to block {layer}, per batch)", F[layer] * 1e3]
            for layer in range(s.layers)]  # fmt: skip
    rows += [
        ["T (one dictionary's training, per batch)", T * 1e3],
        [f"one stream job, {K} dictionaries: wall s", t["shared"].wall()],
        [f"{K} separate stream jobs: wall s", t["separate"].wall()],
        ["forward batches run: one job / all separate jobs",
         f"{n_shared} / {sum(n for _, n in n_separate)}"],
    ]  # fmt: skip
    text = (
        f"Shape `{s.name}`: {s.n_layers}-layer model (d_model {s.d_model}), L = {s.layers} "
        f"x S = {s.sweep} transcoders (d_sae {s.d_sae}), batch {s.batch_size}, {s.steps} "
        f"steps, device {device}; min over {rounds} interleaved rounds.\n\n"
        + markdown_table(["measure", "ms or s"], rows)
        + f"\n\nratio shared / separate: measured **{measured:.3f}**; ideal per batch "
        f"(F_max + sum T) / sum (F_l + T) = **{ideal:.3f}**; ideal with the forwards each "
        f"job ran (buffer fills, probes) = **{ideal_jobs:.3f}** (measured / that "
        f"{measured / ideal_jobs:.2f})\n"
    )
    return text, {f"shared/separate {s.name} measured": measured,
                  f"shared/separate {s.name} ideal": ideal,
                  f"shared/separate {s.name} ideal with start-ups": ideal_jobs}  # fmt: skip


def run_throughput(s: Shape, device: str = "cpu", rounds: int = 2) -> tuple[str, dict]:
    model = random_model(s, device)
    tokens = random_tokens(s, rows_for(s, s.steps))
    root = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    hooks = [full_name(0, TRANSCODER_IN), full_name(0, TRANSCODER_OUT)]
    t0 = time.perf_counter()
    cache_activations(model, tokens, hooks, root / "cache", batch_contexts=s.batch_contexts,
                      progress=False)  # fmt: skip
    cache_s = time.perf_counter() - t0

    def from_stream():
        ms = transcoders(s, root / "stream", range(1), s.sweep)
        quiet_train(ms, stream_for(model, tokens, s, ms).iter_batches, s.steps, root / "ck1",
                    device)  # fmt: skip

    def from_cache():
        ms = transcoders(s, root / "cached", range(1), s.sweep)
        reader = ActivationReader(root / "cache", hooks, s.batch_size, seed=0, device=device)
        quiet_train(ms, reader.iter_batches, s.steps, root / "ck2", device)

    t = interleaved({"stream": from_stream, "cache": from_cache}, rounds, warmup=0)
    tokens_trained = s.steps * s.batch_size
    tps = {k: tokens_trained / v.wall() for k, v in t.items()}
    with_cache = tokens_trained / (t["cache"].wall() + cache_s)
    rows = [
        ["stream", tps["stream"]],
        ["cache (training only)", tps["cache"]],
        ["cache, the caching job's time included", with_cache],
    ]
    text = (
        f"Shape `{s.name}`: {s.sweep} transcoders at layer 0 (d_sae {s.d_sae}), batch "
        f"{s.batch_size}, {s.steps} steps, device {device}; caching {tokens.size:,} tokens "
        f"took {cache_s:.2f} s.\n\n"
        + markdown_table(["source", "training tokens/s per dictionary"], rows)
        + f"\n\nstream / cache: {tps['stream'] / tps['cache']:.3f}\n"
    )
    return text, {"stream/cache tokens per s": tps["stream"] / tps["cache"]}


def rss_job(s: Shape, train_tokens: int) -> dict:
    """One stream job in this process; returns its peak RSS (run in a fresh process)."""
    s = replace(s, d_sae=128, batch_size=4096, buffer_tokens=65536)
    steps = train_tokens // s.batch_size
    root = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    np.save(root / "train.npy", random_tokens(s, rows_for(s, steps)))
    tokens = np.load(root / "train.npy", mmap_mode="r")  # as load_tokens gives them
    model = random_model(s)
    (m,) = transcoders(s, root, range(1), 1)
    t0 = time.perf_counter()
    quiet_train([m], stream_for(model, tokens, s, [m]).iter_batches, steps, root / "ck", "cpu")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MB
    return {"tokens": steps * s.batch_size, "peak_rss_mb": peak, "wall_s": time.perf_counter() - t0}


def run_rss(s: Shape, small: int) -> tuple[str, dict]:
    out = []
    for n in (small, 10 * small):
        cmd = [sys.executable, __file__, "--rss-job", str(n), "--shape", s.name]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ratio = out[1]["peak_rss_mb"] / out[0]["peak_rss_mb"]
    rows = [[f"{r['tokens']:,}", r["peak_rss_mb"], r["wall_s"]] for r in out]
    text = (
        f"Shape `{s.name}`, one transcoder (d_sae 128, batch 4096, buffer 65,536 rows), "
        f"tokens memory-mapped from a file, each job in a fresh process.\n\n"
        + markdown_table(["train tokens", "peak RSS MB", "wall s"], rows)
        + f"\n\npeak RSS ratio 10x tokens / 1x: **{ratio:.3f}**\n"
    )
    return text, {"peak RSS ratio 10x/1x tokens": ratio}


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run(tiny: bool = False) -> tuple[str, dict]:
    """The section of `python -m bench`: shared, throughput and rss at the quickstart shape
    (tiny: seconds), CPU, one thread."""
    torch.set_num_threads(1)
    shape, rounds = SHAPES["tiny" if tiny else "quickstart"], 1 if tiny else 2
    parts = [
        ("One stream for every dictionary", lambda: run_shared(shape, "cpu", rounds)),
        ("Stream vs cache", lambda: run_throughput(shape, "cpu", rounds)),
        ("Memory vs train tokens", lambda: run_rss(shape, 20_000 if tiny else 1_000_000)),
    ]
    texts, headline = [], {}
    for title, fn in parts:
        text, h = fn()
        texts.append(f"### {title}\n\n{text}")
        headline |= h
    return "\n\n".join(texts), headline


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes: seconds")
    p.add_argument("--only", choices=["shared", "throughput", "rss"], action="append")
    p.add_argument("--shape", choices=list(SHAPES), default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rss-job", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    shape = SHAPES[a.shape or ("tiny" if a.tiny else "quickstart")]
    if a.rss_job is not None:
        print(json.dumps(rss_job(shape, a.rss_job)))
        return
    rounds = 1 if a.tiny else 2
    sections = {
        "shared": lambda: run_shared(shape, a.device, rounds),
        "throughput": lambda: run_throughput(shape, a.device, rounds),
        "rss": lambda: run_rss(shape, 20_000 if a.tiny else 1_000_000),
    }
    for name in a.only or list(sections):
        t0 = time.perf_counter()
        text, headline = sections[name]()
        print(f"## {name} ({time.perf_counter() - t0:.0f} s)\n\n{text}", flush=True)
        print(json.dumps(headline), flush=True)


if __name__ == "__main__":
    main()
