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

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from tcspec.checksums import file_hashes
from tcspec.compute import resolve_precision
from tcspec.compute.throughput import Rates
from tcspec.models.hooks import full_name, hook_width
from tcspec.plan.configs import (
    ActsConfig,
    CircuitConfig,
    CLTMemberConfig,
    CoderRef,
    EvaluateConfig,
    ExportConfig,
    ImportedMemberConfig,
    InterpConfig,
    ModelConfig,
    PagesConfig,
    PassConfig,
    ProbeConfig,
    StudyConfig,
    TablesConfig,
    TokensConfig,
    TrainedMemberConfig,
)
from tcspec.plan.cost import model_size
from tcspec.plan.imports import import_clt, import_task, is_clt_folder
from tcspec.plan.resources import Sizer
from tcspec.plan.stages import EVAL_GROUP, GROUP, PASS_OF
from tcspec.plan.stream import split_passes, stream_shape, stream_source
from tcspec.plan.task import Plan, Task, make_task, safe_name, task_id  # noqa: F401
from tcspec.spec import SWEEP_FIELDS, DictionaryRef, InterpSpec, Spec
from tcspec.spec.checks import model_dims
from tcspec.spec.dictionaries import dictionary_hooks
from tcspec.vocab import CLT, d_sae_of

DEFAULT_STREAM_BUDGET_MB = 40_000
"""Per-job memory budget of a stream pass when the machine side gives none (a 40 GB GPU)."""


# ------------------------------------------------------------------------------ sweeps
def sweep_points(d) -> list[dict]:
    """The sweep points of a dictionary spec: list-valued fields crossed, `zip` fields paired."""
    axes = {f: getattr(d, f) for f in SWEEP_FIELDS if isinstance(getattr(d, f, None), list)}
    zipped = [f for f in d.zip if f in axes]
    crossed = [f for f in axes if f not in zipped]
    zip_rows = list(zip(*(axes[f] for f in zipped))) if zipped else [()]
    points = []
    for zrow in zip_rows:
        for crow in itertools.product(*(axes[f] for f in crossed)):
            points.append(dict(zip(zipped, zrow)) | dict(zip(crossed, crow)))
    return points


def member_name(point: dict) -> str:
    """Readable name of a sweep point: ``l1_0.0003-lr_0.0004``; ``single`` if none."""
    if not point:
        return "single"
    return "-".join(f"{k}_{v:g}" if isinstance(v, float) else f"{k}_{v}" for k, v in point.items())


def member_opts(spec: Spec, d, point: dict):
    """A dictionary's options at one sweep point: the point's values, its training seed
    resolved (the point's, else the dictionary's, else the spec's), its precision resolved
    (`auto`: the spec's device's, `tcspec.compute.resolve_precision`), no layers, no zip."""
    seed = point.get("seed", d.seed if d.seed is not None else spec.seed)
    precision = resolve_precision(d.precision, spec.device)
    update = {"seed": seed, "precision": precision, "layers": None, "zip": []}
    return d.model_copy(update=point | update)


# ------------------------------------------------------------------------------ compile
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
    plan.add(_tables_task(spec, built.evaluations + downstream))
    for key, t in plan.tasks.items():  # every estimate from one place, the configs known
        plan.tasks[key] = replace(t, resources=t.resources | plan.sizer.task_resources(plan, t))
    return plan


