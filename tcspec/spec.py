"""The spec language: what a researcher writes in ``specs/*.yaml``.

Every model is frozen and forbids unknown keys; variants are tagged unions on ``kind``.
The docstring under each field is its documentation and flows into the JSON Schema.
A list in a field typed ``Sweep`` is a sweep axis: the plan takes the cross product of a
dictionary's axes, except the axes named together in its ``zip``, which advance in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

from tcspec.hooks import BLOCK_HOOKS, TRANSCODER_IN, TRANSCODER_OUT
from tcspec.kinds import ACTIVATIONS, CLT_ACTIVATIONS, CLT_IN_HOOKS, DEAD_AUX_K, SPARSITY_K
from tcspec.paper import REFERENCES
from tcspec.tables.registry import DEFAULT_INCLUDE, TABLE_NAMES

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
HookName = Literal[tuple(BLOCK_HOOKS)]  # type: ignore[valid-type]
DType = Literal["float32", "float16", "bfloat16"]

T = TypeVar("T")
Sweep = Union[T, Annotated[list[T], Field(min_length=1)]]
"""A value, or a list of values that makes a sweep axis."""

SWEEP_FIELDS = ("expansion", "d_sae", "k", "l1", "lr", "l0_coef")
RESERVED_EXPERIMENT_NAMES = ("tasks", "logs", "benchmarks", "checkpoints")


class FieldError(ValueError):
    """A cross-field check failed; ``field`` names the key the message is about, so the
    loader can point at that key's line instead of the enclosing mapping."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# ---------------------------------------------------------------------------------- model
class ToyModelSpec(Frozen):
    """A small TransformerLens LM trained here from an offline corpus (CPU-friendly)."""

    kind: Literal["toy"]
    recipe: Literal["greater_than_mix"] = "greater_than_mix"
    """Training corpus recipe: `greater_than_mix` is half pydoc text, half task sentences."""
    n_layers: PosInt = 2
    """Number of transformer blocks."""
    d_model: PosInt = 128
    """Residual stream width."""
    n_heads: PosInt = 4
    """Attention heads per block (d_head = d_model / n_heads)."""
    d_mlp: PosInt = 512
    """MLP hidden width."""
    n_ctx: PosInt = 128
    """Longest context the model is trained for."""
    steps: PosInt | None = None
    """Optimizer steps; None uses the recipe's default."""

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.n_heads:
            raise FieldError(
                "n_heads", f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}"
            )
        return self


class PretrainedModelSpec(Frozen):
    """A TransformerLens model by name, loaded with `from_pretrained` (HF cache)."""

    kind: Literal["pretrained"]
    name: str
    """TransformerLens model name, e.g. `gpt2`, `pythia-410m`."""
    dtype: DType = "float32"
    """Weights dtype for the forward passes."""


class CheckpointModelSpec(Frozen):
    """A local model folder: an HF causal-LM checkpoint or a TransformerLens state dict."""

    kind: Literal["checkpoint"]
    path: Path
    """Folder holding config.json + weights (HF) or model.json + weights.safetensors."""
    architecture: str | None = None
    """TransformerLens architecture name to map HF weights (e.g. `gpt2`); None reads it from
    config.json's model_type."""
    dtype: DType = "float32"
    """Weights dtype for the forward passes."""


ModelSpec = Annotated[
    Union[ToyModelSpec, PretrainedModelSpec, CheckpointModelSpec], Field(discriminator="kind")
]


# ----------------------------------------------------------------------------------- data
class _DataBase(Frozen):
    context: PosInt = 128
    """Tokens per packed row, BOS included."""
    train_tokens: PosInt
    """Tokens in the training split (the activation cache holds this many)."""
    eval_tokens: PosInt
    """Tokens in the evaluation split, disjoint from training."""
    bos: Literal["exclude", "include"] = "exclude"
    """BOS positions: `exclude` (SAELens's `exclude_special_tokens`) keeps them out of the
    training activations (each row's leading BOS) and out of every metric, and evaluation
    does not splice the dictionary there (every BOS token, as SAELens masks by token id);
    `include` trains, splices and scores them like any other position (the paper's code)."""


class ToyDataSpec(_DataBase):
    """The offline toy corpus that ships with tcspec (matches the toy model's recipe)."""

    kind: Literal["toy"]


