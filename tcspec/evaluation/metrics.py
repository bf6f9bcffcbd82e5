"""Evaluation metrics: one registry, one formula per metric, exact over the whole eval set.

Every metric is a pure function of *sufficient statistics* (sums over the eval set), so
the value over many batches is the value over all the data at once, never a mean of
per-batch ratios. `Accumulator` gathers those sums batch by batch; `METRICS` maps a name
to its `Metric` (the docstring of each function states its formula).

Notation: N tokens in the eval set, token t, output width d_out, y_t the true activation
(the hook a dictionary predicts), y_hat_t its prediction, z_t in R^{d_sae} the feature
activations; a feature is *active* on a token when z_{t,i} != 0. For the CE metrics, M is
the number of positions that have a next token (every position but the last of each
context) and L_* are mean next-token cross-entropies (nats) over those M positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DENSE_THRESHOLD = 0.1
"""A feature is dense when it is active on more than this fraction of eval tokens."""

CE_KINDS = ("original", "replaced", "zero_ablated", "mean_ablated")
"""The runs whose per-token next-token losses an `Accumulator` can sum."""

Stats = dict[str, float | torch.Tensor]
"""Sufficient statistics over the eval set (see `Accumulator.stats` for the keys)."""


@dataclass(frozen=True)
class Metric:
    """A named metric: `fn(stats) -> float`, defined when all of `needs` are in the stats."""

    name: str
    fn: Callable[[Stats], float]
    needs: tuple[str, ...]

    @property
    def formula(self) -> str:
        return (self.fn.__doc__ or "").strip()


METRICS: dict[str, Metric] = {}


def metric(name: str, needs: tuple[str, ...]) -> Callable:
    """Register `fn` as metric `name`, computable from the statistics named in `needs`."""

    def register(fn: Callable[[Stats], float]) -> Callable[[Stats], float]:
        if name in METRICS:
            raise ValueError(f"metric `{name}` is registered twice")
        METRICS[name] = Metric(name=name, fn=fn, needs=needs)
        return fn

    return register


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


# ---------------------------------------------------------------------- sparsity
@metric("l0", needs=("n_tokens", "active_sum"))
def l0(s: Stats) -> float:
    """l0 = (1/N) sum_t #{i : z_{t,i} != 0}, the mean number of active features per token."""
    return s["active_sum"] / s["n_tokens"]


@metric("l1", needs=("n_tokens", "abs_sum"))
def l1(s: Stats) -> float:
    """l1 = (1/N) sum_t sum_i |z_{t,i}|, the mean L1 norm of the feature activations."""
    return s["abs_sum"] / s["n_tokens"]


@metric("dead_fraction", needs=("n_tokens", "fire_count"))
def dead_fraction(s: Stats) -> float:
    """dead_fraction = (1/d_sae) #{i : z_{t,i} == 0 for every eval token t}, the fraction of
    features that never fired on the eval set."""
    return (s["fire_count"] == 0).double().mean().item()


@metric("dense_fraction", needs=("n_tokens", "fire_count"))
def dense_fraction(s: Stats) -> float:
    """dense_fraction = (1/d_sae) #{i : (1/N) #{t : z_{t,i} != 0} > DENSE_THRESHOLD}, the
    fraction of features active on more than DENSE_THRESHOLD (0.1) of eval tokens."""
    freq = s["fire_count"].double() / s["n_tokens"]  # [d_sae]
    return (freq > DENSE_THRESHOLD).double().mean().item()


# ---------------------------------------------------------------------- fidelity
@metric("mse", needs=("n_tokens", "d_out", "sq_err_sum"))
def mse(s: Stats) -> float:
    """mse = (1/(N d_out)) sum_t ||y_t - y_hat_t||^2, the mean over tokens and dims."""
    return s["sq_err_sum"] / (s["n_tokens"] * s["d_out"])


@metric("fvu", needs=("sq_err_sum", "y_var_sum"))
def fvu(s: Stats) -> float:
    """fvu = sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean(y)||^2, where mean(y) in R^{d_out}
    is the per-dim mean of y over all N eval tokens: the fraction of the total variance of y
    (summed over dims) that the prediction leaves unexplained."""
    return _ratio(s["sq_err_sum"], s["y_var_sum"])


def pooled_fvu(mse: list[float], fvu: list[float], n_tokens: list[float]) -> float:
    """The FVU of several hooks of one width d_out taken together, from each hook l's mse_l,
    fvu_l and token count N_l: sum_l SSE_l / sum_l SST_l with SSE_l = mse_l N_l d_out and
    SST_l = SSE_l / fvu_l (d_out cancels). NaN when any term is missing or fvu_l is 0."""
    terms = [(m * n, m * n / f) for m, f, n in zip(mse, fvu, n_tokens) if f and f == f]
    if not terms or len(terms) != len(mse) or any(t != t for pair in terms for t in pair):
        return math.nan
    return _ratio(sum(e for e, _ in terms), sum(v for _, v in terms))


