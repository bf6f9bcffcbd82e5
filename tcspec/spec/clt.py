"""The spec's cross-layer transcoders (CLTs): one dictionary over its layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import model_validator

from tcspec.dictionaries.families import FAMILIES
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT
from tcspec.spec.base import (
    FieldError,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Sweep,
)
from tcspec.spec.dictionary_base import NO_LM, Schedule, named_activations
from tcspec.vocab import (
    CLT,
    CLT_ACTIVATIONS,
    CLT_IN_HOOKS,
    CLT_OUT_HOOKS,
    CLT_PENALTIES,
)

CLT_IS = "is a cross-layer transcoder"


class CLTSpec(Schedule):
    """A cross-layer transcoder over its layers: an encoder at each layer reading `in_hook`,
    decoders from each layer's features to `hook_mlp_out` of that and every later layer; one
    dictionary (one train task per sweep point) that replaces every MLP at once."""

    kind: Literal[CLT]
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
    penalty: Literal[CLT_PENALTIES] = "tanh"  # type: ignore[valid-type]
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
    out_hook: Literal[CLT_OUT_HOOKS] = TRANSCODER_OUT  # type: ignore[valid-type]
    """Output hook every decoder writes, relative to `blocks.{layer}`."""
    lr: Sweep[PosFloat] = 2e-4
    """Adam learning rate (peak)."""
    lr_warmup_steps: NonNegInt = 0
    """Linear learning-rate warm-up from 0 over this many steps."""
    init_bias_from_mean: bool = True
    """Initialize b_dec to the mean of the first batch's MLP outputs."""

    LIMITS: ClassVar[Mapping[str, str]] = {
        "circuit_layer": f"{CLT_IS}: a graph traces all its layers; drop `layer`",
        "mlp0_deembeddings": f"{CLT_IS}: its layer-0 features write every later MLP, so MLP0 "
        "is no extended embedding; drop `mlp0_deembeddings`",
        "probe": f"{CLT_IS}; probing reads per-layer dictionaries",
        "joint_splice": f"{CLT_IS}: it is spliced at all its layers at once, alone",
        "synthetic": NO_LM,
    }

    @property
    def sparsity_field(self) -> str:
        """The option that sets its sparsity (the family's `clt_sparsity`: k or l1)."""
        return FAMILIES[self.activation].clt_sparsity

    @model_validator(mode="after")
    def _check(self):
        if (self.expansion is None) == (self.d_sae is None):
            raise FieldError("expansion", "give one of `expansion` and `d_sae` (the width)")
        if FAMILIES[self.activation].takes_k != (self.k is not None):
            topk = named_activations(lambda f: f.takes_k and f.clt_sparsity is not None)
            raise FieldError("k", f"`k` goes with {topk}, and only with it")
        if self.layers is not None and sorted(set(self.layers)) != self.layers:
            raise FieldError("layers", f"a CLT's layers must increase: {self.layers}")
        for f in self.zip:
            if not isinstance(getattr(self, f, None), list):
                raise FieldError("zip", f"zip names `{f}`, which is not a list of sweep values")
        if len({len(getattr(self, f)) for f in self.zip}) > 1:
            raise FieldError("zip", "zipped axes must have equal lengths")
        return self
