"""The spec's model, data and activation-source sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import (
    Field,
    model_validator,
)

from tcspec.models.recipes import RECIPES
from tcspec.spec.base import (
    DType,
    FieldError,
    Fraction,
    Frozen,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
)
from tcspec.vocab import Bos


# ---------------------------------------------------------------------------------- model
class ToyModelSpec(Frozen):
    """A small TransformerLens LM trained here from an offline corpus (CPU-friendly)."""

    kind: Literal["toy"]
    recipe: Literal[tuple(RECIPES)] = "greater_than_mix"  # type: ignore[valid-type]
    """Training corpus recipe (`tcspec.models.recipes`): `greater_than_mix` is half pydoc
    text, half task sentences, 1,000 steps; `greater_than_fast` (the built-in specs') 70% task
    sentences, 600 steps at a higher rate; `text_only` pydoc text alone (a control)."""
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


class SyntheticModelSpec(Frozen):
    """Activations with a known ground truth (no language model): `n_features` sparse input
    features, each a random unit direction in `d_model` dims (superposition when
    `n_features > d_model`), firing with power-law probabilities (a Gaussian copula
    correlates them), with magnitudes |N(mean, std)|. `blocks.0.ln2.hook_normalized` holds
    x = sum_i a_i d_i; `blocks.0.hook_mlp_out` holds y = sum_i a_i m_i, where the known
    sparse map sends input feature i to `out_fan` of `n_out_features` output directions
    (m_i: their weighted sum, unit norm). Dictionaries are scored against this truth
    (`tcspec.evaluation.ground_truth`), as SAELens's SynthSAEBench scores SAEs."""

    kind: Literal["synthetic"]
    n_features: PosInt = 512
    """Number of true (input) features."""
    d_model: PosInt = 128
    """Width of the activations; `n_features / d_model` is the degree of superposition."""
    firing_exponent: PosFloat = 1.0
    """Power law of the firing probabilities: feature r (rank from 1) fires with probability
    proportional to r^-exponent, scaled into [`min_prob`, `max_prob`] (SynthSAEBench's
    Zipfian firing probabilities)."""
    max_prob: Fraction = 0.2
    """Firing probability of the most frequent feature."""
    min_prob: Fraction = 0.005
    """Firing probability of the rarest feature."""
    magnitude_mean: PosFloat = 1.0
    """Mean activation of a feature when it fires."""
    magnitude_std: NonNegFloat = 0.25
    """Standard deviation of a firing feature's activation (clipped at 0, as SAELens does)."""
    correlation_rank: NonNegInt = 8
    """Latent factors of the Gaussian copula that correlates firing (0: independent)."""
    correlation_strength: Fraction = 0.2
    """Share of each feature's copula variance that comes from the shared factors (0:
    independent firing; the marginal firing probabilities are kept exactly)."""
    n_out_features: PosInt | None = None
    """Output features the map writes to (directions of `hook_mlp_out`); None: n_features."""
    out_fan: PosInt = 2
    """Output features each input feature writes to (the map's nonzeros per input feature)."""

    @model_validator(mode="after")
    def _check(self):
        if self.min_prob >= self.max_prob:
            raise FieldError(
                "min_prob", f"min_prob {self.min_prob} must be below max_prob {self.max_prob}"
            )
        if self.min_prob == 0:
            raise FieldError("min_prob", "min_prob must be positive (a feature that never fires)")
        n_out = self.n_out_features or self.n_features
        if self.out_fan > n_out:
            raise FieldError("out_fan", f"out_fan {self.out_fan} exceeds the {n_out} outputs")
        return self


ModelSpec = Annotated[
    Union[ToyModelSpec, PretrainedModelSpec, CheckpointModelSpec, SyntheticModelSpec],
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------------- data
class _DataBase(Frozen):
    context: PosInt = 128
    """Tokens per packed row, BOS included."""
    train_tokens: PosInt
    """Tokens in the training split (the activation cache holds this many)."""
    eval_tokens: PosInt
    """Tokens in the evaluation split, disjoint from training."""
    bos: Bos = "exclude"
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


class SyntheticDataSpec(Frozen):
    """Samples drawn from a `model: {kind: synthetic}` source (one activation row each)."""

    kind: Literal["synthetic"]
    train_tokens: PosInt
    """Training samples (the activation cache holds this many rows)."""
    eval_tokens: PosInt
    """Evaluation samples, drawn afresh from the same distribution."""
    context: ClassVar[int] = 1
    """A sample is one row: there are no contexts."""
    bos: ClassVar[str] = "include"
    """There are no BOS positions: every sample counts."""


DataSpec = Annotated[
    Union[ToyDataSpec, HubDataSpec, FilesDataSpec, SyntheticDataSpec],
    Field(discriminator="kind"),
]


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
