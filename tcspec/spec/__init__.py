"""The spec language: what a researcher writes in ``specs/*.yaml``.

Every model is frozen and forbids unknown keys; variants are tagged unions on ``kind``.
The docstring under each field is its documentation and flows into the JSON Schema.
A list in a field typed ``Sweep`` is a sweep axis: the plan takes the cross product of a
dictionary's axes, except the axes named together in its ``zip``, which advance in step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tcspec.spec.base import (  # noqa: F401 (re-exported: the spec language's names)
    RESERVED_EXPERIMENT_NAMES,
    SWEEP_FIELDS,
    FieldError,
    Frozen,
    Name,
    NonNegInt,
    Seed,
    Sweep,
)
from tcspec.spec.clt import CLTSpec  # noqa: F401 (re-exported: the spec language's names)
from tcspec.spec.dictionaries import (  # noqa: F401 (re-exported: the spec language's names)
    DictionarySpec,
)
from tcspec.spec.per_layer import (  # noqa: F401 (re-exported: the spec language's names)
    SAESpec,
    SkipTranscoderSpec,
    TranscoderSpec,
)
from tcspec.spec.sources import (  # noqa: F401 (re-exported: the spec language's names)
    ActsSpec,
    DataSpec,
    ModelSpec,
)
from tcspec.spec.stages import (  # noqa: F401 (re-exported: the spec language's names)
    KEEP_TOP_K_POSITIONS,
    CircuitEntry,
    CircuitSpec,
    DictionaryRef,
    EvaluateSpec,
    ExportSpec,
    InterpSpec,
    ProbeDataSpec,
    ProbeSpec,
    TablesSpec,
    start_years,
)


class Spec(Frozen):
    """A tcspec experiment."""

    experiment: Name
    """Experiment name; tables go to results/<experiment>/."""
    seed: Seed = 0
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
    probe: ProbeSpec | None = None
    """Sparse probing of dictionary latents against raw activations; None skips it."""
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
        for name, d in self.dictionaries.items():
            if self.device == "cpu" and getattr(d, "precision", None) == "tf32":
                raise FieldError(
                    "device",
                    f"dictionary `{name}` trains in `precision: tf32`, a CUDA setting, but "
                    "`device: cpu`; use fp32 (or bf16 on a CPU with avx512_bf16)",
                )
        return self