def _add_sources(plan: Plan, spec: Spec, dims: dict) -> _Built:
    """The model, its tokens (none for a synthetic source, which draws its samples itself)
    and what train tasks read."""
    model = plan.add(_model_task(spec))
    tokens = None if spec.model.kind == "synthetic" else plan.add(_tokens_task(spec, model))
    upstream = {}
    if spec.acts.source == "stream":
        upstream = _source_deps(model, tokens)
    elif _trained(spec):
        upstream = {"acts": ("acts", plan.add(_acts_task(spec, dims, model, tokens)).id)}
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
        found = _clt_tasks(spec, name, d, dims, b.upstream)
    tasks = [plan.add(t) for t in found]
    b.where |= {(name, layer): tasks for layer in layers}
    for t in tasks:
        b.evaluations.append(plan.add(_evaluate_task(spec, [t], b.model, b.tokens, whole=True)))
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
            group = [plan.add(t) for t in _train_tasks(spec, name, d, layer, dims, b.upstream)]
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
            plan.add(_features_task(spec, t, b.model, b.tokens, layer))
            for layer, t in _selected(spec, spec.interp.dictionaries, b.where)
        ]
        downstream.append(plan.add(_study_task(spec, features)))
    if spec.probe is not None:
        probed = _selected(spec, spec.probe.dictionaries, b.per_layer)
        downstream += [plan.add(_probe_task(spec, t, b.model, layer)) for layer, t in probed]
    for c in spec.circuits:
        selected = _select(spec, [c.dictionary], b.where)
        downstream.append(plan.add(_circuit_task(spec, c, selected, b.model, b.tokens)))
    for e in spec.export:  # its format's limits were checked with the spec
        plan.add(_export_task(spec, e, _select(spec, e.dictionaries, b.where), b.model))
    return downstream


def _add_evaluations(plan: Plan, coder_sets, spec, b: _Built, passes: dict, key, span=None) -> None:
    """One evaluate task per set of coders (one coder, or one per layer spliced at once),
    added to the evaluation pass `passes[key]`: every dictionary's sweep points spliced
    alone at one layer (key: the layer) share one pass's clean forward and that layer's
    ablated forwards; a dictionary's joint splices (key: its name) share another."""
    tasks = [plan.add(_evaluate_task(spec, s, b.model, b.tokens, span)) for s in coder_sets]
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


def coder_ref(task: Task, layer: int | None = None) -> CoderRef:
    """How a downstream config names a train or import task; `layer`: the layer of a CLT
    whose features it studies (default: the task's layer, a CLT's first)."""
    c, label = task.config, task.label
    return CoderRef(
        stage=task.stage, id=task.id, dictionary=label["dictionary"], member=label["member"],
        layer=c.layer if layer is None else layer, kind=c.kind,
    )  # fmt: skip


def _coder_deps(tasks: list[Task]) -> dict:
    return {f"coder_{j}": (t.stage, t.id) for j, t in enumerate(tasks)}


def gpus(spec: Spec) -> int:
    """GPUs a job that runs the model asks the cluster for: none for the toy pipeline or a
    synthetic source (sized for a CPU) or `device: cpu`, else one."""
    return 0 if spec.model.kind in ("toy", "synthetic") or spec.device == "cpu" else 1


def _source_deps(model: Task, tokens: Task | None) -> dict:
    """The deps of a task that reads the model and its tokens (a synthetic source: the
    model alone, which draws the samples)."""
    deps = {"model": ("model", model.id)}
    return deps | ({} if tokens is None else {"tokens": ("tokens", tokens.id)})


def _model_task(spec: Spec) -> Task:
    m = spec.model
    if m.kind == "toy":
        prefix, seed = f"toy-{m.recipe}", spec.seed
    elif m.kind == "synthetic":
        prefix, seed = f"synthetic-F{m.n_features}-d{m.d_model}", spec.seed
    elif m.kind == "pretrained":
        prefix, seed = m.name.replace("/", "_").replace(".", "_"), None
    else:
        prefix, seed = f"checkpoint-{Path(m.path).name}", None
    config = ModelConfig(model=m, seed=seed)
    return make_task("model", prefix, config, {}, {})


def _tokens_task(spec: Spec, model: Task) -> Task:
    # the BOS convention changes no token: leave it out of the tokens' id
    data = spec.data.model_copy(update={"bos": "exclude"})
    config = TokensConfig(data=data, seed=spec.seed)
    prefix = f"{spec.data.kind}-ctx{spec.data.context}"
    return make_task("tokens", prefix, config, {"model": ("model", model.id)}, {})


