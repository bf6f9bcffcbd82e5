"""One frozen, typed config per stage: the only schema of what a task is given.

The compiler (``tcspec.plan``) builds them from a Spec; a task's id hashes ``canonical``
(sorted-key JSON) of its config and its upstream ids; the workflow stores each config under
its id and a job reads it back (its stage's config type, ``tcspec.plan.stages``). Tasks read
attributes, never string keys.

    model -> tokens -> acts -> train (one member = one sweep point at one layer)
                   import (a released dictionary) -/-> evaluate, interp -> study, circuits,
                                                      export -> tables
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from tcspec.spec import (
    ActsSpec,
    CircuitEntry,
    CLTSpec,
    DataSpec,
    Frozen,
    ModelSpec,
    ProbeDataSpec,
    SAESpec,
    SkipTranscoderSpec,
    TranscoderSpec,
)
from tcspec.vocab import CLT, LIVE_THRESHOLD, Bos, ExportTarget

TrainedSpec = Annotated[
    Union[TranscoderSpec, SkipTranscoderSpec, SAESpec], Field(discriminator="kind")
]
"""A trainable dictionary's spec with every sweep field a scalar (one sweep point)."""


class StageConfig(Frozen):
    def canonical(self) -> str:
        """Sorted-key JSON: what a task id hashes and what the config store holds."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class ModelConfig(StageConfig):
    model: ModelSpec
    seed: int | None = None
    """Training seed of a toy model; None for a loaded one."""


class TokensConfig(StageConfig):
    data: DataSpec
    seed: int


class ActsConfig(StageConfig):
    acts: ActsSpec
    hooks: dict[str, int]
    """Full hook name -> width, sorted."""
    bos: Bos = "exclude"
    """The spec's BOS convention: `exclude` caches no BOS position (`tcspec.data.positions`)."""
    rows: int | None = None
    """Rows a synthetic source draws (`data.train_tokens`); None: the tokens' train split."""

    def canonical(self) -> str:
        """As for every stage, less the fields that do not change a cache (its id is the
        one it had before a spec could choose ``source``) and ``rows`` when unset (a cache
        of a model keeps the id it had before synthetic sources)."""
        dump = self.model_dump(mode="json")
        for f in NOT_CACHE_FIELDS:
            dump["acts"].pop(f)
        if dump["rows"] is None:
            del dump["rows"]
        return json.dumps(dump, sort_keys=True)


NOT_CACHE_FIELDS = ("source", "buffer_tokens")
"""ActsSpec fields that only a stream reads."""


class StreamSource(Frozen):
    """How a stream pass computes its batches (a member's weights depend on it)."""

    buffer_tokens: int
    """Rows per hook of the shuffle buffer."""
    batch_contexts: int
    """Contexts per model forward."""
    bos: Bos = "exclude"
    """The spec's BOS convention: `exclude` streams no BOS position, as the cache does."""


LATER_OPTS = {
    "ghost_residual": "output",
    "jumprelu_threshold_lr": None,
    "penalty": "step",
    "tanh_scale": 4.0,
    "pre_act_coef": None,
    "precision": "fp32",
    "encoder_init": "kaiming",
}
"""Per-layer dictionary options added after train ids were fixed (-> their default): in a
train id only away from the default, so a member that does not use them keeps its id (a
member trained in fp32, all that trained before `precision` existed, keeps its id)."""

CLT_LATER_OPTS: dict[str, object] = {"precision": "fp32"}
"""The same for a cross-layer transcoder's options (whose `penalty`, `tanh_scale` and
`pre_act_coef` were there from the start, so stay in its ids)."""


def _with_later(data, later: dict[str, object]):
    """A member config's input with the options of `later` its opts leave out at their
    value in `later` (the inverse of `_canonical_member`'s omission: the canonical JSON, or a
    config stored before the option existed, reads back as the config it was)."""
    if isinstance(data, dict) and isinstance(data.get("opts"), dict):
        return data | {"opts": later | data["opts"]}
    return data


