"""The compiler: Spec -> Plan of content-addressed Tasks with typed configs.

All expansion happens here (sweeps, layers, which cache a dictionary reads), so Snakemake
rules stay generic. A task's id is a readable prefix plus a hash of its config's canonical
JSON and its upstream ids: change one sweep value and only the tasks downstream of that
point get new ids; two specs that need the same cache compute the same acts id.

    model --> tokens --> acts --> train (one task per sweep point x layer)
                              \\--> evaluate (one per sweep point x layer) --> tables

Each sweep point is its own train task; ``Plan.groups`` lists the members that share one
pass, which the workflow trains together: over the cache, the sweep points of a dictionary
at a layer; with ``acts: {source: stream}`` (no acts task; train tasks read the model and
tokens), every dictionary of the spec that reads the same batches (any layer, sweep point
or kind), split where the estimated memory of a pass exceeds a per-job budget, which the
machine side gives (``compile_plan(spec, stream_budget_mb)``; the workflow reads it from
Snakemake's config), never the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tcspec.compute.throughput import Rates
from tcspec.plan.builders import (
    acts_task,
    circuit_task,
    clt_tasks,
    evaluate_task,
    export_task,
    features_task,
    model_task,
    probe_task,
    source_deps,
    study_task,
    tables_task,
    tokens_task,
    train_tasks,
    trained,
)
from tcspec.plan.configs import ImportedMemberConfig
from tcspec.plan.cost import model_size
from tcspec.plan.imports import import_clt, import_task, is_clt_folder
from tcspec.plan.resources import Sizer
from tcspec.plan.stream import split_passes, stream_shape
from tcspec.plan.task import Plan, Task
from tcspec.spec import DictionaryRef, Spec
from tcspec.spec.dims import model_dims
from tcspec.vocab import CLT

DEFAULT_STREAM_BUDGET_MB = 40_000
"""Per-job memory budget of a stream pass when the machine side gives none (a 40 GB GPU)."""


@dataclass
class _Built:
    """What compiling the dictionaries leaves for the stages downstream of them."""

    model: Task
    tokens: Task | None
    upstream: dict
    """What train tasks read: the acts task, or (streaming) the model and tokens."""
    where: dict = field(default_factory=dict)
    """(name, layer) -> its train or import tasks; a CLT's at each layer it spans."""
    whole: set = field(default_factory=set)
    """Names of the dictionaries that are one object over all their layers (CLTs)."""
    evaluations: list = field(default_factory=list)

    @property
    def per_layer(self) -> dict:
        """`where` without the dictionaries over several layers."""
        return {k: ts for k, ts in self.where.items() if k[0] not in self.whole}


def compile_plan(
    spec: Spec, stream_budget_mb: int = DEFAULT_STREAM_BUDGET_MB, rates: Rates | None = None
) -> Plan:
    """The plan of ``spec``; ``stream_budget_mb`` and ``rates`` (the GPU class and its
    throughput, for the time estimates) are the machine side's, never the spec's, and
    change no id."""
    plan = Plan(spec)
    dims = model_dims(spec.model)
    stream = spec.acts.source == "stream"
    size = model_size(spec, dims)
    if stream:
        plan.stream_shape = stream_shape(spec, size)
    plan.sizer = Sizer(
        size=size, rates=rates or Rates(), gpu=gpus(spec),
        train_tokens=spec.data.train_tokens, stream_shape=plan.stream_shape,
        cache_bytes=2 if spec.acts.dtype != "float32" else 4,
    )  # fmt: skip
    built = _add_dictionaries(plan, spec, dims, _add_sources(plan, spec, dims))
    if stream:
        train = plan.stage("train")
        ids, configs = [t.id for t in train], [t.config for t in train]
        plan.groups += split_passes(ids, configs, plan.stream_shape, stream_budget_mb)
    downstream = _add_downstream(plan, spec, built)
    plan.add(tables_task(spec, built.evaluations + downstream))
    for key, t in plan.tasks.items():  # every estimate from one place, the configs known
        plan.tasks[key] = replace(t, resources=t.resources | plan.sizer.task_resources(plan, t))
    return plan


def _add_sources(plan: Plan, spec: Spec, dims: dict) -> _Built:
    """The model, its tokens (none for a synthetic source, which draws its samples itself)
    and what train tasks read."""
    model = plan.add(model_task(spec))
    tokens = None if spec.model.kind == "synthetic" else plan.add(tokens_task(spec, model))
    upstream = {}
    if spec.acts.source == "stream":
        upstream = source_deps(model, tokens)
    elif trained(spec):
        upstream = {"acts": ("acts", plan.add(acts_task(spec, dims, model, tokens)).id)}
    return _Built(model, tokens, upstream)


def _add_dictionaries(plan: Plan, spec: Spec, dims: dict, b: _Built) -> _Built:
    """Every dictionary's train or import tasks and their evaluations. A CLT (trained, or a
    circuit-tracer CLT folder imported) is one task over all its layers, evaluated alone;
    per-layer dictionaries are a task per layer and sweep point, evaluated in shared passes."""
    passes: dict = {}
    for name, d in spec.dictionaries.items():
        layers = d.layers if d.layers is not None else spec.layers
        if d.kind == CLT or is_clt_folder(d):  # the compiler's one question of shape
            b.whole.add(name)
            _add_whole(plan, spec, name, d, layers, dims, b)
        else:
            _add_per_layer(plan, spec, name, d, layers, dims, b, passes)
    plan.eval_groups += [tuple(sorted(ids)) for ids in passes.values()]
    return b


