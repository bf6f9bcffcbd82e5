"""Shared pieces of the spec language: constrained scalars, sweeps, the frozen base model;
and what its checks share (``Loc``, ``Found``, ``path_exists``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from tcspec.models.hooks import BLOCK_HOOKS

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)]
INT_MAX = 2**63 - 1
"""The largest integer a spec holds: what torch and numpy index and count with (int64)."""
SEED_MAX = 2**32 - 1
"""The largest seed: every generator tcspec seeds (and seed + offsets) takes it."""
PosInt = Annotated[int, Field(gt=0, le=INT_MAX)]
NonNegInt = Annotated[int, Field(ge=0, le=INT_MAX)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1)]
HookName = Literal[tuple(BLOCK_HOOKS)]  # type: ignore[valid-type]
DType = Literal["float32", "float16", "bfloat16"]

T = TypeVar("T")
Sweep = Union[T, Annotated[list[T], Field(min_length=1)]]
"""A value, or a list of values that makes a sweep axis."""


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


SWEEP_FIELDS = ("expansion", "d_sae", "k", "l1", "lr", "l0_coef", "seed")
"""Fields whose list value is a sweep axis; `seed` makes replicates (see `REPLICATE_AXES`)."""
REPLICATE_AXES = ("seed",)
"""Sweep axes that repeat a sweep point rather than move it: the tables pool them into a
mean and a spread."""
RESERVED_EXPERIMENT_NAMES = ("tasks", "logs", "benchmarks", "checkpoints")


class FieldError(ValueError):
    """A cross-field check failed; ``field`` names the key the message is about, so the
    loader can point at that key's line instead of the enclosing mapping."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


Loc = tuple[str | int, ...]
"""A path in the spec: its keys and list indices."""
Found = Iterator[tuple[tuple, str]]
"""What a semantic check of a validated spec yields: (path in the spec, message) pairs."""


def path_exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name the OS refuses (too long, NUL byte)
        return False
