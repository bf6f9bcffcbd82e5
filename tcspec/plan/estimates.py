"""What every job of a plan needs, estimated before it runs: memory and time.

The one home of the plan's estimates; `tcspec plan` shows them and the workflow asks the
scheduler for them (Snakemake's ``mem_mb`` and ``runtime``).

A job's ``Cost`` is what it holds (bytes) and does: FLOPs of model forwards, FLOPs of
dictionary work, bytes read or written, and a fixed ``STARTUP_S`` (interpreter, imports,
loading the model and inputs). Its time is

    seconds = STARTUP_S + model FLOPs / rate(model precision) + dictionary FLOPs /
              rate(training precision) + I/O bytes / IO_BYTES_PER_S + other seconds

with the rates of `tcspec.compute.throughput` for its device (a GPU class, or its CPU threads): the
model's precision is its dtype's, the dictionary work's a trained dictionary's
``precision`` (fp32 for evaluation and interp, which encode in float32).
The scheduler is asked for ``runtime = ceil(TIME_MARGIN x seconds / 60)`` minutes and
``mem_mb = ceil(MEM_MARGIN x (bytes + RUNTIME_BYTES) / 2^20)``. A pass (several train or
evaluate tasks in one job) is costed as a whole (`tcspec.plan.resources`): the model's
forwards or the cache read once, every member's own work added.

FLOPs counted (tokens T, B a batch, F = d_sae):

- forward of the model over T tokens, to block n: T x ``forward_flops_per_token``, plus
  the unembedding (2 d_model d_vocab) when the loss is needed;
- training a dictionary: 6 x T x F x (d_in + d_out) (forward and backward of both
  matmuls; TopK does less); a CLT: ``tcspec.plan.clt_cost``;
- an evaluation pass over E tokens: a clean forward, the means pass, a spliced forward
  per member and two ablated forwards (zero, mean) per member, every one full depth, plus
  each member's encode and decode (2 E F (d_in + d_out));
- interp: three forwards over the eval tokens (statistics, the second pass, contexts) and
  two encodes; circuits: ``CIRCUIT_FORWARDS`` full forwards a prompt at the spec's
  context (keep-top-k curves, ablations, attribution backwards: an allowance);
- the toy model: 3 x its forward over the tokens trained on (forward and backward);
  tokenizing: ``TOKENIZE_PER_S``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tcspec.compute.throughput import Rates

MB = 2**20
RUNTIME_BYTES = 1500 * MB
"""Memory of the interpreter, torch and the libraries a job imports (with room)."""
STARTUP_S = 120.0
"""Seconds a job spends before its work: imports, loading the model, tokens, inputs."""
TIME_MARGIN = 2.0
"""The scheduler's runtime is this multiple of the estimate (FLOP/s vary with shapes)."""
MEM_MARGIN = 1.2
"""The scheduler's memory is this multiple of the estimate."""
IO_BYTES_PER_S = 200e6
"""Disk or network bytes a second: reading a cache, writing one, loading weights."""
TOKENIZE_PER_S = 200_000
"""Tokens a second a tokenizing job makes (fetching the text included)."""
CIRCUIT_FORWARDS = 2000
"""Full forwards (at the spec's context) a circuit study makes per prompt: an allowance."""
LOGIT_COPIES = 4
"""[batch, context, d_vocab] float32 tensors an evaluation holds at once (the logits, the
clean and the patched log-probabilities, one temporary)."""


@dataclass(frozen=True)
class Cost:
    """What one job holds and does (see the module doc)."""

    mem_bytes: int = 0
    model_flops: int = 0
    dict_flops: int = 0
    io_bytes: int = 0
    other_s: float = 0.0
    """Seconds of work counted in neither FLOPs nor bytes (tokenizing)."""


@dataclass(frozen=True)
class ModelSize:
    """The sizes of the model every job runs, and the precisions its work runs in."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    context: int
    act_bytes: int = 4
    """Bytes a weight or activation of the model takes (its dtype)."""
    model_precision: str = "fp32"
    """Precision of the model's forwards (its dtype: fp32, or bf16 for a half model)."""

    @property
    def params(self) -> int:
        return 12 * self.n_layers * self.d_model**2 + 2 * self.d_vocab * self.d_model

    @property
    def weight_bytes(self) -> int:
        return self.params * self.act_bytes

    def forward_flops(self, tokens: int, blocks: int | None = None) -> int:
        """FLOPs of a forward over ``tokens`` to ``blocks`` blocks (None: all, and the
        unembedding)."""
        n = self.n_layers if blocks is None else blocks
        per = forward_flops_per_token(n, self.d_model, self.d_mlp, self.context)
        per += 2 * self.d_model * self.d_vocab if blocks is None else 0
        return tokens * per

    def logits_bytes(self, batch_contexts: int) -> int:
        return LOGIT_COPIES * batch_contexts * self.context * self.d_vocab * 4


def forward_flops_per_token(n_blocks: int, d_model: int, d_mlp: int, context: int) -> int:
    """FLOPs per token of a forward through ``n_blocks`` blocks: 2 x the block matmuls'
    weights (4 d_model^2 attention + 2 d_model d_mlp MLP) plus the attention scores and
    mix (2 x 2 x context x d_model, as if every position attended the whole context)."""
    return n_blocks * (2 * (4 * d_model * d_model + 2 * d_model * d_mlp) + 4 * context * d_model)