def _acts_task(spec: Spec, dims: dict, model: Task, tokens: Task | None) -> Task:
    hooks: dict[str, int] = {}
    for d in _trained(spec):
        in_hook, out_hook = dictionary_hooks(d)
        for layer in d.layers if d.layers is not None else spec.layers:
            for h in (in_hook, out_hook):
                hooks[full_name(layer, h)] = hook_width(h, dims)
    rows = spec.data.train_tokens if spec.model.kind == "synthetic" else None
    config = ActsConfig(
        acts=spec.acts, hooks=dict(sorted(hooks.items())), bos=spec.data.bos, rows=rows
    )
    deps = _source_deps(model, tokens)
    return make_task("acts", f"L{'-'.join(map(str, sorted(_layers(spec))))}", config, deps, {})


def _trained(spec: Spec) -> list:
    """Dictionaries tcspec trains (imported ones read no activation cache)."""
    return [d for d in spec.dictionaries.values() if d.kind != "pretrained"]


def _layers(spec: Spec) -> set[int]:
    out = set()
    for d in _trained(spec):
        out |= set(d.layers if d.layers is not None else spec.layers)
    return out


def _train_tasks(spec: Spec, name: str, d, layer: int, dims: dict, upstream: dict) -> list[Task]:
    """One train task per sweep point: the member's resolved options, shapes and hooks;
    ``upstream``: its deps (the cache, or the model and tokens a stream reads)."""
    in_hook, out_hook = dictionary_hooks(d)
    d_in, d_out = hook_width(in_hook, dims), hook_width(out_hook, dims)
    steps = d.train_steps(spec.data.train_tokens)
    tasks = []
    for point in sweep_points(d):
        opts = member_opts(spec, d, point).for_run(steps, d_in, d_out)
        d_sae = d_sae_of(d_in, opts.d_sae, opts.expansion)
        config = TrainedMemberConfig(
            opts=opts, layer=layer, d_in=d_in, d_out=d_out, d_sae=d_sae, steps=steps,
            in_key=full_name(layer, in_hook), out_key=full_name(layer, out_hook),
            data_seed=spec.seed, stream=stream_source(spec),
        )  # fmt: skip
        label = {"dictionary": name, "member": member_name(point), "point": point}
        prefix = f"{name}-L{layer}-{_content_name(opts, spec.seed)}"
        tasks.append(make_task("train", prefix, config, dict(upstream), {}, label))
    return tasks


def _clt_tasks(spec: Spec, name: str, d, dims: dict, upstream: dict) -> list[Task]:
    """One train task per sweep point of a CLT over all its layers (stage `clt`: one task,
    not a member of a training pass; trained by the one loop, `tcspec.training.train`)."""
    layers = tuple(d.layers if d.layers is not None else spec.layers)
    d_model = hook_width(d.in_hook, dims)
    steps = d.train_steps(spec.data.train_tokens)
    tasks = []
    for point in sweep_points(d):
        opts = member_opts(spec, d, point)
        d_sae = d_sae_of(d_model, opts.d_sae, opts.expansion)
        config = CLTMemberConfig(
            opts=opts, layers=layers, d_model=d_model, d_sae=d_sae, steps=steps,
            data_seed=spec.seed, stream=stream_source(spec),
        )  # fmt: skip
        label = {"dictionary": name, "member": member_name(point), "point": point}
        prefix = f"{name}-L{'-'.join(map(str, layers))}-{_content_name(opts, spec.seed)}"
        tasks.append(make_task(CLT, prefix, config, dict(upstream), {}, label))
    return tasks


def _content_name(opts, data_seed: int) -> str:
    """Readable part of a train id from what was trained (not from how the spec swept):
    the sparsity setting of its activation family (the spec's `sparsity_field`: k, l0_coef
    or l1), d_sae when given, and the training seed when it is not the data's (the
    spec's `seed`)."""
    point = {opts.sparsity_field: getattr(opts, opts.sparsity_field)}
    point |= {"d_sae": opts.d_sae} if opts.d_sae else {}
    return member_name(point | ({"seed": opts.seed} if opts.seed != data_seed else {}))