def _canonical_member(config: StageConfig, later: dict[str, object]) -> str:
    """A trained member's canonical JSON: ``stream`` only when set (a cache member keeps
    its id), the options of `later` only away from their defaults."""
    dump = config.model_dump(mode="json")
    if dump["stream"] is None:
        del dump["stream"]
    for field, default in later.items():
        if field in dump["opts"] and dump["opts"][field] == default:
            del dump["opts"][field]
    return json.dumps(dump, sort_keys=True)


class TrainedMemberConfig(StageConfig):
    """One trained dictionary: one sweep point of one spec dictionary at one layer. Only
    what fixes the weights: no names or sweep labels of the spec it came from, so specs
    that sweep differently share the points they have in common."""

    opts: TrainedSpec
    layer: int
    d_in: int
    d_out: int
    d_sae: int
    in_key: str
    out_key: str
    steps: int
    data_seed: int
    """Seed of the shuffled cache reader (the batches every member of a pass sees)."""
    stream: StreamSource | None = None
    """Set when the member trains from a stream (``acts: {source: stream}``), not a cache."""

    @model_validator(mode="before")
    @classmethod
    def _later_options(cls, data):
        return _with_later(data, LATER_OPTS)

    def canonical(self) -> str:
        return _canonical_member(self, LATER_OPTS)

    def coder(self):
        """The dictionary's shape and hooks (``tcspec.dictionaries.coders.CoderConfig``)."""
        from tcspec.dictionaries.coders import CoderConfig

        return CoderConfig(
            kind=self.kind, d_in=self.d_in, d_out=self.d_out, d_sae=self.d_sae,
            activation=self.opts.activation, k=self.opts.k, in_hook=self.in_key,
            out_hook=self.out_key, layer=self.layer,
        )  # fmt: skip

    @property
    def kind(self) -> str:
        return self.opts.kind

    @property
    def live_threshold(self) -> float:
        return self.opts.live_threshold

    def cost_shape(self, d_model: int) -> tuple[int, int, int]:
        """(d_in, d_out, d_sae) its encode and decode cost as: its own."""
        return self.d_in, self.d_out, self.d_sae


class ImportedMemberConfig(StageConfig):
    """A released dictionary at one layer, imported into tcspec's format."""

    layer: int
    path: str
    """Absolute path (or a path inside `repo`'s snapshot)."""
    repo: str | None
    format: str
    in_hook: str | None
    out_hook: str | None
    trust_pickle: bool
    files: dict[str, str]
    """Relative file name -> sha256 of its bytes (empty for a hub import)."""
    live_threshold: float = LIVE_THRESHOLD
    """An import has no training options; interp needs its live threshold (the default)."""
    kind: Literal["pretrained", CLT] = "pretrained"
    """`clt`: a circuit-tracer cross-layer transcoder folder (all its layers in one task)."""

    @property
    def in_key(self) -> str | None:
        return self.in_hook

    @property
    def out_key(self) -> str | None:
        return self.out_hook

    def cost_shape(self, d_model: int) -> tuple[int, int, int]:
        """(d_in, d_out, d_sae) its encode and decode cost as (its files are not read when
        the plan is compiled): ``cost.imported_coder_shape``."""
        from tcspec.plan.cost import imported_coder_shape

        return imported_coder_shape(d_model)


