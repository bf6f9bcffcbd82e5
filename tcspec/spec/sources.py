"""The spec's model, data and activation-source sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    Field,
    model_validator,
)

from tcspec.models.recipes import RECIPES
from tcspec.spec.base import (
    DType,
    FieldError,
    Frozen,
    PosInt,
)


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
