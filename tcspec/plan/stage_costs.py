"""What each job besides training costs (see `tcspec.plan.estimate` for a ``Cost`` and its
time): the model, tokens, the activation cache, evaluation, interp, probing, circuits and
the bookkeeping jobs, with the allowances they assume.

FLOPs counted (tokens T, F = d_sae), besides the model's forwards and training
(`tcspec.plan.cost`):

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

from tcspec.plan.cost import ModelSize, coder_bytes
from tcspec.plan.estimate import FP32, MB, Cost

TOKENIZE_PER_S = 200_000
"""Tokens a second a tokenizing job makes (fetching the text included)."""
TOKENIZER_BYTES = 500 * MB
"""A tokens job's memory besides its tokens: the tokenizer and the text in flight."""
CIRCUIT_FORWARDS = 2000
"""Full forwards (at the spec's context) a circuit study makes per prompt: an allowance."""
FEATURE_WORK_BYTES = 2000 * MB
"""An interp or circuits job's memory besides the model and its dictionaries (feature
statistics, examples, pages, graphs): an allowance."""
SMALL_BYTES = 1000 * MB
"""Memory of a job that runs no model: tables, the study, an export."""
IMPORT_BYTES = 4000 * MB
"""Memory of an import job: a released dictionary read and converted."""


def toy_model_cost(m: ModelSize, steps: int, batch: int) -> Cost:
    """Training the toy model: ``steps`` x ``batch`` contexts, weights, Adam and a batch's
    activations (a generous 64 values a position a block)."""
    tokens = steps * batch * m.context
    acts = 64 * batch * m.context * m.d_model * m.n_layers * FP32
    held = 4 * FP32 * m.params + acts  # weights, gradients and Adam's two moments
    return Cost(mem_bytes=held, model_flops=3 * m.forward_flops(tokens))


def load_model_cost(m: ModelSize) -> Cost:
    """Fetching and loading a model's weights (held once in fp32 and once converted)."""
    return Cost(mem_bytes=3 * m.params * FP32, io_bytes=m.params * FP32)


def tokens_cost(n_tokens: int) -> Cost:
    """Tokenizing ``n_tokens`` at ``TOKENIZE_PER_S`` (int32 tokens held)."""
    return Cost(mem_bytes=4 * n_tokens + TOKENIZER_BYTES, other_s=n_tokens / TOKENIZE_PER_S)


def cache_disk_bytes(tokens: int, width: int, value_bytes: int) -> int:
    """An activation cache of ``tokens`` rows of ``width`` values."""
    return tokens * width * value_bytes


def acts_cost(m: ModelSize, tokens: int, blocks: int, disk_bytes: int, batch_contexts: int) -> Cost:
    """Caching activations: forwards over ``tokens`` to ``blocks`` blocks, the cache
    written."""
    # a forward batch: 8 d_model-wide float32 values a position (an allowance)
    held = m.weight_bytes + FP32 * batch_contexts * m.context * m.d_model * 8
    return Cost(mem_bytes=held, model_flops=m.forward_flops(tokens, blocks), io_bytes=disk_bytes)


def evaluate_cost(
    m: ModelSize, eval_tokens: int, batch_contexts: int, coders: list[tuple[int, int, int]]
) -> Cost:
    """An evaluation pass over ``eval_tokens`` of ``coders`` ((d_in, d_out, d_sae) of each
    spliced member; a set spliced at once counts each of its coders)."""
    forwards = 2 + 3 * len(coders)  # clean, means; spliced, zero- and mean-ablated each
    encode = sum(2 * eval_tokens * f * (i + o) for i, o, f in coders)
    weights = sum(coder_bytes(i, o, f) for i, o, f in coders)
    held = m.weight_bytes + m.logits_bytes(batch_contexts) + weights
    return Cost(mem_bytes=held, model_flops=forwards * m.forward_flops(eval_tokens),
                dict_flops=encode)  # fmt: skip


def interp_cost(m: ModelSize, eval_tokens: int, d_in: int, d_out: int, d_sae: int) -> Cost:
    """Feature statistics, samples and dashboards over ``eval_tokens``."""
    held = m.weight_bytes + FEATURE_WORK_BYTES + coder_bytes(d_in, d_out, d_sae)
    return Cost(mem_bytes=held, model_flops=3 * m.forward_flops(eval_tokens),
                dict_flops=2 * 2 * eval_tokens * d_sae * (d_in + d_out))  # fmt: skip


PROBE_CLASSES = 10
"""Classes a probing job is sized for when the spec does not list them (its dataset's
labels are not read when the plan is compiled): an allowance."""


def probe_cost(
    m: ModelSize, texts: int, max_tokens: int, d_in: int, d_out: int, d_sae: int
) -> Cost:
    """Sparse probing: ``texts`` texts of at most ``max_tokens`` tokens through the model and
    the dictionary's encoder, then small per-class probes (their cost left out)."""
    tokens = texts * max_tokens
    held = m.weight_bytes + FEATURE_WORK_BYTES + coder_bytes(d_in, d_out, d_sae)
    return Cost(mem_bytes=held, model_flops=m.forward_flops(tokens),
                dict_flops=2 * tokens * d_sae * d_in)  # fmt: skip


def circuit_cost(m: ModelSize, prompts: int, coders: list[tuple[int, int, int]]) -> Cost:
    """A circuit study of ``prompts`` prompts through ``coders`` ((d_in, d_out, d_sae)
    each; ``CIRCUIT_FORWARDS`` an allowance)."""
    flops = prompts * CIRCUIT_FORWARDS * m.forward_flops(m.context)
    held = m.weight_bytes + sum(coder_bytes(*s) for s in coders) + FEATURE_WORK_BYTES
    return Cost(mem_bytes=held, model_flops=flops)


def small_cost(mem_bytes: int = SMALL_BYTES, io_bytes: int = 0) -> Cost:
    """A job of start-up and bookkeeping: tables, the study, export, import."""
    return Cost(mem_bytes=mem_bytes, io_bytes=io_bytes)