class CLTMemberConfig(StageConfig):
    """One cross-layer transcoder: one sweep point of a `kind: clt` dictionary over all its
    layers (only what fixes the weights, like `TrainedMemberConfig`)."""

    opts: CLTSpec
    layers: tuple[int, ...]
    """Model blocks it spans, increasing."""
    d_model: int
    d_sae: int
    """Features per layer."""
    steps: int
    data_seed: int
    """Seed of the shuffled cache reader (or of the stream's shuffle buffer)."""
    kind: Literal[CLT] = CLT
    stream: StreamSource | None = None
    """Set when it trains from a stream (``acts: {source: stream}``), not a cache."""

    @model_validator(mode="before")
    @classmethod
    def _later_options(cls, data):
        return _with_later(data, CLT_LATER_OPTS)

    def canonical(self) -> str:
        return _canonical_member(self, CLT_LATER_OPTS)

    def shape(self):
        """Its shape and hooks (``tcspec.dictionaries.clt.CLTConfig``)."""
        from tcspec.dictionaries.clt import CLTConfig

        o = self.opts
        return CLTConfig(
            n_layers=len(self.layers), d_model=self.d_model, d_sae=self.d_sae,
            activation=o.activation, k=o.k, in_hook=o.in_hook, out_hook=o.out_hook, skip=o.skip,
            layers=self.layers,
        )  # fmt: skip

    @property
    def layer(self) -> int:
        """The first layer (what a CoderRef names it by)."""
        return self.layers[0]

    def cost_shape(self, d_model: int) -> tuple[int, int, int]:
        """(d_in, d_out, d_sae) its encode and decode cost as: ``cost.clt_coder_shape``."""
        from tcspec.plan.cost import clt_coder_shape

        return clt_coder_shape(len(self.layers), self.d_model, self.d_sae)

    @property
    def live_threshold(self) -> float:
        return self.opts.live_threshold


class PassConfig(StageConfig):
    """The tasks one job runs together: train tasks trained in one pass over one cache or
    stream (same steps, batch, seed), or evaluate tasks sharing one pass over the eval
    tokens (one clean and one ablated forward per hook for all of them)."""

    members: tuple[str, ...]
    """Member task ids, sorted."""


IMPORTED_MEMBER = "pretrained"
"""The member name (sweep label) of an imported dictionary."""


class CoderRef(StageConfig):
    """A dictionary a downstream task reads: its train or import task and how the spec
    labels it (dictionary name, sweep point)."""

    stage: Literal["train", "import", "clt"]
    id: str
    dictionary: str
    member: str
    layer: int
    kind: str

    @property
    def label(self) -> str:
        """Display name: ``tc-L1-l1_0.001``."""
        return f"{self.dictionary}-L{self.layer}-{self.member}"


class EvaluateConfig(StageConfig):
    coders: tuple[CoderRef, ...]
    """One per layer; several are spliced in at once."""
    point: dict[str, float | int]
    eval_tokens: int
    batch_contexts: int
    bos: Bos = "exclude"
    """The spec's BOS convention (`data.bos`)."""


class InterpConfig(StageConfig):
    """Feature statistics, study sampling and dashboards of one dictionary."""

    coder: CoderRef
    live_threshold: float
    features: int
    dashboard_features: int
    examples: int
    bands: int
    context_window: int
    min_examples: int
    eval_tokens: int
    seed: int
    bos: Bos = "exclude"
    """The spec's BOS convention: `exclude` counts no BOS position in any statistic."""


class ProbeConfig(StageConfig):
    """Sparse probing of one dictionary's latents against its input hook's activations."""

    coder: CoderRef
    dataset: ProbeDataSpec | None
    """None: the toy corpus's document families."""
    data_sha256: dict[str, str] = {}
    """sha256 of each local data file, by path (a changed file changes the id)."""
    k: tuple[int, ...]
    train_per_class: int
    test_per_class: int
    classes: tuple[str, ...] | None
    max_tokens: int
    seed: int
    bos: Bos = "exclude"


class StudyConfig(StageConfig):
    features: int
    seed: int


class PagesConfig(Frozen):
    """The feature pages an attribution task writes of every feature its pruned graphs keep
    (the spec's `interp` settings, or their defaults)."""

    examples: int
    bands: int
    context_window: int
    eval_tokens: int


class CircuitConfig(StageConfig):
    circuit: CircuitEntry
    """The spec's entry; an attribution entry's prompts are resolved (read from its file)."""
    coders: tuple[CoderRef, ...]
    seed: int
    bos: Bos = "exclude"
    """The spec's BOS convention (`data.bos`): `exclude` ignores BOS-source heads."""
    pages: PagesConfig | None = None
    """An attribution task's feature pages; None for the other circuit tasks."""


class ExportConfig(StageConfig):
    to: ExportTarget
    coders: tuple[CoderRef, ...]
    model_name: str
    context_size: int
    dataset: str


class TablesConfig(StageConfig):
    experiment: str
    include: tuple[str, ...]
    reference: str | None