def train_flops(tokens: int, d_in: int, d_out: int, d_sae: int) -> int:
    """FLOPs of training one per-layer dictionary on ``tokens`` rows."""
    return 6 * tokens * d_sae * (d_in + d_out)


def seconds(
    cost: Cost, m: ModelSize, rates: Rates, gpu: int, threads: int, precision: str = "fp32"
) -> float:
    """Estimated wall seconds of a job whose dictionary work runs in ``precision`` (see
    the module doc)."""
    model_rate = rates.flops_per_s(gpu, m.model_precision, threads)
    dict_rate = rates.flops_per_s(gpu, precision, threads)
    return (
        STARTUP_S
        + cost.model_flops / model_rate
        + cost.dict_flops / dict_rate
        + cost.io_bytes / IO_BYTES_PER_S
        + cost.other_s
    )


def request(
    cost: Cost, m: ModelSize, rates: Rates, gpu: int, threads: int, precision: str = "fp32"
) -> dict:
    """What the scheduler is asked for a job, ``mem_mb`` and ``runtime`` (minutes), with
    the margins; and the estimate itself (``seconds``) for the plan's table."""
    s = seconds(cost, m, rates, gpu, threads, precision)
    return {
        "mem_mb": math.ceil(MEM_MARGIN * (cost.mem_bytes + RUNTIME_BYTES) / MB),
        "seconds": round(s, 1),
        "runtime": math.ceil(TIME_MARGIN * s / 60),
    }


# ------------------------------------------------------------------------------ jobs
def toy_model_cost(m: ModelSize, steps: int, batch: int) -> Cost:
    """Training the toy model: ``steps`` x ``batch`` contexts, weights, Adam and a batch's
    activations (a generous 64 values a position a block)."""
    tokens = steps * batch * m.context
    acts = 64 * batch * m.context * m.d_model * m.n_layers * 4
    return Cost(mem_bytes=16 * m.params + acts, model_flops=3 * m.forward_flops(tokens))


def load_model_cost(m: ModelSize) -> Cost:
    """Fetching and loading a model's weights (held once in fp32 and once converted)."""
    return Cost(mem_bytes=3 * m.params * 4, io_bytes=m.params * 4)


def tokens_cost(n_tokens: int) -> Cost:
    """Tokenizing ``n_tokens`` at ``TOKENIZE_PER_S`` (int32 tokens held)."""
    return Cost(mem_bytes=4 * n_tokens + 500 * MB, other_s=n_tokens / TOKENIZE_PER_S)


def acts_cost(m: ModelSize, tokens: int, blocks: int, disk_bytes: int, batch_contexts: int) -> Cost:
    """Caching activations: forwards over ``tokens`` to ``blocks`` blocks, the cache
    written."""
    held = m.weight_bytes + 4 * batch_contexts * m.context * m.d_model * 8
    return Cost(mem_bytes=held, model_flops=m.forward_flops(tokens, blocks), io_bytes=disk_bytes)


def evaluate_cost(
    m: ModelSize, eval_tokens: int, batch_contexts: int, coders: list[tuple[int, int, int]]
) -> Cost:
    """An evaluation pass over ``eval_tokens`` of ``coders`` ((d_in, d_out, d_sae) of each
    spliced member; a set spliced at once counts each of its coders)."""
    forwards = 2 + 3 * len(coders)  # clean, means; spliced, zero- and mean-ablated each
    encode = sum(2 * eval_tokens * f * (i + o) for i, o, f in coders)
    weights = sum(4 * f * (i + o) for i, o, f in coders)
    held = m.weight_bytes + m.logits_bytes(batch_contexts) + weights
    return Cost(mem_bytes=held, model_flops=forwards * m.forward_flops(eval_tokens),
                dict_flops=encode)  # fmt: skip


def interp_cost(m: ModelSize, eval_tokens: int, d_in: int, d_out: int, d_sae: int) -> Cost:
    """Feature statistics, samples and dashboards over ``eval_tokens``."""
    held = m.weight_bytes + 2000 * MB + 4 * d_sae * (d_in + d_out)
    return Cost(mem_bytes=held, model_flops=3 * m.forward_flops(eval_tokens),
                dict_flops=2 * 2 * eval_tokens * d_sae * (d_in + d_out))  # fmt: skip


def circuit_cost(m: ModelSize, prompts: int, coder_bytes: int) -> Cost:
    """A circuit study of ``prompts`` prompts (``CIRCUIT_FORWARDS`` an allowance)."""
    flops = prompts * CIRCUIT_FORWARDS * m.forward_flops(m.context)
    held = m.weight_bytes + coder_bytes + 2000 * MB
    return Cost(mem_bytes=held, model_flops=flops)


def small_cost(mem_bytes: int = 0, io_bytes: int = 0) -> Cost:
    """A job of start-up and bookkeeping: tables, the study, export, import."""
    return Cost(mem_bytes=mem_bytes, io_bytes=io_bytes)