def _evaluate_task(
    spec: Spec,
    coders: list[Task],
    model: Task,
    tokens: Task | None,
    span: list[int] | None = None,
    whole: bool = False,
) -> Task:
    """Metrics of one sweep point spliced in at one layer (or several layers at once);
    ``span``: the layers of a joint evaluation over fewer than all of them, for its name;
    ``whole``: one dictionary spliced at all its layers at once (a CLT)."""
    refs = tuple(coder_ref(t) for t in coders)
    config = EvaluateConfig(
        coders=refs,
        point=coders[0].label["point"],
        eval_tokens=spec.evaluate.eval_tokens or spec.data.eval_tokens,
        batch_contexts=spec.evaluate.batch_contexts,
        bos=spec.data.bos,
    )
    deps = _source_deps(model, tokens) | _coder_deps(coders)
    prefix = f"{_spliced(refs, span, whole)}-{refs[0].member}"
    return make_task("evaluate", prefix, config, deps, {}, {"whole": whole})


def _spliced(refs: tuple[CoderRef, ...], span: list[int] | None, whole: bool) -> str:
    """Readable part of an evaluation's id: the dictionary and where it is spliced
    (``span``: a joint splice over fewer than all its layers; ``whole``: a CLT's)."""
    one = len(refs) == 1 and not whole
    layer = f"L{refs[0].layer}" if one else "all"
    if span is not None:
        layer = "L" + "-".join(map(str, span))
    return f"{refs[0].dictionary}-{layer}"


def _features_task(spec: Spec, coder: Task, model: Task, tokens: Task, layer: int) -> Task:
    """Feature statistics and dashboards of one trained dictionary (of a CLT: of the
    features of one of its layers, `layer`)."""
    config = InterpConfig(
        **spec.interp.model_dump(exclude={"dictionaries"}),
        coder=coder_ref(coder, layer),
        live_threshold=coder.config.live_threshold,
        eval_tokens=spec.data.eval_tokens,
        seed=spec.seed,
        bos=spec.data.bos,
    )
    deps = _source_deps(model, tokens)
    deps |= _coder_deps([coder])
    return make_task("interp", config.coder.label, config, deps, {})


def _probe_task(spec: Spec, coder: Task, model: Task, layer: int) -> Task:
    """Sparse probing of one per-layer dictionary (its texts: `probe.dataset`, else the toy
    corpus's families, which need no tokens task)."""
    p = spec.probe
    files = [Path(f) for f in (p.dataset.data_files or [])] if p.dataset else []
    config = ProbeConfig(
        coder=coder_ref(coder, layer), dataset=p.dataset,
        data_sha256={str(f): file_hashes(f).get(f.name, "") for f in files},
        k=tuple(p.k), train_per_class=p.train_per_class, test_per_class=p.test_per_class,
        classes=None if p.classes is None else tuple(p.classes), max_tokens=p.max_tokens,
        seed=spec.seed, bos=spec.data.bos,
    )  # fmt: skip
    deps = {"model": ("model", model.id)} | _coder_deps([coder])
    return make_task("probe", config.coder.label, config, deps, {})


def _study_task(spec: Spec, features: list[Task]) -> Task:
    """The blind rating study over every studied dictionary's features."""
    config = StudyConfig(features=spec.interp.features, seed=spec.seed)
    deps = {f"features_{i}": ("interp", t.id) for i, t in enumerate(features)}
    return make_task("study", f"study-{spec.experiment}", config, deps, {})