class HubDataSpec(_DataBase):
    """An HF `datasets` dataset by hub name, streamed in order (e.g. OpenWebText)."""

    kind: Literal["hub"]
    name: str
    """Dataset name on the hub, e.g. `Skylion007/openwebtext`."""
    config: str | None = None
    """Dataset configuration name, if any."""
    split: str = "train"
    """Split to read."""
    text_column: str = "text"
    """Column holding document text."""
    streaming: bool = True
    """Stream instead of downloading the whole dataset."""


class FilesDataSpec(_DataBase):
    """Local text, JSON lines or Parquet files, read with `datasets`."""

    kind: Literal["files"]
    paths: Annotated[list[Path], Field(min_length=1)]
    """Files to read, in order; relative paths are relative to the spec file."""
    format: Literal["text", "json", "parquet"] | None = None
    """File format; None infers it from the suffix."""
    text_column: str = "text"
    """Column holding document text (json/parquet)."""


DataSpec = Annotated[Union[ToyDataSpec, HubDataSpec, FilesDataSpec], Field(discriminator="kind")]


class ActsSpec(Frozen):
    """Where training activations come from: a cache on disk, or streamed from the model."""

    source: Literal["cache", "stream"] = "cache"
    """`cache`: one acts job writes every hook's activations to disk and training reads them
    (right for small models and repeated sweeps). `stream`: no cache; each training job runs
    the model itself and trains every dictionary of its pass from one shuffle buffer (for
    paper-scale token counts, whose cache would not fit on disk)."""
    buffer_tokens: PosInt = 262_144
    """`stream`: rows per hook the seeded shuffle buffer holds (refilled when half drained)."""

    dtype: DType = "float32"
    """`cache`: storage dtype of cached activations (the paper used float32)."""
    batch_contexts: PosInt = 32
    """Contexts per forward pass while caching (or streaming)."""
    shard_tokens: PosInt = 65536
    """`cache`: token rows per shard file."""


# --------------------------------------------------------------------------- dictionaries
def _activations(names: tuple[str, ...]) -> str:
    """("topk", "batchtopk") -> "`activation: topk` or `batchtopk`"."""
    return " or ".join([f"`activation: {names[0]}`", *(f"`{n}`" for n in names[1:])])


