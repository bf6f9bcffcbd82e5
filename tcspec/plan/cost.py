"""What the model and the dictionaries cost: the model's sizes and forwards, and a
dictionary's parameters, FLOPs and training memory (per-layer and CLT), estimated before a
job runs. A job's ``Cost`` and its scheduler request: `tcspec.plan.estimate`; the other
stages' jobs: `tcspec.plan.stage_costs`.

FLOPs counted (tokens T, B a batch, F = d_sae):

- forward of the model over T tokens, to block n: T x ``forward_flops_per_token``, plus
  the unembedding (2 d_model d_vocab) when the loss is needed;
- training a per-layer dictionary: 6 x T x F x (d_in + d_out) (forward and backward of
  both matmuls; TopK does less); a CLT: ``clt_cost`` (below).

The memory of a training pass (bytes on the training device; a stream pass's estimate
also splits its dictionaries into jobs, `tcspec.plan.stream`) is the sum of:

- ``weights``: every dictionary's fp32 parameters, 4 x n_params (see ``n_params``);
- ``optimizer``: Adam's two moments, 8 x n_params;
- ``workspace``: per distinct dictionary shape (the trainer shares work buffers between
  members of equal shape): gradients 4 x n_params, and 4 x B x (2 d_sae + d_in + 2 d_out)
  for z, dz, the centred input, y_hat and the residual; per member 24 x d_sae of feature
  statistics (an int64 and two float64 counters per feature);
- ``buffer``: (buffer_tokens + one forward batch of rows) x the hooks' row bytes (width x
  the bytes of the model's dtype, or 4 for LayerNorm outputs, which TransformerLens keeps
  in float32 in a half-precision model); over a cache, ``CACHE_READ_AHEAD`` batches;
- ``batch``: B x (the row bytes + 4 x the widths) (gathered, then float32);
- ``forward``: the hooks captured in one forward batch, plus a rough allowance for the
  model's own activations (``forward_bytes``);
- ``model``: the model's weights, as given.

A cross-layer transcoder (CLT) with L layers, d = d_model, F = d_sae per layer, B tokens
a batch, k active features a layer (TopK): the decoders hold F d L (L + 1) / 2 weights
(layer l's features write to L - l layers), so they grow with L^2 / 2 while the encoders
grow with L:

    params      = L d F (encoders) + F d L (L + 1) / 2 (decoders) + L F + L d (biases)
                  (+ L d^2 skip) (+ L F thresholds)
    flops/step  = 6 B F d (L + P)                 P = L (L + 1) / 2 decoder blocks; ReLU,
                                                  JumpReLU: per block the decoder forward,
                                                  d a and d W_dec (2 + 2 + 2); per layer the
                                                  encoder forward, again in the backward
                                                  (not held), and d W_enc (2 + 2 + 2)
                = 2 B d (F L + s k (L + 3 P))     TopK: the dense encoder forward; the rest
                                                  over the k active features, each FLOP of
                                                  those gathers counted s = SPARSE_COST times
                                                  (the FLOPs a time estimate needs)
    train bytes = 4 bytes x (3 params              weights and two Adam moments (fp32)
                  + 2 F L d                         one gradient at a time (the largest is
                                                    W_dec[0]'s) and Adam's scratch
                  + 6 L B d                         the batch as read and stacked, y_hat /
                                                    its gradient and one temporary
                  + A B F)                          one layer's activations at a time:
                                                    A = 3 ReLU, 6 JumpReLU, 2 TopK (sparse)
                  (bf16: + 4 F L d + 4 L B d bytes: bfloat16 copies of a decoder and of g)

`tcspec.training.clt_step` holds no [L, B, F] tensor: dense layers' activations are
computed again in the backward, sparse ones are kept as (index, value) pairs (L B k of
them for TopK). Measured (`bench/clt.py`, peak RSS above the process's, fp32, CPU) at L 12,
d 768, F 1024, B 512: ReLU 999 MB (this estimate 997), TopK k 8 1,042 MB (995);
bench/RESULTS.md has the gpt2-like shape. Per-layer transcoders of the same width for
comparison (`per_layer_flops_per_step`): 6 B F d 2 L (each writes one layer): the CLT's
step costs (L + L (L + 1) / 2) / (2 L) = (L + 3) / 4 times as much (3.75x at L = 12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from tcspec.plan.estimate import FP32, Cost

if TYPE_CHECKING:
    from tcspec.dictionaries.clt import CLTConfig
    from tcspec.dictionaries.coders import CoderConfig
    from tcspec.spec import Spec

# ------------------------------------------------------------------------------ assumptions
IMPORTED_EXPANSION = 64
"""Features per model dimension an imported dictionary is sized as (its files are not read
when planning)."""
LOGIT_COPIES = 4
"""[batch, context, d_vocab] float32 tensors an evaluation holds at once (the logits, the
clean and the patched log-probabilities, one temporary)."""
DEFAULT_VOCAB = 50257
"""Vocabulary size of a model whose dims give none (GPT-2's; a toy's is its recipe's)."""
CACHE_READ_AHEAD = 4
"""Batches the cache reader holds ahead of training (counted as buffer rows)."""
CHECKPOINT_BYTES_PER_PARAM = 4 * FP32
"""Disk of a stream pass per parameter: its checkpoint (weights and Adam's two moments)
and the trained weights."""
ACTIVATION_BUFFERS = {"relu": 3, "jumprelu": 6, "topk": 2}
"""[B, F] work buffers a CLT layer's forward and backward hold at once, by activation."""
SPARSE_COST = 32
"""Dense-GEMM FLOPs that one FLOP of the sparse products costs in time (they gather rows
and are bound by memory). Measured on 2 Zen 4 cores: 17 per CPU-second for one decoder at
B 1,024, F 8,192, k 64 (embedding_bag, sampled_addmm and the transposed embedding_bag
against torch.mm); ~60 over a whole TopK step at L 12, F 1,024, B 512 under load 10,
where its many small ops wait on the busy cores."""
LAYERNORM_HOOKS = ("hook_normalized", "hook_scale")
"""Hook name endings TransformerLens computes in float32 whatever the model's dtype."""


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
        """12 d_model^2 a block (attention 4, MLP 8 at d_mlp = 4 d_model), and the
        embedding and unembedding."""
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
        return LOGIT_COPIES * batch_contexts * self.context * self.d_vocab * FP32


def model_size(spec: Spec, dims: dict) -> ModelSize:
    """The sizes of the spec's model (``dims``: `tcspec.spec.dims.model_dims`; a toy's
    vocabulary is its recipe's, else ``DEFAULT_VOCAB``) and the precisions its jobs run in."""
    from tcspec.models.recipes import get_recipe

    m = spec.model
    vocab = dims.get("d_vocab")
    if vocab is None:
        vocab = get_recipe(m.recipe).vocab_size if m.kind == "toy" else DEFAULT_VOCAB
    half = getattr(m, "dtype", "float32") != "float32"
    return ModelSize(
        n_layers=dims["n_layers"], d_model=dims["d_model"], d_mlp=dims["d_mlp"],
        n_heads=dims["n_heads"], d_vocab=vocab, context=spec.data.context,
        act_bytes=2 if half else 4, model_precision="bf16" if half else "fp32",
    )  # fmt: skip


def forward_flops_per_token(n_blocks: int, d_model: int, d_mlp: int, context: int) -> int:
    """FLOPs per token of a forward through ``n_blocks`` blocks: 2 x the block matmuls'
    weights (4 d_model^2 attention + 2 d_model d_mlp MLP) plus the attention scores and
    mix (2 x 2 x context x d_model, as if every position attended the whole context)."""
    return n_blocks * (2 * (4 * d_model * d_model + 2 * d_model * d_mlp) + 4 * context * d_model)


def forward_bytes(
    batch_contexts: int, context: int, d_model: int, d_mlp: int, n_heads: int, act_bytes: int
) -> int:
    """A rough peak of one no-grad forward batch's own activations: the residual stream and
    a block's largest intermediates (q, k, v, the attention pattern, the MLP's hidden)."""
    per_position = 6 * d_model + 2 * d_mlp + 2 * n_heads * context
    return batch_contexts * context * per_position * act_bytes


# ------------------------------------------------------------------------------ dictionaries
def n_params(cfg: CoderConfig) -> int:
    """Parameters of one per-layer dictionary: W_enc, b_enc, W_dec, b_dec (+ b_dec_out,
    W_skip, a threshold family's per-feature threshold: all trained, all in Adam)."""
    n = cfg.d_sae * (cfg.d_in + cfg.d_out) + cfg.d_sae + cfg.d_in
    n += 0 if cfg.tied_bias else cfg.d_out
    n += cfg.d_sae if cfg.thresholded else 0
    return n + (cfg.d_in * cfg.d_out if cfg.skip else 0)


def coder_bytes(d_in: int, d_out: int, d_sae: int) -> int:
    """A dictionary's encoder and decoder in float32."""
    return FP32 * d_sae * (d_in + d_out)


def train_flops(tokens: int, d_in: int, d_out: int, d_sae: int) -> int:
    """FLOPs of training one per-layer dictionary on ``tokens`` rows."""
    return 6 * tokens * d_sae * (d_in + d_out)


def clt_coder_shape(n_layers: int, d_model: int, d_sae: int) -> tuple[int, int, int]:
    """(d_in, d_out, d_sae) a CLT's encode and decode cost as: of L layers and P =
    L (L + 1) / 2 decoder blocks, (d_model, d_model P / L, L d_sae)."""
    return d_model, d_model * (n_layers + 1) // 2, n_layers * d_sae


def imported_coder_shape(d_model: int) -> tuple[int, int, int]:
    """(d_in, d_out, d_sae) an imported dictionary is sized as (``IMPORTED_EXPANSION``)."""
    return d_model, d_model, IMPORTED_EXPANSION * d_model


def checkpoint_disk_bytes(params: int) -> int:
    """Disk of a stream training pass of ``params`` parameters (``CHECKPOINT_BYTES_PER_PARAM``)."""
    return params * CHECKPOINT_BYTES_PER_PARAM


# ------------------------------------------------------------------------------ training memory
@dataclass(frozen=True)
class StreamShape:
    """The parts of a training job that size its memory, besides the dictionaries."""

    batch_size: int
    """Rows per training batch."""
    buffer_tokens: int
    """Rows per hook in the shuffle buffer."""
    rows_per_forward: int
    """Rows one forward batch adds (batch_contexts x positions kept per context)."""
    act_bytes: int = 4
    """Bytes per activation value in the model's dtype (2 for bf16/fp16; see
    ``value_bytes``)."""
    forward: int = 0
    """Bytes of one forward batch beyond the captured hooks (see ``forward_bytes``)."""
    model: int = 0
    """Bytes of the model's weights on the device."""


def stream_shape(
    size: ModelSize, buffer_tokens: int, batch_contexts: int, batch_size: int = 0
) -> StreamShape:
    """The buffer, forward and model of a stream pass of ``size``'s model, whose forward
    batches hold ``batch_contexts`` contexts (``batch_size``: set per pass)."""
    a = size.act_bytes
    return StreamShape(
        batch_size=batch_size,
        buffer_tokens=buffer_tokens,
        rows_per_forward=batch_contexts * size.context,  # the most one forward gives
        act_bytes=a,
        forward=forward_bytes(
            batch_contexts, size.context, size.d_model, size.d_mlp, size.n_heads, a
        ),
        model=size.weight_bytes,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part (see the module doc); ``total`` is their sum."""

    weights: int
    optimizer: int
    workspace: int
    buffer: int
    batch: int
    forward: int
    model: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """``'total 1.2 GB (weights 0.3 GB, ...)'``."""
        parts = ", ".join(f"{f.name} {gb(getattr(self, f.name))}" for f in fields(self))
        return f"total {gb(self.total)} ({parts})"


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def value_bytes(hook: str, act_bytes: int) -> int:
    """Bytes per value a hook gives in a model whose dtype has ``act_bytes`` bytes."""
    return 4 if hook.endswith(LAYERNORM_HOOKS) and act_bytes < 4 else act_bytes


def group_hooks(coders: Sequence[CoderConfig]) -> list[str]:
    """The hooks a group reads, in first-use order (each coder's in_hook and out_hook)."""
    hooks: dict[str, None] = {}
    for c in coders:
        if c.in_hook is None or c.out_hook is None:
            raise ValueError(f"a {c.kind} needs in_hook and out_hook to be streamed")
        hooks[c.in_hook] = hooks[c.out_hook] = None
    return list(hooks)


def estimate_memory(
    coders: Sequence[CoderConfig], widths: Mapping[str, int], shape: StreamShape
) -> MemoryEstimate:
    """Device bytes of a job training ``coders`` (``widths``: hook -> width)."""
    if not coders:
        raise ValueError("no dictionaries to estimate")
    hooks = group_hooks(coders)
    row = sum(widths[h] for h in hooks)  # values per row over the buffered hooks
    row_bytes = sum(widths[h] * value_bytes(h, shape.act_bytes) for h in hooks)
    B = shape.batch_size
    params = sum(n_params(c) for c in coders)
    distinct = {(c.kind, c.d_in, c.d_out, c.d_sae, c.activation): c for c in coders}
    work = sum(
        4 * n_params(c) + 4 * B * (2 * c.d_sae + c.d_in + 2 * c.d_out) for c in distinct.values()
    )
    work += sum(24 * c.d_sae for c in coders)
    rows_held = shape.buffer_tokens + shape.rows_per_forward
    return MemoryEstimate(
        weights=4 * params,
        optimizer=8 * params,
        workspace=work,
        buffer=rows_held * row_bytes,
        batch=B * (row_bytes + 4 * row),
        forward=shape.rows_per_forward * row_bytes + shape.forward,
        model=shape.model,
    )


def train_pass_cost(
    coders: Sequence[CoderConfig], tokens: int, batch_size: int, cache_bytes: int,
    stream: StreamShape | None = None, forward_flops: int = 0,
) -> Cost:  # fmt: skip
    """A training pass of ``coders`` over ``tokens`` rows in batches of ``batch_size``:
    from a stream (``stream``), the stream job's memory and the model's forward
    (``forward_flops``); over the cache, the members' memory and one hook pair's rows of
    ``cache_bytes`` values read once."""
    flops = sum(train_flops(tokens, c.d_in, c.d_out, c.d_sae) for c in coders)
    widths = {h: w for c in coders for h, w in ((c.in_hook, c.d_in), (c.out_hook, c.d_out))}
    if stream is not None:
        memory = estimate_memory(coders, widths, replace(stream, batch_size=batch_size))
        return Cost(mem_bytes=memory.total, model_flops=forward_flops, dict_flops=flops)
    B = batch_size
    shape = StreamShape(batch_size=B, buffer_tokens=CACHE_READ_AHEAD * B, rows_per_forward=0)
    memory = estimate_memory(coders, widths, shape)
    read = tokens * (coders[0].d_in + coders[0].d_out) * cache_bytes
    return Cost(mem_bytes=memory.total, dict_flops=flops, io_bytes=read)


# ------------------------------------------------------------------------------ CLTs
@dataclass(frozen=True)
class CLTCost:
    """Size and work of training one CLT."""

    params: int
    """Trainable parameters."""
    decoder_params: int
    """Of which decoder weights (F d L (L + 1) / 2)."""
    flops_per_step: int
    """Matmul FLOPs of one training step (forward + backward), the sparse products' counted
    at `SPARSE_COST` (what a time estimate at the device's GEMM rate needs)."""
    flops: int
    """flops_per_step x steps."""
    train_bytes: int
    """Memory of a training step: fp32 weights and Adam moments, one gradient at a time,
    the batch and one layer's activations (see the module docstring)."""

    @property
    def mem_mb(self) -> int:
        return int(self.train_bytes / 2**20) + 1


def decoder_params(cfg: CLTConfig) -> int:
    """F d L (L + 1) / 2: every layer's features write to it and every later layer."""
    L = cfg.n_layers
    return cfg.d_sae * cfg.d_model * L * (L + 1) // 2


def param_count(cfg: CLTConfig) -> int:
    L, d, F = cfg.n_layers, cfg.d_model, cfg.d_sae
    n = L * d * F + decoder_params(cfg) + L * F + L * d
    n += L * d * d if cfg.skip else 0
    n += L * F if cfg.family.thresholded else 0  # log_threshold
    return n


def clt_cost(cfg: CLTConfig, batch_size: int, steps: int, precision: str = "fp32") -> CLTCost:
    """Parameters, FLOPs and training memory of `steps` steps of `batch_size` tokens in
    `precision` (fp32, tf32 or bf16)."""
    if batch_size <= 0 or steps < 0:
        raise ValueError(f"need batch_size > 0 and steps >= 0, got {batch_size}, {steps}")
    L, d, F, B = cfg.n_layers, cfg.d_model, cfg.d_sae, batch_size
    pairs = L * (L + 1) // 2  # (source, target) layer pairs
    if cfg.family.takes_k:  # TopK: sparse decoder products
        flops_step = 2 * B * d * (F * L + SPARSE_COST * cfg.k * (L + 3 * pairs))
    else:
        flops_step = 6 * B * F * d * (L + pairs)
    flops_step += 6 * B * d * d * L if cfg.skip else 0
    params = param_count(cfg)
    work = 2 * F * L * d + 6 * L * B * d + ACTIVATION_BUFFERS[cfg.activation] * B * F
    work += (F * L * d + L * B * d) if precision == "bf16" else 0
    return CLTCost(
        params=params,
        decoder_params=decoder_params(cfg),
        flops_per_step=flops_step,
        flops=flops_step * steps,
        train_bytes=FP32 * (3 * params + work),
    )


def clt_pass_cost(
    cost: CLTCost, tokens: int, width: int, cache_bytes: int,
    stream_rows: int | None = None, model: ModelSize | None = None, blocks: int = 0,
) -> Cost:  # fmt: skip
    """Training a CLT (``cost``) on ``tokens`` rows of its 2 L hooks (``width``: their
    summed width): over the cache, those rows read once; from a stream, the model's weights
    and forward to ``blocks`` blocks and a buffer of ``stream_rows`` float32 rows."""
    if stream_rows is None:
        read = tokens * width * cache_bytes
        return Cost(cost.train_bytes, dict_flops=cost.flops, io_bytes=read)
    held = cost.train_bytes + model.weight_bytes + stream_rows * width * FP32
    forward = model.forward_flops(tokens, blocks)
    return Cost(held, model_flops=forward, dict_flops=cost.flops)


def per_layer_flops_per_step(cfg: CLTConfig, batch_size: int) -> int:
    """FLOPs of one step of n_layers per-layer transcoders of the same width: 6 B F d 2 L."""
    return 6 * batch_size * cfg.d_sae * cfg.d_model * 2 * cfg.n_layers