def _circuit_task(spec: Spec, c, selected: list[Task], model: Task, tokens: Task) -> Task:
    """A circuit study through one transcoder per layer (one sweep point)."""
    pages = None
    if c.task == "attribution":  # the prompts' text, not a file's name, is in the id
        c = c.model_copy(update={"prompts": c.prompt_list(), "prompts_file": None})
        interp = spec.interp or InterpSpec()
        pages = PagesConfig(
            examples=interp.examples, bands=interp.bands, context_window=interp.context_window,
            eval_tokens=spec.data.eval_tokens,
        )  # fmt: skip
    config = CircuitConfig(
        circuit=c, coders=tuple(coder_ref(t) for t in selected), seed=spec.seed,
        bos=spec.data.bos, pages=pages,
    )  # fmt: skip
    deps = _source_deps(model, tokens)
    deps |= _coder_deps(selected)
    return make_task("circuits", f"{c.task}-{c.dictionary.name}", config, deps, {})


def _export_task(spec: Spec, e, selected: list[Task], model: Task) -> Task:
    """Every selected dictionary written in one target format."""
    name = spec.model.name if spec.model.kind == "pretrained" else f"tcspec-{spec.model.kind}"
    config = ExportConfig(
        to=e.to,
        coders=tuple(coder_ref(t) for t in selected),
        model_name=name,
        context_size=spec.data.context,
        dataset=getattr(spec.data, "name", None) or spec.data.kind,
    )
    deps = {"model": ("model", model.id)} | _coder_deps(selected)
    return make_task("export", e.to, config, deps, {})


def _stages(spec: Spec) -> set[str]:
    """What the spec has that has tables of its own (`TablesSpec.names`)."""
    stages = {c.task for c in spec.circuits}
    optional = {"interp": spec.interp, "probe": spec.probe}
    stages |= {name for name, part in optional.items() if part is not None}
    return stages | ({"synthetic"} if spec.model.kind == "synthetic" else set())


def _tables_task(spec: Spec, upstream: list[Task]) -> Task:
    config = TablesConfig(
        experiment=spec.experiment,
        include=spec.tables.names(_stages(spec)),
        reference=spec.tables.reference,
    )
    deps = {f"{t.stage}_{i}": (t.stage, t.id) for i, t in enumerate(upstream)}
    return make_task("tables", spec.experiment, config, deps, {})


def pass_task(members: list[Task], plan: Plan) -> Task:
    """The pass that runs ``members`` (tasks of one group or eval group not done)."""
    build = {GROUP: group_task, EVAL_GROUP: evalgroup_task}[PASS_OF[members[0].stage]]
    return build(members, plan)


def group_task(members: list[Task], plan: Plan) -> Task:
    """One training pass for ``members`` (train tasks of one group that are not done): its
    id names exactly that set, so an interrupted pass resumes its checkpoint. Its resources
    are the pass's own estimate (``Sizer.train_pass_resources``)."""
    config = PassConfig(members=tuple(sorted(t.id for t in members)))
    deps = dict(members[0].deps)  # the cache, or the model and tokens, they all read
    first = members[0].label
    prefix = f"{first['dictionary']}-L{members[0].config.layer}-x{len(members)}"
    if members[0].config.stream is not None:
        prefix = f"stream-x{len(members)}"
    resources = plan.sizer.train_pass_resources([t.config for t in members])
    return Task(GROUP, task_id(prefix, config, deps), config, deps, resources)


def evalgroup_task(members: list[Task], plan: Plan) -> Task:
    """One evaluation pass for ``members`` (evaluate tasks of one eval group that are not
    done): the model and tokens once, then every member's dictionaries (its deps: the union
    of theirs, renamed per member)."""
    config = PassConfig(members=tuple(sorted(t.id for t in members)))
    deps = {k: v for k, v in members[0].deps.items() if k in ("model", "tokens")}
    for i, t in enumerate(members):
        deps |= {f"m{i}_{k}": v for k, v in t.deps.items() if k not in ("model", "tokens")}
    resources = plan.sizer.evaluate_pass_resources(plan, [t.config for t in members])
    first = members[0].config.coders
    mixed = len({t.config.coders[0].dictionary for t in members}) > 1  # a layer's pass
    spliced = _spliced(first, None, members[0].label["whole"])
    prefix = f"{f'L{first[0].layer}' if mixed else spliced}-x{len(members)}"
    return Task(EVAL_GROUP, task_id(prefix, config, deps), config, deps, resources)
