"""Activation families: each is one module here and one row of `FAMILIES`.

A family's row (pure Python: the spec, the planner and the checks read it without torch)
states what the spec, the planner and the file formats know of it. Its module,
`tcspec.dictionaries.families.<name>` (torch; `Family.ops`), holds its maths:

    activate(pre, k, threshold, bandwidth)   the inference form, pre [..., S] -> z [..., S]
                                             (`Coder.activate`, a CLT's layers); `bandwidth`:
                                             a CLT's autograd forward (JumpReLU's theta)
    forward(coder, pre, out_shape, ws, opts) the trainer's forward -> (codes, y_hat)
    backward(coder, codes, g, l1/B, xc, dead, ws)   its hand-written gradients
    reference(coder, pre, opts, dead, log_threshold) -> (z, extra loss terms), through
                                             autograd (`tcspec.training.loss.reference_loss`)
    trained(coder, opts)                     tensors Adam steps in place of `threshold`
    rates(opts, factor)                      their own learning rates
    state()                                  estimates the trainer keeps beside them
    update(state, codes, opts)               ... after each step
    sync(coder, params, state)               coder.threshold from those

The spec's `activation` choices, `CoderConfig`, `CLTConfig`, the trainer, `Coder.activate`,
the exporters and the importers all read `FAMILIES`; adding a family is its module and its
row (tests/dictionaries/test_family_registry.py walks them).

Matryoshka is no family of its own: nested prefixes that each reconstruct are a loss over
a family's latents (`tcspec.training.matryoshka`), taken by the families with `nests`; the
paper's Matryoshka BatchTopK is `activation: batchtopk` with `matryoshka: [...]`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

OPS = ("activate", "forward", "backward", "reference", "trained", "rates", "state", "update",
       "sync")  # fmt: skip
"""What every family's module defines (above)."""


@dataclass(frozen=True)
class Family:
    """What the spec, the planner and the file formats know of one activation family."""

    name: str
    """The spec's `activation`."""
    title: str
    """Its name in prose (messages)."""
    sparsity: str
    """The spec field that sets a per-layer dictionary's sparsity and names its train tasks:
    `l1`, `k` (the family takes `k`), or `l0_coef`."""
    clt_sparsity: str | None = None
    """The same for a cross-layer transcoder; None: a CLT cannot have this family."""
    thresholded: bool = False
    """Infers z = pre * [pre > threshold], a `threshold` [d_sae] beside the weights."""
    aux_k: bool = False
    """The aux-k dead-feature loss applies to it (and is its default `dead_features`)."""
    nests: bool = False
    """It takes Matryoshka prefixes (`matryoshka`)."""
    transpose_init: bool = False
    """Its encoder starts as the decoder's transpose (`encoder_init` left unset, d_in = d_out;
    Gao et al. 2024, sparsify, SAELens, dictionary_learning), a transcoder's in the
    output's units (`transpose_scaled`): what keeps most of its features alive."""
    options: tuple[str, ...] = ()
    """Spec fields only this family reads."""
    saelens: str = "standard"
    """SAELens's architecture of an SAE of this family."""
    saelens_transcoder: str | None = "{kind}"
    """... and of a transcoder (`{kind}`: `transcoder` or `skip_transcoder`); None: SAELens
    has none."""
    circuit_tracer: str | None = None
    """circuit-tracer's `activation` in a set's config.yaml (with `k`); None: none written
    (its loader reads a threshold tensor, else runs ReLU)."""
    reads_as: str | None = None
    """The family other tools read its files as (its own name and `k` travel under
    tcspec's keys, which they ignore); None: its own."""

    @property
    def takes_k(self) -> bool:
        """It has `k` (active features per token)."""
        return self.sparsity == "k"

    @property
    def ops(self) -> ModuleType:
        """Its module (torch), imported on first use."""
        return importlib.import_module(f"{__name__}.{self.name}")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("relu", "ReLU", sparsity="l1", clt_sparsity="l1"),
        Family(
            "topk", "TopK", sparsity="k", clt_sparsity="k", aux_k=True, nests=True, transpose_init=True,
            saelens="topk", saelens_transcoder=None, circuit_tracer="topk",
        ),
        Family(
            "jumprelu", "JumpReLU", sparsity="l0_coef", clt_sparsity="l1", thresholded=True,
            options=("l0_coef", "penalty", "tanh_scale", "pre_act_coef", "jumprelu_bandwidth",
                     "jumprelu_init_threshold", "jumprelu_threshold_lr"),
            saelens="jumprelu", saelens_transcoder="jumprelu_{kind}",
        ),
        Family(
            "batchtopk", "BatchTopK", sparsity="k", thresholded=True, aux_k=True, nests=True,
            transpose_init=True,
            options=("batchtopk_threshold_lr",), saelens="jumprelu",
            saelens_transcoder="jumprelu_{kind}", reads_as="jumprelu",
        ),
    )
}  # fmt: skip
"""Every activation family, by name, in the spec's order."""


def family(name: str) -> Family:
    """The family called `name` (a KeyError naming the choices otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"activation `{name}` is not one of {tuple(FAMILIES)}") from None


def names(which=lambda f: True) -> tuple[str, ...]:
    """The names of the families `which` selects, in the spec's order."""
    return tuple(f.name for f in FAMILIES.values() if which(f))