class _DictionaryBase(Frozen):
    layers: list[NonNegInt] | None = None
    """Layers to train at; None uses the spec's `layers`."""
    expansion: Sweep[PosInt] | None = None
    """Width as a multiple of d_in (d_sae = expansion * d_in). Give this or `d_sae`."""
    d_sae: Sweep[PosInt] | None = None
    """Number of features. Give this or `expansion`."""
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    """`relu` with an L1 penalty; `topk` keeping the k largest pre-activations; `jumprelu`
    (per-feature threshold, L0 penalty `l0_coef`); `batchtopk` (the k * B largest over a
    batch in training, a threshold estimated in training at inference)."""
    k: Sweep[PosInt] | None = None
    """Active features per token for `topk` and `batchtopk`."""
    l1: Sweep[NonNegFloat] = 0.0
    """L1 coefficient lambda on sum_i |z_i| (mean over the batch)."""
    loss: Literal["squared_error", "normalized_mse"] = "normalized_mse"
    """Reconstruction loss: `squared_error` is the paper's ||y - y_hat||^2 (mean over tokens);
    `normalized_mse` is the released code's mean((y_hat - y)^2 / ||y||_2). Lambdas differ."""
    lr: Sweep[PosFloat] = 4e-4
    """Adam learning rate (paper text 2e-5; code runs 2e-4 pythia, 4e-4 gpt2)."""
    adam_betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """Adam betas."""
    lr_warmup_steps: NonNegInt = 5000
    """Linear warm-up from 0 over this many steps."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Learning-rate decay after `lr_decay_start` (the paper used none)."""
    lr_decay_start: Fraction = 0.8
    """Fraction of training after which the decay begins."""
    l1_warmup_steps: NonNegInt = 0
    """Linear warm-up of the L1 coefficient over this many steps."""
    batch_size: PosInt = 4096
    """Tokens per optimizer step."""
    train_tokens: PosInt | None = None
    """Tokens to train on; None uses `data.train_tokens` (one pass over the cache)."""
    normalize_decoder: bool = True
    """Renormalize decoder rows to unit norm after each step."""
    remove_parallel_grad: bool = True
    """Remove the gradient component parallel to each decoder row before each step."""
    init_bias_from_mean: bool = True
    """Initialize b_dec (and b_dec_out) to the mean of the first batch of activations."""
    dead_features: Literal["none", "ghost_grads", "resample", "aux_k"] = "none"
    """Dead-feature handling: none (paper), ghost grads (released example script), periodic
    resampling, or the TopK auxiliary loss."""
    dead_window: PosInt = 5000
    """Steps without firing after which a feature counts as dead (ghost grads, resampling)."""
    aux_k: PosInt | None = None
    """Dead features the aux-k loss reconstructs with; None uses d_in / 2."""
    aux_k_coef: NonNegFloat = 1 / 32
    """Weight of the aux-k loss."""
    l0_coef: Sweep[NonNegFloat] = 1.0
    """JumpReLU: coefficient of the L0 penalty l0_coef * mean_b sum_i H(pre_bi - threshold_i)
    (the `step` form, with rectangle-kernel pseudo-derivatives)."""
    jumprelu_bandwidth: PosFloat = 0.05
    """JumpReLU: width of the rectangle kernel in the threshold's pseudo-derivatives."""
    jumprelu_init_threshold: PosFloat = 0.01
    """JumpReLU: initial threshold of every feature (trained as log(threshold))."""
    matryoshka: list[PosInt] | None = None
    """BatchTopK: nested prefix widths (strictly increasing; d_sae is the last, appended when
    missing): the loss adds each inner prefix's reconstruction loss (unweighted, as SAELens).
    """
    batchtopk_threshold_lr: Fraction = 0.01
    """BatchTopK: rate of the running estimate of the inference threshold, updated each step
    toward the batch's smallest positive kept activation (SAELens's rule)."""
    density_window: PosInt = 1000
    """Steps over which feature density (firing frequency) is tracked."""
    live_threshold: Fraction = 1e-4
    """A feature is live when its firing frequency exceeds this (log10 freq > -4)."""
    checkpoint_every: PosInt = 1000
    """Steps between resumable checkpoints."""
    seed: NonNegInt | None = None
    """Training seed; None uses the spec's seed."""
    zip: list[Literal[SWEEP_FIELDS]] = []  # type: ignore[valid-type]
    """Sweep axes that advance together (equal lengths) instead of crossing."""

    @model_validator(mode="after")
    def _check(self):
        if self.expansion is not None and self.d_sae is not None:
            raise FieldError("d_sae", "give `expansion` or `d_sae`, not both")
        if self.expansion is None and self.d_sae is None:
            raise FieldError("expansion", "give one of `expansion` and `d_sae` (the width)")
        if self.activation in SPARSITY_K and self.k is None:
            raise FieldError("activation", f"`activation: {self.activation}` needs `k`")
        if self.activation not in SPARSITY_K and self.k is not None:
            raise FieldError("k", f"`k` only applies to {_activations(SPARSITY_K)}")
        if not self.normalize_decoder and self.activation == "relu" and _positive(self.l1):
            raise FieldError(
                "normalize_decoder",
                "`normalize_decoder: false` with an L1 penalty is degenerate (the L1 term "
                "shrinks z while W_dec grows); keep unit-norm decoder rows or set `l1: 0`",
            )
        if self.dead_features == "aux_k" and self.activation not in DEAD_AUX_K:
            raise FieldError(
                "dead_features", f"`dead_features: aux_k` needs {_activations(DEAD_AUX_K)}"
            )
        if self.matryoshka is not None:
            if self.activation != "batchtopk":
                raise FieldError("matryoshka", "`matryoshka` needs `activation: batchtopk`")
            if any(b <= a for a, b in zip(self.matryoshka, self.matryoshka[1:])):
                raise FieldError("matryoshka", "prefix widths must be strictly increasing")
        for f in self.zip:
            if not isinstance(getattr(self, f), list):
                raise FieldError("zip", f"zip names `{f}`, which is not a list of sweep values")
        lengths = {f: len(getattr(self, f)) for f in self.zip}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"`{f}` has {n}" for f, n in lengths.items())
            raise FieldError("zip", f"zipped axes must have equal lengths: {sizes} values")
        return self


def _positive(value: float | list[float]) -> bool:
    """True when a (possibly swept) coefficient is positive at some sweep point."""
    return any(v > 0 for v in (value if isinstance(value, list) else [value]))


