"""Feature statistics of a trained dictionary over the eval split, in bounded memory.

Two streamed passes over the eval tokens, over the counted positions only: a position whose
token is in `StatsConfig.exclude_tokens` (the BOS id under `data.bos: exclude`, wherever it
sits in a row; `tcspec.data.positions`) is in no statistic and no example, as in the activation
cache and evaluation.

    pass 1  per feature: the number of activating tokens (z > 0), their sum and max, and
            the top-k activating tokens (a running bottom-k merge on the key -z).
    pass 2  knowing each feature's max: a histogram of its nonzero activations over
            (0, max] (quantiles are read from it), and a uniform random sample of
            `per_band` tokens from each of `bands` equal-width activation bands of (0, max]
            (bottom-k of a uniform random key: sampling without replacement, like a
            reservoir). For the "page" features chosen after pass 1, per-token activation
            sums for the context-free proxy (`token_r2`).

Then every kept example of a page feature gets its context: `context_window` tokens either
side (within its row) and the feature's activation at each of them.

Memory is O(d_sae * (top_k + bands * per_band + n_bins)) plus one chunk of activations
z [chunk, d_sae] (`chunk_elems` floats). Pass 1 keeps its nonzero activations (so pass 2
needs no encoding) and its hook inputs (for the contexts), each only while it fits in
`cache_mb`; otherwise they are recomputed (the model run again).

Input-invariant views (`logit_effects`, `deembeddings`) live in `tcspec.features.views`, the
folder format (`save_stats`, `load_stats`) in `tcspec.features.files`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tcspec.data.positions import keep_mask
from tcspec.dictionaries.coders import Coder

HookInputs = Callable[[Tensor], Tensor]
"""tokens [B, T] (int64) -> the dictionary's input activations [B, T, d_in]."""


@dataclass(frozen=True)
class StatsConfig:
    """How feature statistics are gathered."""

    top_k: int = 20
    """Top-activating examples kept per feature."""
    bands: int = 5
    """Equal-width activation bands of (0, max] the random examples are drawn from."""
    per_band: int = 4
    """Random examples kept per band."""
    context_window: int = 5
    """Tokens of context either side of an example."""
    n_bins: int = 50
    """Bins of each feature's activation histogram over (0, max]."""
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    """Quantiles of the nonzero activations, read from the histogram."""
    logit_k: int = 10
    """Tokens in each top/bottom logit and de-embedding list."""
    batch_contexts: int = 32
    """Contexts per forward pass."""
    chunk_elems: int = 1 << 24
    """Largest activation block z [tokens, d_sae] held at once, in elements."""
    cache_mb: int = 1024
    """Keep pass 1's hook inputs for pass 2 when they fit in this many MiB."""
    seed: int = 0
    """Seed of the band sampling."""
    exclude_tokens: tuple[int, ...] = ()
    """Token ids whose positions count in no statistic (the BOS id under `exclude`)."""


# ----------------------------------------------------------------------- bottom-k merges
class BottomK:
    """Per slot, the k entries with the smallest keys among everything offered.

    Candidates arrive in sparse batches (slot, key, pos, val); each is first compared with
    its slot's current k-th key (so later batches mostly drop out at once), buffered, and
    merged by one sort when the buffer is large. Top-k by value is bottom-k of -value;
    uniform sampling without replacement is bottom-k of a uniform random key.
    """

    def __init__(self, n_slots: int, k: int, flush_at: int = 1 << 21):
        self.k, self.flush_at = k, flush_at
        self.keys = torch.full((n_slots, k), math.inf)  # [S, k], ascending per slot
        self.pos = torch.full((n_slots, k), -1, dtype=torch.int64)  # [S, k], -1 = empty
        self.val = torch.zeros(n_slots, k)  # [S, k]
        self._buf: list[tuple[Tensor, ...]] = []
        self._n = 0

    def offer(self, slot: Tensor, key: Tensor, pos: Tensor, val: Tensor) -> None:
        keep = key < self.keys[:, -1].contiguous()[slot]  # [n]
        if keep.any():
            self._buf.append((slot[keep], key[keep], pos[keep], val[keep]))
            self._n += int(keep.sum())
        if self._n >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        slot, key, pos, val = (torch.cat(c) for c in zip(*self._buf))
        self._buf, self._n = [], 0
        touched = torch.nonzero(torch.bincount(slot, minlength=len(self.keys))).flatten()  # [U]
        slot = torch.cat([touched.repeat_interleave(self.k), slot])  # [U*k + n]
        key = torch.cat([self.keys[touched].flatten(), key])
        pos = torch.cat([self.pos[touched].flatten(), pos])
        val = torch.cat([self.val[touched].flatten(), val])
        order = key.argsort(stable=True)
        order = order[slot[order].argsort(stable=True)]  # by slot, then by key
        slot, key, pos, val = slot[order], key[order], pos[order], val[order]
        rank = torch.arange(len(slot)) - torch.searchsorted(slot, slot)  # rank within slot
        keep = rank < self.k  # every touched slot gets ranks 0..k-1 (it brought k entries)
        s, r = slot[keep], rank[keep]
        self.keys[s, r], self.pos[s, r], self.val[s, r] = key[keep], pos[keep], val[keep]