@metric("explained_variance", needs=("sq_err_sum", "y_var_sum"))
def explained_variance(s: Stats) -> float:
    """explained_variance = 1 - fvu (fvu as above: total residual over total variance).
    Peer tools differ: some average a per-dim ratio 1 - var_d(y - y_hat) / var_d(y) over
    dims, some use an algebraically wrong variance (squaring E[y^2]); their numbers are not
    comparable with this one."""
    return 1.0 - fvu(s)


@metric("cosine_sim", needs=("n_tokens", "cos_sum"))
def cosine_sim(s: Stats) -> float:
    """cosine_sim = (1/N) sum_t <y_t, y_hat_t> / max(||y_t|| ||y_hat_t||, 1e-8), the mean
    over tokens of the cosine similarity of prediction and target."""
    return s["cos_sum"] / s["n_tokens"]


# ---------------------------------------------------------------------- next-token loss
@metric("ce_loss_original", needs=("n_ce", "ce_original"))
def ce_loss_original(s: Stats) -> float:
    """L_orig = (1/M) sum_{b,p} -log p_orig(token_{b,p+1} | tokens_{b,<=p}), the model's own
    next-token loss over the M positions that have a next token."""
    return s["ce_original"] / s["n_ce"]


@metric("ce_loss_replaced", needs=("n_ce", "ce_replaced"))
def ce_loss_replaced(s: Stats) -> float:
    """L_rep: as L_orig, with the dictionary's output hook replaced by its prediction."""
    return s["ce_replaced"] / s["n_ce"]


@metric("ce_loss_zero_ablated", needs=("n_ce", "ce_zero_ablated"))
def ce_loss_zero_ablated(s: Stats) -> float:
    """L_zero: as L_orig, with the dictionary's output hook (hook_mlp_out) set to 0."""
    return s["ce_zero_ablated"] / s["n_ce"]


@metric("ce_loss_mean_ablated", needs=("n_ce", "ce_mean_ablated"))
def ce_loss_mean_ablated(s: Stats) -> float:
    """L_mean: as L_orig, with the dictionary's output hook set at every position to its mean
    vector over all tokens (all positions) of the eval set."""
    return s["ce_mean_ablated"] / s["n_ce"]


@metric("ce_delta", needs=("n_ce", "ce_original", "ce_replaced"))
def ce_delta(s: Stats) -> float:
    """ce_delta = L_rep - L_orig, the loss added by the replacement (nats)."""
    return ce_loss_replaced(s) - ce_loss_original(s)


@metric("ce_recovered", needs=("n_ce", "ce_original", "ce_replaced", "ce_zero_ablated"))
def ce_recovered(s: Stats) -> float:
    """ce_recovered = (L_zero - L_rep) / (L_zero - L_orig), the fraction of the loss lost by
    zero-ablation that the replacement recovers (1 = perfect, 0 = no better than zero)."""
    l_abl = ce_loss_zero_ablated(s)
    return _ratio(l_abl - ce_loss_replaced(s), l_abl - ce_loss_original(s))


@metric(
    "ce_recovered_mean_ablation", needs=("n_ce", "ce_original", "ce_replaced", "ce_mean_ablated")
)
def ce_recovered_mean_ablation(s: Stats) -> float:
    """ce_recovered_mean_ablation = (L_mean - L_rep) / (L_mean - L_orig), as ce_recovered with
    mean-ablation as the baseline."""
    l_abl = ce_loss_mean_ablated(s)
    return _ratio(l_abl - ce_loss_replaced(s), l_abl - ce_loss_original(s))


@metric("kl", needs=("n_kl", "kl_sum"))
def kl(s: Stats) -> float:
    """kl = (1/K) sum_{b,p} sum_v p_orig(v) (log p_orig(v) - log p_rep(v)), the mean of
    KL(p_original || p_replaced) of the output distributions (nats) over the K counted
    positions, the last of each context included (SAELens's convention)."""
    return s["kl_sum"] / s["n_kl"]


@metric("kl_zero_ablated", needs=("n_kl", "kl_zero_ablated_sum"))
def kl_zero_ablated(s: Stats) -> float:
    """kl_zero_ablated = (1/K) sum KL(p_orig || p_zero), as `kl` with the dictionary's output
    hook set to 0 instead of replaced."""
    return s["kl_zero_ablated_sum"] / s["n_kl"]


@metric("kl_div_score", needs=("n_kl", "kl_sum", "kl_zero_ablated_sum"))
def kl_div_score(s: Stats) -> float:
    """kl_div_score = (KL_zero - KL_rep) / KL_zero, the fraction of the zero-ablation KL the
    replacement removes (SAELens's `kl_div_score`)."""
    return _ratio(s["kl_zero_ablated_sum"] - s["kl_sum"], s["kl_zero_ablated_sum"])