class TranscoderSpec(_DictionaryBase):
    """A transcoder: reads the MLP input hook, predicts the MLP output hook."""

    kind: Literal["transcoder"]
    in_hook: HookName = TRANSCODER_IN
    """Input hook, relative to `blocks.{layer}` (paper: ln2.hook_normalized)."""
    out_hook: HookName = TRANSCODER_OUT
    """Output hook it predicts, relative to `blocks.{layer}`."""


class SkipTranscoderSpec(TranscoderSpec):
    """A transcoder with an added linear skip connection `W_skip x`."""

    kind: Literal["skip_transcoder"]  # type: ignore[assignment]


class SAESpec(_DictionaryBase):
    """A sparse autoencoder reconstructing one hook (tied output bias)."""

    kind: Literal["sae"]
    hook: HookName = TRANSCODER_OUT
    """Hook it reconstructs, relative to `blocks.{layer}`."""


class PretrainedDictionarySpec(Frozen):
    """A released dictionary imported from disk or the HF hub; evaluated, studied and
    tabulated exactly like a trained one."""

    kind: Literal["pretrained"]
    path: str
    """Folder or file; `{layer}` in it is replaced by each layer. Relative to the spec file's
    folder; with `repo`, a path inside the repository's snapshot."""
    repo: str | None = None
    """HF hub repository id holding the files (read from the local HF cache when offline)."""
    format: Literal[
        "auto",
        "tcspec",
        "saelens",
        "sparsify",
        "circuit-tracer",
        "gemma-scope",
        "transcoder-circuits",
    ] = "auto"
    """File format; `auto` detects it when unambiguous."""
    layers: list[NonNegInt] | None = None
    """Layers to import; None uses the spec's `layers`."""
    in_hook: HookName | None = None
    """Input hook, relative to `blocks.{layer}`, when the files don't name it (sparsify)."""
    out_hook: HookName | None = None
    """Output hook, relative to `blocks.{layer}`, when the files don't name it."""
    trust_pickle: bool = False
    """Allow pickled (`.pt`) files to run arbitrary code when loaded. Without it only tensors
    and the paper's known config class are admitted."""

    @model_validator(mode="after")
    def _relative_to_the_spec(self, info: ValidationInfo):
        """A relative local `path` is relative to the spec file's folder (the loader's
        `base_dir`), like `data.paths`."""
        base = (info.context or {}).get("base_dir")
        if base is not None and self.repo is None and not Path(self.path).is_absolute():
            object.__setattr__(self, "path", str((Path(base) / self.path).resolve()))
        return self


