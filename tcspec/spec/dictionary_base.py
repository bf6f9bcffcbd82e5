"""What every dictionary of the spec answers, whatever its kind: the uses a kind may refuse
(`USES`, `Kind.cannot`) and the optimiser and schedule fields of every trained one
(`Schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from tcspec.compute import Precision
from tcspec.dictionaries.families import names
from tcspec.spec.base import SWEEP_FIELDS, Fraction, Frozen, NonNegInt, PosInt, Seed, Sweep
from tcspec.vocab import LIVE_THRESHOLD


def named_activations(which) -> str:
    """The families `which` selects, e.g. "`activation: topk` or `batchtopk`"."""
    chosen = names(which)
    return " or ".join([f"`activation: {chosen[0]}`", *(f"`{n}`" for n in chosen[1:])])


USES = ("circuits", "circuit_layer", "mlp0_deembeddings", "probe", "joint_splice", "synthetic")
"""What the spec's sections ask of a dictionary: be traced by a circuit study, at one named
layer, with the MLP0 de-embeddings; be probed; be spliced with its other layers' dictionaries
at once; read a synthetic source. Each kind's `LIMITS` names those it cannot serve."""

NO_LM = "needs a language model; a synthetic source has none"


class Kind(Frozen):
    """What every dictionary of the spec answers, whatever its kind or shape."""

    LIMITS: ClassVar[Mapping[str, str]] = {}
    """Uses (of `USES`) this kind cannot serve -> why (it reads after "`name` ")."""

    def cannot(self, use: str) -> str | None:
        """Why this dictionary cannot serve `use` (one of `USES`); None when it can."""
        if use not in USES:
            raise ValueError(f"unknown use {use!r}; one of {USES}")
        return self.LIMITS.get(use)


class Schedule(Kind):
    """The optimiser, schedule and run fields every trained dictionary has."""

    adam_betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """Adam betas."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Learning-rate decay after `lr_decay_start` (the paper used none)."""
    lr_decay_start: Fraction = 0.8
    """Fraction of training after which the decay begins."""
    l1_warmup_steps: NonNegInt = 0
    """Linear warm-up of the sparsity (L1) coefficient over this many steps."""
    batch_size: PosInt = 4096
    """Tokens per optimizer step."""
    train_tokens: PosInt | None = None
    """Tokens to train on; None uses `data.train_tokens` (one pass over the cache)."""
    precision: Precision = "auto"
    """What the training GEMMs compute in: `fp32`; `tf32` (CUDA's TF32 tensor cores); `bf16`
    (bfloat16 operands, float32 accumulation, float32 master weights and Adam moments, as
    autocast); `auto`: bf16 on CUDA (fp32 on a GPU without native bf16), fp32 on a CPU (bf16
    is opt-in there: ~2.5x faster GEMMs
    where the CPU has `avx512_bf16`, ~100x slower where it has not). Resolved when the plan is
    compiled, for the spec's `device` (`device: auto`: whether the compiling machine has
    CUDA); the resolved precision is part of the train task's id."""

    live_threshold: Fraction = LIVE_THRESHOLD
    """A feature is live when its firing frequency exceeds this (log10 freq > -4)."""
    checkpoint_every: PosInt = 1000
    """Steps between resumable checkpoints."""
    seed: Sweep[Seed] | None = None
    """Training seed (initialisation, resampling, any sampling in training; the data order
    is the spec's `seed`'s); None uses the spec's seed. A list, `seed: [0, 1, 2]`, trains
    every sweep point once per seed: the tables show their mean and spread."""
    zip: list[Literal[SWEEP_FIELDS]] = []  # type: ignore[valid-type]
    """Sweep axes that advance together (equal lengths) instead of crossing."""

    def train_steps(self, data_tokens: int) -> int:
        """Optimizer steps of a run: its tokens (`train_tokens`, else the data's
        `data_tokens`) over `batch_size`."""
        return (self.train_tokens or data_tokens) // self.batch_size