def _add_whole(plan: Plan, spec: Spec, name: str, d, layers, dims: dict, b: _Built) -> None:
    """A dictionary over all its layers: one task per sweep point, each evaluated alone."""
    if d.kind == "pretrained":
        found = [import_clt(name, d)]
    else:
        found = clt_tasks(spec, name, d, dims, b.upstream)
    tasks = [plan.add(t) for t in found]
    b.where |= {(name, layer): tasks for layer in layers}
    for t in tasks:
        b.evaluations.append(plan.add(evaluate_task(spec, [t], b.model, b.tokens, whole=True)))
        plan.eval_groups.append((b.evaluations[-1].id,))


def _add_per_layer(
    plan: Plan, spec: Spec, name: str, d, layers, dims: dict, b: _Built, passes: dict
) -> None:
    """A per-layer dictionary: its tasks at each layer, evaluated spliced alone there (each
    layer's pass) and, unless its kind cannot, spliced at all its layers at once."""
    for layer in layers:
        if d.kind == "pretrained":
            group = [plan.add(import_task(name, d, layer))]
        else:
            group = [plan.add(t) for t in train_tasks(spec, name, d, layer, dims, b.upstream)]
            if spec.acts.source != "stream":
                plan.groups.append(tuple(sorted(t.id for t in group)))
        b.where[(name, layer)] = group
        single = [[t] for t in group]
        _add_evaluations(plan, single, spec, b, passes, layer)
    if spec.evaluate.splice_all_layers and not d.cannot("joint_splice") and len(layers) > 1:
        joint = spliced_layers(spec, layers)
        span = joint if joint != list(layers) else None
        n = len(b.where[(name, layers[0])])
        sets = [[b.where[(name, layer)][i] for layer in joint] for i in range(n)]
        _add_evaluations(plan, sets, spec, b, passes, name, span)


def _add_downstream(plan: Plan, spec: Spec, b: _Built) -> list[Task]:
    """Feature studies (a CLT's features studied at each layer, on their own), probes
    (per-layer dictionaries), circuit studies and exports of the dictionaries."""
    downstream = []
    if spec.interp is not None:
        features = [
            plan.add(features_task(spec, t, b.model, b.tokens, layer))
            for layer, t in _selected(spec, spec.interp.dictionaries, b.where)
        ]
        downstream.append(plan.add(study_task(spec, features)))
    if spec.probe is not None:
        probed = _selected(spec, spec.probe.dictionaries, b.per_layer)
        downstream += [plan.add(probe_task(spec, t, b.model, layer)) for layer, t in probed]
    for c in spec.circuits:
        selected = _select(spec, [c.dictionary], b.where)
        downstream.append(plan.add(circuit_task(spec, c, selected, b.model, b.tokens)))
    for e in spec.export:  # its format's limits were checked with the spec
        plan.add(export_task(spec, e, _select(spec, e.dictionaries, b.where), b.model))
    return downstream


def _add_evaluations(plan: Plan, coder_sets, spec, b: _Built, passes: dict, key, span=None) -> None:
    """One evaluate task per set of coders (one coder, or one per layer spliced at once),
    added to the evaluation pass `passes[key]`: every dictionary's sweep points spliced
    alone at one layer (key: the layer) share one pass's clean forward and that layer's
    ablated forwards; a dictionary's joint splices (key: its name) share another."""
    tasks = [plan.add(evaluate_task(spec, s, b.model, b.tokens, span)) for s in coder_sets]
    b.evaluations += tasks
    passes.setdefault(key, []).extend(t.id for t in tasks)


def spliced_layers(spec: Spec, layers: list[int]) -> list[int]:
    """The layers of a dictionary (trained at ``layers``) that its joint evaluation
    splices at once: `evaluate.splice_layers` (in the dictionary's order), else all."""
    chosen = spec.evaluate.splice_layers
    return list(layers) if chosen is None else [layer for layer in layers if layer in chosen]


def _select(spec: Spec, refs, members: dict) -> list[Task]:
    """Train/import tasks a list of DictionaryRefs selects, each once (a CLT is listed at
    every layer it spans); empty selects all."""
    return list({t.id: t for _, t in _selected(spec, refs, members)}.values())


def _selected(spec: Spec, refs, members: dict) -> list[tuple[int, Task]]:
    """(layer, train/import task) of each member a list of DictionaryRefs selects; empty
    selects all. A CLT is listed at every layer it spans (`members` holds it so for interp,
    where each layer's features are studied on their own)."""
    refs = refs or [DictionaryRef(name=n) for n in spec.dictionaries]
    out = []
    for ref in refs:
        for (name, layer), group in members.items():
            if name != ref.name or (ref.layer is not None and layer != ref.layer):
                continue
            out += [(layer, t) for t in group if _matches(t.config, ref.where)]
    return out


def _matches(member, where: dict) -> bool:
    if isinstance(member, ImportedMemberConfig):
        return not where
    return all(float(getattr(member.opts, f)) == float(v) for f, v in where.items())


def gpus(spec: Spec) -> int:
    """GPUs a job that runs the model asks the cluster for: none for the toy pipeline or a
    synthetic source (sized for a CPU) or `device: cpu`, else one."""
    return 0 if spec.model.kind in ("toy", "synthetic") or spec.device == "cpu" else 1