# ---------------------------------------------------------------------- per-token helpers
def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token loss -log p(tokens[:, p+1] | logits[:, p]) for p < ctx - 1.

    logits [batch, ctx, d_vocab], tokens [batch, ctx] -> [batch, ctx - 1]; the last position
    has no next token and is excluded. Computed in float32 or wider.
    """
    lg = logits[:, :-1].float()  # [B, T-1, V]
    target = lg.gather(-1, tokens[:, 1:].long().unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return torch.logsumexp(lg, dim=-1) - target  # [B, T-1]


def ce_from_logprobs(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`next_token_ce` from the log-probs at the positions that have a next token
    (`all_logprobs(logits)[:, :-1]`): [B, T-1, V], [B, T] -> [B, T-1]."""
    return -logp.gather(-1, tokens[:, 1:].long().unsqueeze(-1)).squeeze(-1)


def all_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log softmax of the logits at every position, in float32 or wider: [B, T, V]."""
    return F.log_softmax(logits.float(), dim=-1)


def kl_from_logprobs(
    logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token KL(p || q) = sum_v p(v) (log p(v) - log q(v)) from log-probs [..., V] -> [...].
    `p` = exp(logp) may be passed in when it is reused across many q."""
    p = logp.exp() if p is None else p
    return (p * (logp - logq)).sum(-1)


