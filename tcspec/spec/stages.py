"""The spec's downstream stages: evaluation, interp, circuits, export, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    Field,
    ValidationInfo,
    model_validator,
)

from tcspec.spec.base import (
    SWEEP_FIELDS,
    FieldError,
    Fraction,
    Frozen,
    Name,
    NonNegInt,
    PosInt,
)
from tcspec.tables.paper import REFERENCES
from tcspec.tables.registry import DEFAULT_INCLUDE, TABLE_NAMES
from tcspec.vocab import YY_SLOT, ExportTarget


# ----------------------------------------------------------------------- downstream stages
class EvaluateSpec(Frozen):
    """Sparsity and fidelity metrics on the eval split."""

    eval_tokens: PosInt | None = None
    """Eval tokens to use; None uses all of `data.eval_tokens`."""
    batch_contexts: PosInt = 16
    """Contexts per forward pass."""
    splice_all_layers: bool = False
    """Also evaluate each sweep point with its transcoders spliced into all layers at once
    (every transcoder trained at more than one layer; SAEs are spliced one at a time)."""
    splice_layers: Annotated[list[NonNegInt], Field(min_length=2)] | None = None
    """The layers spliced at once when `splice_all_layers` is true, e.g. the paper's
    gpt2-small `[0, 1, ..., 10]` while its transcoders train 0-11; each such transcoder must
    have them all. None: every layer of the dictionary. A cross-layer transcoder is always
    spliced into all its layers."""

    @model_validator(mode="after")
    def _check(self):
        layers = self.splice_layers
        if layers is not None and not self.splice_all_layers:
            raise FieldError(
                "splice_layers",
                "`splice_layers` picks the layers of the joint evaluation: "
                "set `splice_all_layers: true` too",
            )
        if layers is not None and len(set(layers)) != len(layers):
            raise FieldError("splice_layers", f"layers repeat: {layers}")
        return self


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


class ProbeDataSpec(Frozen):
    """A labelled text dataset, read with `datasets.load_dataset(path, name=config,
    split=split, data_files=data_files)`: a hub name (e.g. `fancyzhx/ag_news`), or a builder
    (`json`, `csv`, `parquet`, `text`) with local `data_files`."""

    path: str
    """Dataset name on the hub, or a `datasets` builder for local files."""
    data_files: list[Path] | None = None
    """Local files for a builder; relative paths are relative to the spec file."""
    config: str | None = None
    """Dataset configuration name, if any."""
    split: str = "train"
    """Split to read."""
    text_column: str = "text"
    """Column holding each example's text."""
    label_column: str = "label"
    """Column holding each example's class (a string, or an integer / ClassLabel)."""

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo):
        base = (info.context or {}).get("base_dir")
        if base is not None and self.data_files:
            files = [f if f.is_absolute() else (Path(base) / f).resolve() for f in self.data_files]
            object.__setattr__(self, "data_files", files)
        return self


class ProbeSpec(Frozen):
    """Sparse probing (SAEBench's): for each class, a balanced one-vs-rest task on texts
    mean-pooled over their tokens; a logistic probe on the k dictionary latents whose mean
    activations differ most between the classes (on the training texts) against one on the
    raw activations of the dictionary's input hook (the reference)."""

    dictionaries: list[DictionaryRef] = []
    """Dictionaries to probe; empty probes every per-layer dictionary."""
    dataset: ProbeDataSpec | None = None
    """The labelled texts; None: the toy corpus's document families (held-out split; a toy
    model only): task documents of one family each, and pydoc text."""
    k: Annotated[list[PosInt], Field(min_length=1)] = [1, 2, 5, 10, 20]
    """Latents each sparse probe reads."""
    train_per_class: PosInt = 60
    """Training texts of each side of a one-vs-rest task."""
    test_per_class: PosInt = 40
    """Test texts of each side (the toy corpus's held-out split has ~100 pydoc texts)."""
    classes: list[str] | None = None
    """Classes probed (each against the rest); None: every class with enough texts."""
    max_tokens: PosInt = 128
    """Tokens of a text read (BOS included; at most the model's n_ctx); longer texts are cut."""


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
    batch_size: PosInt = 512
    """Targets per backward pass (circuit-tracer's default); with `max_feature_nodes` it also
    sets the ranking schedule."""
    update_interval: PosInt = 4
    """With `max_feature_nodes`: backward passes between two rankings of the features still
    to visit (circuit-tracer's default; its schedule, so a capped graph keeps the features
    circuit-tracer's would)."""
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

    to: ExportTarget
    """Target format; `circuit-tracer` writes one transcoder set (layers 0..n-1) per sweep
    point."""
    dictionaries: list[DictionaryRef] = []
    """Dictionaries to export; empty exports every trained dictionary."""


def stages_tables(stages: set[str]) -> set[str]:
    """The tables of the stages a spec has: `interp` -> interpretability, a circuit task ->
    its own table (greater_than, attribution), `probe` -> sparse_probing, a `synthetic`
    source -> ground_truth."""
    by_stage = {"interp": "interpretability", "greater_than": "greater_than",
                "attribution": "attribution", "probe": "sparse_probing",
                "synthetic": "ground_truth"}  # fmt: skip
    return {by_stage[s] for s in stages if s in by_stage}


class TablesSpec(Frozen):
    """Which tables and plots to generate."""

    include: list[Literal[TABLE_NAMES]] | None = None  # type: ignore[valid-type]
    """Tables to build (see tcspec/tables/registry.py); by default the sparsity and fidelity
    tables and those of the stages the spec has (interp, greater-than, attribution, probe,
    a synthetic source's ground truth)."""

    def names(self, stages: set[str]) -> tuple[str, ...]:
        """The tables to build of a spec with these stages (see `stages_tables`)."""
        if self.include is not None:
            return tuple(self.include)
        wanted = set(DEFAULT_INCLUDE) | stages_tables(stages)
        return tuple(n for n in TABLE_NAMES if n in wanted)

    reference: Literal[tuple(REFERENCES)] | None = None  # type: ignore[valid-type]
    """Published numbers to print beside ours (see tcspec/paper.py)."""