# --------------------------------------------------------------------------- streaming
def model_hook_inputs(model, hook: str) -> HookInputs:
    """A HookInputs reading the full TransformerLens hook `hook` of `model` (the forward
    pass stops after the hook's block)."""
    layer = int(hook.split(".")[1])

    @torch.no_grad()
    def run(tokens: Tensor) -> Tensor:
        store: dict[str, Tensor] = {}

        def save(act: Tensor, hook) -> None:
            store["x"] = act

        model.run_with_hooks(
            tokens.to(model.cfg.device),
            return_type=None,
            stop_at_layer=layer + 1,
            fwd_hooks=[(hook, save)],
        )
        return store["x"]

    return run


@dataclass
class _Chunk:
    """The nonzero activations of one chunk of tokens."""

    pos: Tensor  # [n] global token position row * T + col of every token in the chunk
    tok: Tensor  # [n] token ids
    nz_token: Tensor  # [nnz] index into pos/tok of each nonzero activation
    nz_feat: Tensor  # [nnz] feature index
    nz_val: Tensor  # [nnz] activation (> 0)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values())


class _Stream:
    """Iterates the eval tokens in chunks of nonzero activations.

    The first iteration keeps the chunks (sparse, so later passes need no encoding) and the
    hook inputs (for the examples' contexts), each while it fits in `cfg.cache_mb`; what
    does not fit is recomputed when needed.
    """

    def __init__(self, coder: Coder, hook_inputs: HookInputs, tokens: np.ndarray, cfg: StatsConfig):
        self.coder, self.hook_inputs, self.tokens, self.cfg = coder, hook_inputs, tokens, cfg
        n_rows, T = tokens.shape
        d_in = coder.cfg.d_in
        self.T = T
        self.chunk = max(1, cfg.chunk_elems // coder.cfg.d_sae)  # tokens per encode
        fits = n_rows * T * d_in * 4 <= cfg.cache_mb * 2**20
        self.cache: list[Tensor] | None = [] if fits else None  # hook inputs per batch
        self._cached = False
        self.sparse: list[_Chunk] | None = []  # chunks of the first pass
        self._sparse_bytes = 0
        self._sparse_done = False

    @torch.no_grad()
    def inputs(self) -> Iterator[tuple[int, Tensor]]:
        """(first row, hook inputs [B, T, d_in]) per batch."""
        B = self.cfg.batch_contexts
        for b, r0 in enumerate(range(0, len(self.tokens), B)):
            if self._cached:
                yield r0, self.cache[b]
                continue
            batch = torch.from_numpy(np.asarray(self.tokens[r0 : r0 + B], dtype=np.int64))
            x = self.hook_inputs(batch).float()  # [B, T, d_in]
            if self.cache is not None:
                self.cache.append(x.cpu())
            yield r0, x
        if self.cache is not None:
            self._cached = True

    def chunks(self) -> Iterator[_Chunk]:
        if self._sparse_done and self.sparse is not None:
            yield from self.sparse
            return
        budget = self.cfg.cache_mb * 2**20
        for c in self._encoded():
            if not self._sparse_done and self.sparse is not None:
                self._sparse_bytes += c.nbytes()
                self.sparse.append(c)
                if self._sparse_bytes > budget:
                    self.sparse = None
            yield c
        self._sparse_done = True

    @torch.no_grad()
    def _encoded(self) -> Iterator[_Chunk]:
        T, device = self.T, self.coder.W_enc.device
        for r0, x in self.inputs():
            B = x.shape[0]
            tok = torch.from_numpy(np.asarray(self.tokens[r0 : r0 + B], dtype=np.int64))  # [B, T]
            keep = keep_mask(tok, self.cfg.exclude_tokens)  # [B, T]
            pos = torch.arange(r0 * T, (r0 + B) * T).view(B, T)[keep]  # [n] counted
            tok, x = tok[keep], x[keep]  # [n], [n, d_in]
            for i in range(0, len(x), self.chunk):
                z = self.coder.encode(x[i : i + self.chunk].to(device))  # [n, d_sae]
                t, f = torch.nonzero(z, as_tuple=True)  # [nnz], [nnz]
                yield _Chunk(
                    pos[i : i + self.chunk], tok[i : i + self.chunk], t.cpu(), f.cpu(),
                    z[t, f].float().cpu(),
                )  # fmt: skip


# ------------------------------------------------------------------------------ passes
@dataclass
class FirstPass:
    """Counts, sums, maxima and top-k examples of every feature."""

    n_tokens: int
    count: Tensor  # [d_sae] int64, tokens with z > 0
    total: Tensor  # [d_sae] float64, sum of z
    max: Tensor  # [d_sae] float32
    top: BottomK  # slots = features, key = -z


def pass_one(stream: _Stream) -> FirstPass:
    d_sae, k = stream.coder.cfg.d_sae, stream.cfg.top_k
    count = torch.zeros(d_sae, dtype=torch.int64)
    total = torch.zeros(d_sae, dtype=torch.float64)
    vmax = torch.zeros(d_sae)
    top = BottomK(d_sae, k)
    n = 0
    for c in stream.chunks():
        n += len(c.pos)
        count += torch.bincount(c.nz_feat, minlength=d_sae)
        total.index_add_(0, c.nz_feat, c.nz_val.double())
        vmax.scatter_reduce_(0, c.nz_feat, c.nz_val, reduce="amax")
        top.offer(c.nz_feat, -c.nz_val, c.pos[c.nz_token], c.nz_val)
    top.flush()
    return FirstPass(n, count, total, vmax, top)


@dataclass
class SecondPass:
    """Histograms and banded samples of every feature, token sums of the page features."""

    hist: Tensor  # [d_sae, n_bins] int64 over (0, max]
    bands: BottomK  # slots = feature * bands + band, key = uniform random
    r2: Tensor  # [P] float64, out-of-fold R^2 of the per-token mean (see token_r2)


def pass_two(stream: _Stream, first: FirstPass, pages: Tensor, d_vocab: int) -> SecondPass:
    cfg, d_sae, T = stream.cfg, stream.coder.cfg.d_sae, stream.T
    n_bins, n_bands = cfg.n_bins, cfg.bands
    scale = torch.where(first.max > 0, first.max, torch.ones(d_sae))  # [d_sae]
    hist = torch.zeros(d_sae * n_bins, dtype=torch.int64)
    bands = BottomK(d_sae * n_bands, cfg.per_band)
    g = torch.Generator().manual_seed(cfg.seed)
    P = len(pages)
    page_of = torch.full((d_sae,), -1, dtype=torch.int64)
    page_of[pages] = torch.arange(P)
    # sufficient statistics of the context-free proxy, per fold (row parity)
    S = torch.zeros(2 * P * d_vocab, dtype=torch.float64)  # sum of z per (fold, page, token)
    Q = torch.zeros(2 * P, dtype=torch.float64)  # sum of z^2 per (fold, page)
    Z = torch.zeros(2 * P, dtype=torch.float64)  # sum of z per (fold, page)
    n_tok = torch.zeros(2 * d_vocab, dtype=torch.float64)  # tokens per (fold, token id)
    for c in stream.chunks():
        f, v = c.nz_feat, c.nz_val
        rel = v / scale[f]  # (0, 1]
        b = (rel * n_bins).long().clamp_(max=n_bins - 1)
        hist += torch.bincount(f * n_bins + b, minlength=d_sae * n_bins)
        band = (rel * n_bands).long().clamp_(max=n_bands - 1)
        key = torch.rand(len(v), generator=g)
        bands.offer(f * n_bands + band, key, c.pos[c.nz_token], v)

        fold = (c.pos // T) % 2  # [n]
        n_tok += torch.bincount(fold * d_vocab + c.tok, minlength=2 * d_vocab).double()
        p = page_of[f]
        m = p >= 0
        if m.any():
            fp, pp, vp = fold[c.nz_token[m]], p[m], v[m].double()
            S.index_add_(0, (fp * P + pp) * d_vocab + c.tok[c.nz_token[m]], vp)
            Q.index_add_(0, fp * P + pp, vp * vp)
            Z.index_add_(0, fp * P + pp, vp)
    bands.flush()
    r2 = token_r2(S.view(2, P, d_vocab), Q.view(2, P), Z.view(2, P), n_tok.view(2, d_vocab))
    return SecondPass(hist.view(d_sae, n_bins), bands, r2)


def token_r2(S: Tensor, Q: Tensor, Z: Tensor, n_tok: Tensor) -> Tensor:
    """Out-of-fold R^2 of predicting each feature's activation at every token from the mean
    activation on the same token id in the other fold (two folds: even and odd rows).

    S [2, P, V] sums of z per token id, Q [2, P] sums of z^2, Z [2, P] sums of z, n_tok [2, V]
    token counts. For fold b predicted from fold a, with y_t = S_a[t] / n_a[t] (the fold's
    mean Z_a / N_a for a token unseen in a):
        SS_res_b = Q_b - 2 sum_t y_t S_b[t] + sum_t n_b[t] y_t^2,  SS_tot_b = Q_b - Z_b^2 / N_b
    and R^2 = 1 - (SS_res_0 + SS_res_1) / (SS_tot_0 + SS_tot_1) (NaN for a feature that
    never fires). Returns [P].
    """
    N = n_tok.sum(1)  # [2]
    res = torch.zeros(S.shape[1], dtype=torch.float64)
    tot = torch.zeros_like(res)
    for b, a in ((0, 1), (1, 0)):
        mean_a = (Z[a] / N[a].clamp(min=1))[:, None]  # [P, 1]
        y = torch.where(n_tok[a] > 0, S[a] / n_tok[a].clamp(min=1), mean_a)  # [P, V]
        res += Q[b] - 2 * (y * S[b]).sum(1) + (n_tok[b] * y * y).sum(1)
        tot += Q[b] - Z[b] ** 2 / N[b].clamp(min=1)
    return torch.where(tot > 0, 1 - res / tot, torch.full_like(tot, math.nan))


def quantiles_from_hist(hist: Tensor, vmax: Tensor, levels: Sequence[float]) -> Tensor:
    """Quantiles of each feature's nonzero activations, linear within histogram bins.

    hist [d_sae, n_bins] over (0, max], vmax [d_sae] -> [d_sae, len(levels)] (0 where dead).
    """
    n_bins = hist.shape[1]
    cum = hist.cumsum(1).double()  # [d_sae, n_bins]
    target = cum[:, -1:] * torch.tensor(levels, dtype=torch.float64)  # [d_sae, Q]
    idx = torch.searchsorted(cum, target).clamp_(max=n_bins - 1)  # first bin reaching it
    before = torch.where(idx > 0, cum.gather(1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
    inside = hist.double().gather(1, idx).clamp(min=1)
    frac = ((target - before) / inside).clamp(0, 1)
    q = (idx + frac) * (vmax.double()[:, None] / n_bins)
    return torch.where(cum[:, -1:] > 0, q, torch.zeros_like(q)).float()


# ---------------------------------------------------------------------------- examples
@torch.no_grad()
def example_contexts(
    stream: _Stream, examples: pd.DataFrame, hook_inputs: HookInputs
) -> pd.DataFrame:
    """Add `tokens` (window token ids), `acts` (the feature's activation at each, NaN at an
    excluded position) and `center` (index of the example in its window) to `examples`,
    which has columns feature, row, col."""
    coder, T, w = stream.coder, stream.T, stream.cfg.context_window
    if examples.empty:
        return examples.assign(tokens=[], acts=[], center=[])
    rows = np.unique(examples["row"].to_numpy())
    feats = np.unique(examples["feature"].to_numpy())
    feat_col = {f: i for i, f in enumerate(feats)}
    row_at = {r: i for i, r in enumerate(rows)}
    per_chunk = max(1, stream.cfg.chunk_elems // (T * coder.cfg.d_sae))
    acts = torch.zeros(len(rows), T, len(feats))  # [R, T, F]
    cached = torch.cat(stream.cache) if stream.cache else None  # [n_rows, T, d_in]
    subset = torch.as_tensor(feats)
    for i in range(0, len(rows), per_chunk):
        rs = rows[i : i + per_chunk]
        if cached is not None:
            x = cached[torch.as_tensor(rs)]
        else:
            batch = torch.from_numpy(np.asarray(stream.tokens[rs], dtype=np.int64))
            x = hook_inputs(batch).float()
        x = x.to(coder.W_enc.device)  # [r, T, d_in]
        if coder.cfg.activation == "relu":  # only the features needed
            pre = (x - coder.b_dec) @ coder.W_enc[:, subset] + coder.b_enc[subset]
            z = torch.relu(pre)  # [r, T, F]
        else:
            z = coder.encode(x)[..., subset]
        acts[i : i + len(rs)] = z.float().cpu()
    tokens, window_acts, centers = [], [], []
    for f, r, col in examples[["feature", "row", "col"]].itertuples(index=False):
        lo, hi = max(col - w, 0), min(col + w + 1, T)
        window = np.asarray(stream.tokens[r, lo:hi], dtype=np.int32)
        a = acts[row_at[r], lo:hi, feat_col[f]].numpy().copy()
        a[np.isin(window, stream.cfg.exclude_tokens)] = np.nan  # counted nowhere
        tokens.append(window)
        window_acts.append(a)
        centers.append(col - lo)
    return examples.assign(tokens=tokens, acts=window_acts, center=centers)


def _examples_frame(first: FirstPass, second: SecondPass, pages: Sequence[int], cfg, T: int):
    """Top and banded examples of the page features: feature, section, band, rank, row, col,
    value; top examples by value, banded ones highest band first."""
    idx = torch.as_tensor(list(pages), dtype=torch.int64)
    top_pos, top_val = first.top.pos[idx].tolist(), first.top.val[idx].tolist()  # [P][k]
    shape = (len(pages), cfg.bands, cfg.per_band)
    band_pos = second.bands.pos.view(-1, *shape[1:])[idx].tolist()  # [P][bands][per_band]
    band_val = second.bands.val.view(-1, *shape[1:])[idx].tolist()
    out = []
    for i, f in enumerate(pages):
        for rank, (p, v) in enumerate(zip(top_pos[i], top_val[i])):
            if p >= 0:
                out.append((f, "top", -1, rank, p // T, p % T, v))
        for band in reversed(range(cfg.bands)):
            kept = [(p, v) for p, v in zip(band_pos[i][band], band_val[i][band]) if p >= 0]
            for rank, (p, v) in enumerate(sorted(kept, key=lambda e: -e[1])):
                out.append((f, "band", band, rank, p // T, p % T, v))
    cols = ["feature", "section", "band", "rank", "row", "col", "value"]
    return pd.DataFrame(out, columns=cols)


# -------------------------------------------------------------------------------- all
@dataclass
class FeatureStats:
    """Everything gathered about one dictionary's features (see the module docstring)."""

    n_tokens: int
    context: int
    config: StatsConfig
    tensors: dict[str, Tensor]
    """count, frequency, mean, max, quantiles, hist, top_pos, top_val, band_pos, band_val,
    and, where defined, logit_{top,bottom}_{ids,vals} and deembed_{top,bottom}_{ids,vals}."""
    examples: pd.DataFrame
    """Examples of the page features with context (see `example_contexts`)."""
    pages: list[int]
    """Features with examples (dashboard pages), in the order chosen."""
    r2: dict[int, float]
    """Out-of-fold per-token R^2 of each page feature (context-free proxy)."""
    meta: dict = field(default_factory=dict)
    """Free-form description (dictionary name, layer, ...), saved in features.json."""


def feature_statistics(
    coder: Coder,
    hook_inputs: HookInputs,
    tokens: np.ndarray,
    d_vocab: int,
    cfg: StatsConfig = StatsConfig(),
    choose_pages: Callable[[Tensor, int], Sequence[int]] | None = None,
) -> FeatureStats:
    """Statistics of every feature of `coder` over `tokens` [n_rows, T] (int, BOS first).

    `choose_pages(count [d_sae], n_tokens)` picks, after the first pass, the features that
    get examples with context and the context-free proxy (default: none).
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n_rows, context >= 2], got {tokens.shape}")
    stream = _Stream(coder, hook_inputs, tokens, cfg)
    first = pass_one(stream)
    pages = [int(f) for f in (choose_pages(first.count, first.n_tokens) if choose_pages else [])]
    second = pass_two(stream, first, torch.tensor(pages, dtype=torch.int64), d_vocab)
    d_sae = coder.cfg.d_sae
    count = first.count
    t = {
        "count": count,
        "frequency": (count.double() / max(first.n_tokens, 1)).float(),
        "mean": (first.total / count.clamp(min=1)).float(),
        "max": first.max,
        "quantiles": quantiles_from_hist(second.hist, first.max, cfg.quantiles),
        "hist": second.hist,
        "top_pos": first.top.pos,
        "top_val": first.top.val,
        "band_pos": second.bands.pos.view(d_sae, cfg.bands, cfg.per_band),
        "band_val": second.bands.val.view(d_sae, cfg.bands, cfg.per_band),
    }
    examples = _examples_frame(first, second, pages, cfg, stream.T)
    examples = example_contexts(stream, examples, hook_inputs)
    r2 = {f: float(second.r2[i]) for i, f in enumerate(pages)}
    return FeatureStats(first.n_tokens, stream.T, cfg, t, examples, pages, r2)
