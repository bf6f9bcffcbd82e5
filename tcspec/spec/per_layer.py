"""The spec's per-layer dictionaries (transcoder, skip transcoder, SAE): their options, the
defaults a run fills in, and the checks between options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Self

from pydantic import model_validator

from tcspec.dictionaries.families import FAMILIES, Family
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT
from tcspec.spec.base import (
    FieldError,
    Fraction,
    Frozen,
    HookName,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Sweep,
    as_list,
)
from tcspec.spec.dictionary_base import Schedule, named_activations
from tcspec.vocab import (
    ACTIVATIONS,
    ENCODER_INITS,
    GHOST_RESIDUALS,
    JUMPRELU_PENALTIES,
)

DEAD_WINDOW_FRACTION = 0.1
"""`dead_window: null`: the dead window is this fraction of the run's steps..."""
DEAD_WINDOW_CAP = 5000
"""...and at most this many steps (the paper's window)."""
THRESHOLD_EFOLDS = 8.0
"""`jumprelu_threshold_lr: null`: log(threshold) may travel this far (a factor e^8) in a run."""

_OWN_CHECKS = ("penalty", "tanh_scale", "pre_act_coef")
"""Family options `_check_penalties` checks, with their own messages."""


class _DictionaryBase(Schedule):
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
    lr_warmup_steps: NonNegInt = 5000
    """Linear warm-up from 0 over this many steps."""
    normalize_decoder: bool = True
    """Renormalize decoder rows to unit norm after each step."""
    remove_parallel_grad: bool = True
    """Remove the gradient component parallel to each decoder row before each step."""
    init_bias_from_mean: bool = True
    """Initialize b_dec (and b_dec_out) to the mean of the first batch of activations."""
    encoder_init: Literal[ENCODER_INITS] | None = None  # type: ignore[valid-type]
    """How the encoder starts: `kaiming` (kaiming-uniform, independent of the decoder);
    `transpose`, W_enc = W_dec^T (the decoder's unit-norm rows; Gao et al. 2024, sparsify,
    SAELens, dictionary_learning; needs d_in = d_out); or `transpose_scaled`, that transpose
    in the output's units: W_enc = s W_dec^T with s = rms ||y - mean y|| / rms ||x - mean x||
    on the first batch, and W_enc and b_enc stepped at s x `lr`, as if x and y were rescaled
    to one scale (SAELens's `normalize_activations`, CLT-Forge's norm scalars; s = 1 for an
    SAE). None: for `topk` and `batchtopk` where d_in = d_out, `transpose` (an SAE) or
    `transpose_scaled` (a transcoder), else `kaiming`. A TopK feature's activation is its
    decoder row's coefficient, in the output's units: a transcoder whose output is s times
    its input (s 4.6 at the quickstart's layer 0) starts its activations s times too small,
    and the first features whose encoders grow take every token's top k while the rest, their
    decoders still random, die within ~50 steps; aux-k does not revive them. On the
    quickstart's toy at k 16, TopK and BatchTopK transcoders end 4.6% and 6.5% dead with
    `transpose_scaled`, 50.0% and 55.6% with `transpose`; a Matryoshka BatchTopK SAE 0.7%
    dead with `transpose`, 66.8% with `kaiming`."""
    dead_features: Literal["none", "ghost_grads", "resample", "aux_k"] = "none"
    """Dead-feature handling: none (paper), ghost grads (released example script), periodic
    resampling, or the TopK auxiliary loss. Unset: `aux_k` for `topk` and `batchtopk`
    (SAELens, dictionary_learning), else `none`."""
    dead_window: PosInt | None = None
    """Steps without firing after which a feature counts as dead, for the dead-feature
    remedies (ghost grads, aux-k; `resample` re-initializes every `dead_window` steps) and
    JumpReLU's pre-activation loss. None: a tenth of the run's steps, at most 5,000 (where
    none of those uses it, 5,000: the training curve's `dead` count)."""
    ghost_residual: Literal[GHOST_RESIDUALS] = "output"  # type: ignore[valid-type]
    """Ghost grads: the residual the dead features' ghost output is fit to: `output`,
    y - y_hat (the dictionary's target side), or `input`, x - y_hat (the paper's released
    code, with the transcoder's input x; needs d_in = d_out). The same for an SAE."""
    aux_k: PosInt | None = None
    """Dead features the aux-k loss reconstructs with; None uses d_out / 2 (sparsify)."""
    aux_k_coef: NonNegFloat = 1 / 32
    """Weight of the aux-k loss."""
    l0_coef: Sweep[NonNegFloat] = 1.0
    """JumpReLU: coefficient of the L0 penalty (its form is `penalty`)."""
    penalty: Literal[JUMPRELU_PENALTIES] = "step"  # type: ignore[valid-type]
    """JumpReLU: form of the L0 penalty. `step`: l0_coef * mean_b sum_i H(pre_bi -
    threshold_i) (GDM), rectangle-kernel pseudo-derivatives to the threshold; `tanh`:
    l0_coef * mean_b sum_i tanh(c z_bi ||W_dec,i||), c = `tanh_scale` (Anthropic, Jan 2025;
    SAELens `jumprelu_sparsity_loss_mode`; a CLT's `penalty: tanh`)."""
    tanh_scale: PosFloat = 4.0
    """JumpReLU with `penalty: tanh`: c in tanh(c z ||W_dec||) (as a CLT's `tanh_scale`)."""
    pre_act_coef: NonNegFloat | None = None
    """JumpReLU: coefficient of the pre-activation loss pre_act_coef * mean_b sum_i
    relu(threshold_i - pre_bi) ||W_dec,i||, summed over the dead features only (dead:
    `dead_window`), as SAELens (a CLT's `pre_act_coef` takes every feature); None: off."""
    jumprelu_bandwidth: PosFloat = 0.05
    """JumpReLU: width of the rectangle kernel in the threshold's pseudo-derivatives."""
    jumprelu_init_threshold: PosFloat = 0.01
    """JumpReLU: initial threshold of every feature (trained as log(threshold))."""
    jumprelu_threshold_lr: PosFloat | None = None
    """JumpReLU: Adam learning rate of log(threshold), on the schedule of `lr`. Adam moves
    log(threshold) by at most about this per step, so in S steps the threshold can move by
    at most a factor e^(S rate) from `jumprelu_init_threshold`; at too low a rate the L0
    penalty's pull saturates at that cap and every `l0_coef` ends at the same L0. None: the
    larger of `lr` (SAELens, for long runs) and 8 / S (a factor e^8 ~ 3,000 within the run)."""
    matryoshka: list[PosInt] | None = None
    """TopK or BatchTopK: nested prefix widths (strictly increasing; d_sae is the last, appended when
    missing): the loss adds each inner prefix's reconstruction loss (unweighted, as SAELens).
    """
    batchtopk_threshold_lr: Fraction = 0.01
    """BatchTopK: rate of the running estimate of the inference threshold, updated each step
    toward the batch's smallest positive kept activation (SAELens's rule)."""
    density_window: PosInt = 1000
    """Steps over which feature density (firing frequency) is tracked."""

    @model_validator(mode="after")
    def _check(self):
        if self.expansion is not None and self.d_sae is not None:
            raise FieldError("d_sae", "give `expansion` or `d_sae`, not both")
        if self.expansion is None and self.d_sae is None:
            raise FieldError("expansion", "give one of `expansion` and `d_sae` (the width)")
        fam = self.family
        if fam.takes_k and self.k is None:
            raise FieldError("activation", f"`activation: {self.activation}` needs `k`")
        if not fam.takes_k and self.k is not None:
            raise FieldError("k", f"`k` only applies to {named_activations(lambda f: f.takes_k)}")
        if not self.normalize_decoder and fam.sparsity == "l1" and _positive(self.l1):
            raise FieldError(
                "normalize_decoder",
                "`normalize_decoder: false` with an L1 penalty is degenerate (the L1 term "
                "shrinks z while W_dec grows); keep unit-norm decoder rows or set `l1: 0`",
            )
        if self.ghost_residual != "output" and self.dead_features != "ghost_grads":
            raise FieldError(
                "ghost_residual", "`ghost_residual` only applies to `dead_features: ghost_grads`"
            )
        if self.dead_features == "aux_k" and not fam.aux_k:
            raise FieldError(
                "dead_features",
                f"`dead_features: aux_k` needs {named_activations(lambda f: f.aux_k)}",
            )
        if self.matryoshka is not None:
            if not fam.nests:
                needs = named_activations(lambda f: f.nests)
                raise FieldError("matryoshka", f"`matryoshka` needs {needs}")
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

    @model_validator(mode="before")
    @classmethod
    def _default_dead_features(cls, data):
        """`dead_features` left unset is `aux_k` for the k activations."""
        if isinstance(data, dict) and "dead_features" not in data:
            activation = data.get("activation")  # anything: the field's own check names it
            fam = FAMILIES.get(activation) if isinstance(activation, str) else None
            if fam is not None and fam.aux_k:
                data = data | {"dead_features": "aux_k"}
        return data

    @property
    def family(self) -> Family:
        """The activation's family (`tcspec.dictionaries.families`)."""
        return FAMILIES[self.activation]

    @property
    def sparsity_field(self) -> str:
        """The option that sets its sparsity (the family's `sparsity`: k, l0_coef or l1)."""
        return self.family.sparsity

    def uses_dead_window(self) -> bool:
        """Whether a loss term or resampling acts on the dead features."""
        return self.dead_features != "none" or self.pre_act_coef is not None

    def for_run(self, steps: int, d_in: int, d_out: int) -> Self:
        """These options with what a run of `steps` from width d_in to d_out decides filled
        in: `dead_window`, `encoder_init` and a JumpReLU's `jumprelu_threshold_lr` when left
        unset."""
        update: dict = {}
        if self.encoder_init is None:
            transpose = self.family.transpose_init and d_in == d_out
            scaled = "transpose" if self.kind == "sae" else "transpose_scaled"
            update["encoder_init"] = scaled if transpose else "kaiming"
        if self.dead_window is None:
            window = DEAD_WINDOW_CAP
            if self.uses_dead_window():
                window = min(DEAD_WINDOW_CAP, max(1, round(DEAD_WINDOW_FRACTION * steps)))
            update["dead_window"] = window
        own = "jumprelu_threshold_lr" in self.family.options
        if own and self.jumprelu_threshold_lr is None:
            lr = min(as_list(self.lr))  # a scalar once a sweep point is chosen
            update["jumprelu_threshold_lr"] = max(lr, THRESHOLD_EFOLDS / max(steps, 1))
        return self.model_copy(update=update) if update else self

    @model_validator(mode="after")
    def _check_penalties(self):
        """The L0 penalty's options (`_OWN_CHECKS`, JumpReLU's) only where they act."""
        own = self.family.options
        if "penalty" not in own and self.penalty != _default(self, "penalty"):
            raise FieldError(
                "penalty", f"`penalty: {self.penalty}` only applies to {_owners('penalty')}"
            )
        if "pre_act_coef" not in own and self.pre_act_coef is not None:
            raise FieldError(
                "pre_act_coef", f"`pre_act_coef` only applies to {_owners('pre_act_coef')}"
            )
        if self.penalty != "tanh" and self.tanh_scale != _default(self, "tanh_scale"):
            raise FieldError("tanh_scale", "`tanh_scale` only applies to `penalty: tanh`")
        return self

    @model_validator(mode="after")
    def _check_unread(self):
        """An option that nothing in this dictionary's training reads is an error when set
        away from its default, not silently ignored."""
        aux_k = (self.dead_features == "aux_k", "`dead_features: aux_k`")
        owned = {f: (f in self.family.options, _owners(f)) for f in _UNREAD}
        for field, (applies, where) in (
            owned
            | {
                "aux_k": aux_k,
                "aux_k_coef": aux_k,
                "lr_decay_start": (self.lr_decay != "none", "`lr_decay: linear` or `cosine`"),
                "l1_warmup_steps": (_positive(self.l1), "a positive `l1`"),
            }
        ).items():
            if not applies and getattr(self, field) != _default(self, field):
                raise FieldError(
                    field, f"`{field}` only applies to {where}: here it changes nothing"
                )
        return self


_UNREAD = [f for fam in FAMILIES.values() for f in fam.options if f not in _OWN_CHECKS]
"""The families' own options `_check_unread` checks (in the families' order)."""


def _owners(field: str) -> str:
    """The families whose option `field` is, e.g. "`activation: jumprelu`"."""
    return named_activations(lambda f: field in f.options)


def _default(model: Frozen, name: str):
    """The declared default of a field of `model`."""
    return type(model).model_fields[name].default


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

    LIMITS: ClassVar[Mapping[str, str]] = {
        "circuits": "is an SAE; circuit analysis traces through transcoders (kind: transcoder)",
        "joint_splice": "is an SAE: it is spliced at each layer alone",
    }
