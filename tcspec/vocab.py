"""tcspec's vocabulary: each word the spec, the planner, the library and the tasks share is
defined here once. The dictionary kinds and activations tcspec trains and the facts every
layer shares about them (the width formula, what a dead or live feature is; each activation
family is described by its row in `tcspec.dictionaries.families`); the BOS
conventions; the dictionary formats it reads and the targets it exports to; the file names
of a tcspec dictionary folder and of the artifacts a library module writes for a task.
(Hook names live in `tcspec.models.hooks`; the results layout in `tcspec.layout`.)

Pure Python (no torch), so the spec, the planner and the checks import it cheaply. The
spec's choices are `Literal`s of these tuples (`Literal[KINDS]`).
"""

from __future__ import annotations

from typing import Literal

from tcspec.dictionaries.families import names

TRANSCODER_KINDS = ("transcoder", "skip_transcoder")
"""Kinds that read one hook and predict another (the skip transcoder adds a linear map of
its input): the kinds a circuit or attribution graph can put in place of an MLP."""

KINDS = (*TRANSCODER_KINDS, "sae")
"""Trainable dictionary kinds: `sae` reconstructs its input hook, the transcoders predict
another hook."""

ACTIVATIONS = names()
"""The activation families, in the spec's order: relu, topk, jumprelu, batchtopk (each one
module and one row of `tcspec.dictionaries.families.FAMILIES`, which says what it is)."""

CLT = "clt"
"""The cross-layer transcoder: one dictionary over several layers (one train task, stage `clt`)."""

CLT_ACTIVATIONS = names(lambda f: f.clt_sparsity is not None)
"""Activations of a cross-layer transcoder (TopK: k per layer)."""

CLT_IN_HOOKS = ("ln2.hook_normalized", "hook_resid_mid")
"""Input hooks a cross-layer transcoder reads, relative to a block."""

CLT_OUT_HOOKS = ("hook_mlp_out",)
"""Output hooks a cross-layer transcoder's decoders write, relative to a block."""

CLT_PENALTIES = ("tanh", "l1")
"""A cross-layer transcoder's sparsity penalty: tanh(c a ||W_dec||) (Anthropic, CLT-Forge)
or the L1 form a ||W_dec||."""

ENCODER_INITS = ("kaiming", "transpose", "transpose_scaled")
"""How a per-layer dictionary's encoder starts: kaiming-uniform, independent of the decoder;
the decoder's transpose (W_enc = W_dec^T, unit-norm columns); or that transpose in the
output's units (W_enc = s W_dec^T, stepped at s times the learning rate; s = the output's
scale over the input's, on the first batch: 1 for an SAE)."""

TRANSPOSED_INITS = ("transpose", "transpose_scaled")
"""The encoder inits that start from W_dec^T (need d_in = d_out)."""

JUMPRELU_PENALTIES = ("step", "tanh")
"""Forms of a per-layer JumpReLU's L0 penalty: the step count H(pre - threshold) (GDM) or
tanh(c z ||W_dec||) (Anthropic, as a cross-layer transcoder's `tanh` penalty)."""

GHOST_RESIDUALS = ("output", "input")
"""What ghost grads fit: the output residual y - y_hat, or the input side's x - y_hat."""

LIVE_THRESHOLD = 1e-4
"""The default `live_threshold`: a feature firing on more than this fraction of tokens is
live (`is_live`), 1e-4 (log10 frequency > -4)."""

# ---------------------------------------------------------------------------------- BOS
BOS_POLICIES = ("exclude", "include")
"""`data.bos`: `exclude` keeps BOS positions out of training activations, metrics and
splicing; `include` treats them like any other position."""
Bos = Literal[BOS_POLICIES]  # type: ignore[valid-type]

# ------------------------------------------------------------------- formats and targets
FORMATS = ("tcspec", "saelens", "sparsify", "circuit-tracer", "gemma-scope", "transcoder-circuits")
"""Dictionary formats tcspec reads (`tcspec.interop.formats`, an import's `format`)."""

EXPORT_TARGETS = ("saelens", "sparsify", "circuit-tracer")
"""Formats tcspec writes (`tcspec.interop.export`, an export's `to`, `tcspec export --to`)."""

ExportTarget = Literal[EXPORT_TARGETS]  # type: ignore[valid-type]

WRITTEN_ONLY_TO = {CLT: ("circuit-tracer", "a cross-layer transcoder")}
"""Kinds fewer `EXPORT_TARGETS` can hold -> (the one target, what the kind is called): a
cross-layer transcoder is written as circuit-tracer's CLT folder only."""

YY_SLOT = "YY"
"""What a greater-than prompt template holds in place of the two-digit start year
(`The war lasted from 17YY to 17`)."""

# ------------------------------------------------------------------------------- files
MODEL_JSON = "model.json"
"""A model task's description of its model (kind, dims, BOS id, hooks; `tcspec.models.load`)."""
CFG_FILE = "cfg.json"
"""A tcspec dictionary folder's (or TransformerLens model folder's) config."""
WEIGHTS_FILE = "weights.safetensors"
"""A tcspec dictionary folder's (or TransformerLens model folder's) tensors."""
TRAINING_FILE = "training.json"
"""A trained dictionary's curves and throughput, beside its weights."""
DENSITY_FILE = "density.safetensors"
"""A trained dictionary's feature firing frequencies over its last `density_window` steps."""
GREATER_THAN_FILE = "greater_than.csv"
"""A greater-than case study's per-prompt table."""
KEEP_TOP_K_FILE = "keep_top_k.csv"
"""A greater-than case study's keep-top-k curve (every transcoder layer)."""
KEEP_TOP_K_PLOT = "keep_top_k.png"
"""The keep-top-k curve's plot."""
CT_CONFIG = "config.yaml"
"""A circuit-tracer folder's config (a transcoder set's or a cross-layer transcoder's)."""


def d_sae_of(d_in: int, d_sae: int | None, expansion: int | None) -> int:
    """The number of features: `d_sae` when given, else `expansion * d_in`."""
    if d_sae is not None:
        return d_sae
    if expansion is None:
        raise ValueError("give one of `d_sae` and `expansion` (the width)")
    return expansion * d_in


def is_dead(steps_since_fired, dead_window: int):
    """A feature is dead in training when it has not fired for more than `dead_window`
    consecutive steps: steps_since_fired > dead_window (elementwise on a tensor or array)."""
    return steps_since_fired > dead_window


def is_live(frequency, live_threshold: float):
    """A feature is live when its firing frequency (fraction of tokens on which z > 0)
    exceeds `live_threshold`: frequency > live_threshold (elementwise)."""
    return frequency > live_threshold


def never_fires(count):
    """A feature never fires on a set of tokens when its firing count there is 0 (the
    `dead_fraction` metric and the dashboards' `dead`)."""
    return count == 0