# ---------------------------------------------------------------------- accumulation
class Accumulator:
    """Sums the sufficient statistics of every metric over batches; `compute()` evaluates
    all metrics whose statistics were given.

    `update(y, y_hat, z)` takes one batch of targets, predictions and feature activations
    ([..., d_out], [..., d_out], [..., d_sae]; leading dims are flattened into tokens);
    `update_ce(original=..., replaced=..., ...)` takes per-token next-token losses for one
    batch (any shape, one entry per counted position with a next token); `update_kl` the
    per-position KL divergences (one entry per counted position).
    Sums are kept in float64 on the device of the first batch.
    """

    def __init__(self) -> None:
        self.n_tokens = 0
        self.d_out: int | None = None
        self.active_sum = self.abs_sum = self.sq_err_sum = self.cos_sum = None
        self.fire_count: torch.Tensor | None = None  # [d_sae] int64
        self.y_mean: torch.Tensor | None = None  # [d_out] float64, running mean of y
        self.y_m2: torch.Tensor | None = None  # [d_out] float64, sum of squared deviations
        self.n_ce = 0
        self.ce_names: frozenset[str] | None = None
        self.ce: dict[str, torch.Tensor] = {}
        self.n_kl = 0
        self.kl: dict[str, torch.Tensor] = {}  # "kl", "kl_zero_ablated" -> float64 sums

    @torch.inference_mode()
    def update(self, y: torch.Tensor, y_hat: torch.Tensor, z: torch.Tensor) -> None:
        if y.shape != y_hat.shape:
            raise ValueError(f"y {tuple(y.shape)} and y_hat {tuple(y_hat.shape)} differ in shape")
        y = y.reshape(-1, y.shape[-1]).double()  # [n, d_out]
        y_hat = y_hat.reshape(-1, y_hat.shape[-1]).double()  # [n, d_out]
        z = z.reshape(-1, z.shape[-1])  # [n, d_sae]
        n = y.shape[0]
        if z.shape[0] != n:
            raise ValueError(f"z has {z.shape[0]} tokens, y has {n}")
        if self.d_out is None:
            self.d_out = y.shape[1]
            zero = torch.zeros((), dtype=torch.float64, device=y.device)
            self.active_sum, self.abs_sum, self.sq_err_sum, self.cos_sum = zero, zero, zero, zero
            self.fire_count = torch.zeros(z.shape[1], dtype=torch.int64, device=y.device)
            self.y_mean = torch.zeros(self.d_out, dtype=torch.float64, device=y.device)
            self.y_m2 = torch.zeros(self.d_out, dtype=torch.float64, device=y.device)
        elif y.shape[1] != self.d_out or z.shape[1] != self.fire_count.shape[0]:
            raise ValueError("batch widths differ from the first batch's")
        if n == 0:
            return

        active = z != 0  # [n, d_sae]
        self.active_sum = self.active_sum + active.sum()
        self.abs_sum = self.abs_sum + z.double().abs().sum()
        self.fire_count += active.sum(0)
        self.sq_err_sum = self.sq_err_sum + (y - y_hat).pow(2).sum()
        self.cos_sum = self.cos_sum + F.cosine_similarity(y, y_hat, dim=-1, eps=1e-8).sum()

        # merge this batch's per-dim mean and squared deviations (Chan et al.) so the total
        # variance about the eval-set mean is exact without a second pass
        b_mean = y.mean(0)  # [d_out]
        b_m2 = (y - b_mean).pow(2).sum(0)  # [d_out]
        n_old, n_new = self.n_tokens, self.n_tokens + n
        delta = b_mean - self.y_mean  # [d_out]
        self.y_mean = self.y_mean + delta * (n / n_new)
        self.y_m2 = self.y_m2 + b_m2 + delta.pow(2) * (n_old * n / n_new)
        self.n_tokens = n_new

    @torch.inference_mode()
    def update_ce(self, **losses: torch.Tensor) -> None:
        """Add per-token next-token losses named by `CE_KINDS` (`original`, `replaced`,
        `zero_ablated`, `mean_ablated`); every call must name the same ones."""
        unknown = set(losses) - set(CE_KINDS)
        if unknown:
            raise ValueError(f"unknown loss kinds {sorted(unknown)}; known: {CE_KINDS}")
        if not losses:
            raise ValueError("update_ce needs at least one per-token loss")
        counts = {k: v.numel() for k, v in losses.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"per-token tensors differ in size: {counts}")
        if self.ce_names is None:
            self.ce_names = frozenset(losses)
        elif frozenset(losses) != self.ce_names:
            raise ValueError(f"update_ce got {sorted(losses)}, earlier {sorted(self.ce_names)}")
        for k, v in losses.items():
            self.ce[k] = self.ce.get(k, 0) + v.double().sum()
        self.n_ce += next(iter(counts.values()))

    @torch.inference_mode()
    def update_kl(self, kl: torch.Tensor, kl_zero_ablated: torch.Tensor | None = None) -> None:
        """Add per-position KL(original || replaced) (and KL(original || zero-ablated)); their
        positions may differ from the CE losses' (KL covers the last position too)."""
        given = {"kl": kl} | (
            {} if kl_zero_ablated is None else {"kl_zero_ablated": kl_zero_ablated}
        )
        if kl_zero_ablated is not None and kl_zero_ablated.numel() != kl.numel():
            raise ValueError(
                f"kl has {kl.numel()} positions, kl_zero_ablated {kl_zero_ablated.numel()}"
            )
        if self.kl and set(given) != set(self.kl):
            raise ValueError(f"update_kl got {sorted(given)}, earlier {sorted(self.kl)}")
        for k, v in given.items():
            self.kl[k] = self.kl.get(k, 0) + v.double().sum()
        self.n_kl += kl.numel()

    def stats(self) -> Stats:
        """The sufficient statistics gathered so far, as Python floats (and `fire_count`)."""
        s: Stats = {}
        if self.n_tokens:
            s |= dict(
                n_tokens=self.n_tokens,
                d_out=self.d_out,
                active_sum=self.active_sum.item(),
                abs_sum=self.abs_sum.item(),
                sq_err_sum=self.sq_err_sum.item(),
                cos_sum=self.cos_sum.item(),
                y_var_sum=self.y_m2.sum().item(),
                fire_count=self.fire_count.cpu(),
            )
        if self.n_ce:
            s["n_ce"] = self.n_ce
            s |= {f"ce_{k}": v.item() for k, v in self.ce.items()}
        if self.n_kl:
            s["n_kl"] = self.n_kl
            s |= {f"{k}_sum": v.item() for k, v in self.kl.items()}
        return s

    def compute(self, names: list[str] | None = None) -> dict[str, float]:
        """Metrics by name (default: every registered metric whose statistics are present)."""
        s = self.stats()
        if names is None:
            return {m.name: float(m.fn(s)) for m in METRICS.values() if set(m.needs) <= set(s)}
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        missing = {n: sorted(set(METRICS[n].needs) - set(s)) for n in names}
        missing = {n: m for n, m in missing.items() if m}
        if missing:
            raise ValueError(f"metrics lack statistics (none were accumulated): {missing}")
        return {n: float(METRICS[n].fn(s)) for n in names}


# ---------------------------------------------------------------------- sanity
DEAD_WARN = 0.5
"""A dictionary with more than this fraction of features never active is flagged."""


def sanity_flags(m: dict) -> list[str]:
    """What looks wrong in one evaluation's metrics, one phrase each (empty: nothing)."""

    def value(name: str) -> float | None:
        v = m.get(name)
        return None if v is None or v != v else float(v)

    flags = []
    if (v := value("ce_recovered")) is not None and v < 0:
        flags.append(f"CE recovered {v:.1%} < 0 (worse than ablating the hook)")
    if (v := value("fvu")) is not None and v > 1:
        flags.append(f"FVU {v:.3g} > 1 (worse than predicting the mean)")
    if (v := value("dead_fraction")) is not None and v > DEAD_WARN:
        flags.append(f"{v:.0%} of features dead (> {DEAD_WARN:.0%})")
    return flags