class CLTSpec(Frozen):
    """A cross-layer transcoder over its layers: an encoder at each layer reading `in_hook`,
    decoders from each layer's features to `hook_mlp_out` of that and every later layer; one
    dictionary (one train task per sweep point) that replaces every MLP at once."""

    kind: Literal["clt"]
    layers: list[NonNegInt] | None = None
    """Layers it spans (increasing); None uses the spec's `layers`."""
    expansion: Sweep[PosInt] | None = None
    """Features per layer as a multiple of d_model. Give this or `d_sae`."""
    d_sae: Sweep[PosInt] | None = None
    """Features per layer. Give this or `expansion`."""
    activation: Literal[CLT_ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    """`relu` or `jumprelu` with the sparsity penalty; `topk` keeping k features per layer."""
    k: Sweep[PosInt] | None = None
    """Active features per layer per token for `topk`."""
    penalty: Literal["tanh", "l1"] = "tanh"
    """Sparsity penalty on a feature's activation times its concatenated decoders' norm:
    `tanh(c a ||W_dec||)` (Anthropic, CLT-Forge) or `a ||W_dec||`."""
    l1: Sweep[NonNegFloat] = 0.0
    """Coefficient of the sparsity penalty (mean over the batch, summed over layers)."""
    tanh_scale: PosFloat = 4.0
    """c in tanh(c a ||W_dec||)."""
    pre_act_coef: NonNegFloat = 0.0
    """JumpReLU: coefficient of relu(theta - z) ||W_dec|| (keeps features alive)."""
    jumprelu_bandwidth: PosFloat = 1.0
    """JumpReLU: width of the rectangle kernel in the threshold's pseudo-derivatives."""
    jumprelu_init_threshold: PosFloat = 0.03
    """JumpReLU: initial threshold of every feature."""
    skip: bool = False
    """Affine skip connection x_m W_skip[m] at every output layer."""
    in_hook: Literal[CLT_IN_HOOKS] = TRANSCODER_IN  # type: ignore[valid-type]
    """Input hook of every layer, relative to `blocks.{layer}`."""
    out_hook: Literal["hook_mlp_out"] = "hook_mlp_out"
    """Output hook every decoder writes, relative to `blocks.{layer}`."""
    lr: Sweep[PosFloat] = 2e-4
    """Adam learning rate (peak)."""
    adam_betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """Adam betas."""
    lr_warmup_steps: NonNegInt = 0
    """Linear learning-rate warm-up from 0 over this many steps."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Learning-rate decay after `lr_decay_start`."""
    lr_decay_start: Fraction = 0.8
    """Fraction of training after which the decay begins."""
    l1_warmup_steps: NonNegInt = 0
    """Linear warm-up of the sparsity coefficient over this many steps."""
    batch_size: PosInt = 4096
    """Tokens per optimizer step."""
    train_tokens: PosInt | None = None
    """Tokens to train on; None uses `data.train_tokens` (one pass over the cache)."""
    init_bias_from_mean: bool = True
    """Initialize b_dec to the mean of the first batch's MLP outputs."""
    live_threshold: Fraction = 1e-4
    """A feature is live when its firing frequency exceeds this."""
    checkpoint_every: PosInt = 1000
    """Steps between resumable checkpoints."""
    seed: NonNegInt | None = None
    """Training seed; None uses the spec's seed."""
    zip: list[Literal[SWEEP_FIELDS]] = []  # type: ignore[valid-type]
    """Sweep axes that advance together (equal lengths) instead of crossing."""

    @model_validator(mode="after")
    def _check(self):
        if (self.expansion is None) == (self.d_sae is None):
            raise FieldError("expansion", "give one of `expansion` and `d_sae` (the width)")
        if (self.activation == "topk") != (self.k is not None):
            raise FieldError("k", "`k` goes with `activation: topk`, and only with it")
        if self.layers is not None and sorted(set(self.layers)) != self.layers:
            raise FieldError("layers", f"a CLT's layers must increase: {self.layers}")
        for f in self.zip:
            if not isinstance(getattr(self, f, None), list):
                raise FieldError("zip", f"zip names `{f}`, which is not a list of sweep values")
        if len({len(getattr(self, f)) for f in self.zip}) > 1:
            raise FieldError("zip", "zipped axes must have equal lengths")
        return self


DictionarySpec = Annotated[
    Union[TranscoderSpec, SkipTranscoderSpec, SAESpec, PretrainedDictionarySpec, CLTSpec],
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------- downstream stages
class EvaluateSpec(Frozen):
    """Sparsity and fidelity metrics on the eval split."""

    eval_tokens: PosInt | None = None
    """Eval tokens to use; None uses all of `data.eval_tokens`."""
    batch_contexts: PosInt = 16
    """Contexts per forward pass."""
    splice_all_layers: bool = False
    """Also evaluate each sweep point with its transcoders spliced into all layers at once."""


class DictionaryRef(Frozen):
    """Selects trained dictionaries: a name, optionally one layer and sweep values."""

    name: Name
    """Dictionary name from `dictionaries`."""
    layer: NonNegInt | None = None
    """Layer; None selects every layer it was trained at."""
    where: dict[Literal[SWEEP_FIELDS], float] = {}  # type: ignore[valid-type]
    """Sweep values to select, e.g. {l1: 0.001}; empty selects every sweep point."""


class InterpSpec(Frozen):
    """Feature dashboards and a blind interpretability study."""

    dictionaries: list[DictionaryRef] = []
    """Dictionaries to study; empty studies every dictionary."""
    features: PosInt = 50
    """Random live features per dictionary in the blind study (paper: 50)."""
    dashboard_features: PosInt = 100
    """Features per dictionary that get a dashboard page (the study's features always do)."""
    examples: PosInt = 20
    """Examples shown per feature."""
    bands: PosInt = 5
    """Activation bands the examples are sampled across."""
    context_window: PosInt = 5
    """Tokens of context either side of an example's token."""
    min_examples: PosInt = 4
    """Features with fewer activating tokens are not sampled."""


YY_SLOT = "YY"
"""What a greater-than prompt template holds in place of the two-digit start year."""
KEEP_TOP_K_POSITIONS = ("all", "last")
"""Where keep-top-k replaces the MLP: at every position (the paper) or the last one."""
YearYY = Annotated[int, Field(ge=0, le=99)]


class YYRange(Frozen):
    """Two-digit start years `first` to `last`, both included."""

    first: YearYY
    last: YearYY

    @model_validator(mode="after")
    def _ordered(self):
        if self.first > self.last:
            raise FieldError("last", f"last {self.last} is before first {self.first}")
        return self

    def values(self) -> list[int]:
        return list(range(self.first, self.last + 1))


YYSet = Union[YYRange, Annotated[list[YearYY], Field(min_length=1)]]
"""Start years: `{first: 1, last: 98}`, or a list."""


def start_years(yy: YYSet | dict | None) -> list[int] | None:
    """The start years of a spec's (or a dumped config's) `yy` value, None for None."""
    if yy is None:
        return None
    if isinstance(yy, dict):
        yy = YYRange(**yy)
    return yy.values() if isinstance(yy, YYRange) else list(yy)


class CircuitSpec(Frozen):
    """A circuit study through transcoders on a prompt set."""

    task: Literal["greater_than"]
    """Built-in prompt set and metric."""
    dictionary: DictionaryRef
    """Transcoders to trace through (one per layer of the model's MLPs that matter)."""
    prompts: PosInt = 32
    """Number of prompts."""
    iterations: PosInt = 3
    """Path-search depth."""
    branches: PosInt = 15
    """Upstream nodes expanded per step."""
    top_paths: PosInt = 20
    """Paths kept."""
    keep_top_k: PosInt = 32
    """Largest k in the keep-top-k experiment."""
    prompt: str | None = None
    """Prompt template with `YY` in place of the two-digit start year, e.g. the paper's
    notebook's `The war lasted from 17YY to 17`. None: the sentence of the toy corpus,
    `The war lasted from the year 17YY to the year 17`."""
    yy: YYSet | None = None
    """Start years scored, e.g. `{first: 1, last: 98}` (the paper's). None: the toy corpus's
    held-out years for a toy model, 02..98 otherwise. At most `prompts` of them are used,
    evenly spread."""
    keep_top_k_positions: Literal[KEEP_TOP_K_POSITIONS] = "last"  # type: ignore[valid-type]
    """Where keep-top-k replaces the MLP by the kept transcoder features (or masks neurons):
    `all` positions (the paper's notebook) or the `last` one only."""
    keep_top_k_rank_yy: YYSet | None = None
    """Start years whose prompts rank features and neurons by activation variance (the
    paper's notebook: every start year, `{first: 0, last: 99}`). None: the scored prompts."""
    study_layer: NonNegInt | None = None
    """The layer whose MLP the keep-top-k and metric headlines study (the paper's gpt2: 10).
    None: the toy model's task layer, else the last transcoder layer."""
    mlp0_deembeddings: bool = False
    """Also de-embed through the layer-0 transcoder's top features, MLP0 as an extended
    embedding (the paper's greater-than plot); needs a transcoder at layer 0."""

    @model_validator(mode="after")
    def _check(self):
        if self.prompt is not None and self.prompt.count(YY_SLOT) != 1:
            raise FieldError(
                "prompt", f"the template needs exactly one `{YY_SLOT}` for the start year"
            )
        return self


class TargetSpec(Frozen):
    """A logit difference as the graph's one target: `correct` minus `incorrect`."""

    correct: str
    """Text of the token whose logit counts positively, e.g. `" 18"` (one token)."""
    incorrect: str
    """Text of the token whose logit counts negatively, e.g. `" 17"` (one token)."""


class AttributionSpec(Frozen):
    """Attribution graphs through transcoders on the user's own prompts (circuit-tracer's
    definitions): per prompt a pruned graph (JSON), its adjacency, an HTML viewer and an
    intervention check."""

    task: Literal["attribution"]
    """Attribution graphs on `prompts`."""
    dictionary: DictionaryRef
    """Transcoders to trace through (one sweep point; one per layer)."""
    prompts: list[Annotated[str, Field(min_length=1)]] | None = None
    """Prompts, each traced on its own (BOS is prepended). Give this or `prompts_file`."""
    prompts_file: Path | None = None
    """A text file of prompts, one a line (blank lines skipped); relative to the spec file."""
    max_n_logits: PosInt = 10
    """At most this many top logits become target nodes."""
    desired_logit_prob: Fraction = 0.95
    """Fewer top logits when their cumulative probability reaches this."""
    max_feature_nodes: PosInt | None = None
    """Cap on the features whose rows are computed (the most influential); None: all."""
    node_threshold: Fraction = 0.8
    """Pruning keeps the nodes carrying this fraction of the influence on the logits."""
    edge_threshold: Fraction = 0.98
    """...and the edges carrying this fraction of the edge influence."""
    target: TargetSpec | None = None
    """One logit-difference target instead of the top logits."""

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        if (self.prompts is None) == (self.prompts_file is None):
            raise FieldError("prompts", "give `prompts` (a list) or `prompts_file`, not both")
        if self.prompts is not None and not self.prompts:
            raise FieldError("prompts", "`prompts` is empty; give at least one prompt")
        base = (info.context or {}).get("base_dir")
        path = self.prompts_file
        if base is not None and path is not None and not path.is_absolute():
            object.__setattr__(self, "prompts_file", (Path(base) / path).resolve())
        return self

    def prompt_list(self) -> list[str]:
        """The prompts, from `prompts` or read from `prompts_file`."""
        if self.prompts is not None:
            return list(self.prompts)
        lines = Path(self.prompts_file).read_text().splitlines()
        return [line for line in lines if line.strip()]


CircuitEntry = Annotated[Union[CircuitSpec, AttributionSpec], Field(discriminator="task")]
"""A circuit study: tagged by `task`."""


class ExportSpec(Frozen):
    """Write trained dictionaries in another tool's format."""

    to: Literal["saelens", "sparsify", "circuit-tracer"]
    """Target format; `circuit-tracer` writes one transcoder set (layers 0..n-1) per sweep
    point."""
    dictionaries: list[DictionaryRef] = []
    """Dictionaries to export; empty exports every trained dictionary."""


class TablesSpec(Frozen):
    """Which tables and plots to generate."""

    include: list[Literal[TABLE_NAMES]] = list(DEFAULT_INCLUDE)  # type: ignore[valid-type]
    """Tables to build (see tcspec/tables/registry.py)."""
    reference: Literal[tuple(REFERENCES)] | None = None  # type: ignore[valid-type]
    """Published numbers to print beside ours (see tcspec/paper.py)."""


class Spec(Frozen):
    """A tcspec experiment."""

    experiment: Name
    """Experiment name; tables go to results/<experiment>/."""
    seed: NonNegInt = 0
    """Seed for everything not seeded elsewhere."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where forward passes and training run; `auto` picks CUDA when present. Not part of
    task ids: the same spec on another device shares its outputs' names."""
    model: ModelSpec
    """The language model studied."""
    data: DataSpec
    """The corpus activations are computed on."""
    acts: ActsSpec = ActsSpec()
    """Activation cache storage."""
    layers: Annotated[list[NonNegInt], Field(min_length=1)]
    """Layers studied (dictionaries default to these)."""
    dictionaries: Annotated[dict[Name, DictionarySpec], Field(min_length=1)]
    """Named dictionaries to train."""
    evaluate: EvaluateSpec = EvaluateSpec()
    """Evaluation settings."""
    interp: InterpSpec | None = None
    """Interpretability study; None skips it."""
    circuits: list[CircuitEntry] = []
    """Circuit studies: `task: greater_than`, or `task: attribution` on your own prompts."""
    export: list[ExportSpec] = []
    """Exports to other tools' formats, written to results/<experiment>/export/<to>/."""
    tables: TablesSpec = TablesSpec()
    """Tables and plots."""

    @model_validator(mode="after")
    def _check(self):
        if self.experiment in RESERVED_EXPERIMENT_NAMES:
            reserved = ", ".join(RESERVED_EXPERIMENT_NAMES)
            raise FieldError(
                "experiment",
                f"experiment name `{self.experiment}` is reserved ({reserved} are results/ folders)",
            )
        if len(set(self.layers)) != len(self.layers):
            raise FieldError("layers", f"layers repeat: {self.layers}")
        if self.acts.source == "stream" and any(
            d.kind == "clt" for d in self.dictionaries.values()
        ):
            raise FieldError(
                "acts", "`kind: clt` trains from the activation cache: use `acts: {source: cache}`"
            )
        return self
