"""One task builder per stage: a stage's typed config, readable id prefix and deps from the
spec and the upstream tasks (`compile.py` calls them in the order of the DAG), and how a
downstream config names a dictionary's task (`coder_ref`)."""

from __future__ import annotations

from pathlib import Path

from tcspec.checksums import file_hashes
from tcspec.models.hooks import full_name, hook_width
from tcspec.plan.configs import (
    ActsConfig,
    CircuitConfig,
    CLTMemberConfig,
    CoderRef,
    EvaluateConfig,
    ExportConfig,
    InterpConfig,
    ModelConfig,
    PagesConfig,
    ProbeConfig,
    StudyConfig,
    TablesConfig,
    TokensConfig,
    TrainedMemberConfig,
)
from tcspec.plan.stream import stream_source
from tcspec.plan.sweeps import member_name, member_opts, sweep_points
from tcspec.plan.task import Task, make_task
from tcspec.spec import InterpSpec, Spec
from tcspec.spec.dictionaries import dictionary_hooks
from tcspec.vocab import CLT, d_sae_of


def coder_ref(task: Task, layer: int | None = None) -> CoderRef:
    """How a downstream config names a train or import task; `layer`: the layer of a CLT
    whose features it studies (default: the task's layer, a CLT's first)."""
    c, label = task.config, task.label
    return CoderRef(
        stage=task.stage, id=task.id, dictionary=label["dictionary"], member=label["member"],
        layer=c.layer if layer is None else layer, kind=c.kind,
    )  # fmt: skip


def coder_deps(tasks: list[Task]) -> dict:
    return {f"coder_{j}": (t.stage, t.id) for j, t in enumerate(tasks)}


def source_deps(model: Task, tokens: Task | None) -> dict:
    """The deps of a task that reads the model and its tokens (a synthetic source: the
    model alone, which draws the samples)."""
    deps = {"model": ("model", model.id)}
    return deps | ({} if tokens is None else {"tokens": ("tokens", tokens.id)})


def model_task(spec: Spec) -> Task:
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


def tokens_task(spec: Spec, model: Task) -> Task:
    # the BOS convention changes no token: leave it out of the tokens' id
    data = spec.data.model_copy(update={"bos": "exclude"})
    config = TokensConfig(data=data, seed=spec.seed)
    prefix = f"{spec.data.kind}-ctx{spec.data.context}"
    return make_task("tokens", prefix, config, {"model": ("model", model.id)}, {})


def acts_task(spec: Spec, dims: dict, model: Task, tokens: Task | None) -> Task:
    hooks: dict[str, int] = {}
    for d in trained(spec):
        in_hook, out_hook = dictionary_hooks(d)
        for layer in d.layers if d.layers is not None else spec.layers:
            for h in (in_hook, out_hook):
                hooks[full_name(layer, h)] = hook_width(h, dims)
    rows = spec.data.train_tokens if spec.model.kind == "synthetic" else None
    config = ActsConfig(
        acts=spec.acts, hooks=dict(sorted(hooks.items())), bos=spec.data.bos, rows=rows
    )
    deps = source_deps(model, tokens)
    return make_task("acts", f"L{'-'.join(map(str, sorted(_layers(spec))))}", config, deps, {})


def trained(spec: Spec) -> list:
    """Dictionaries tcspec trains (imported ones read no activation cache)."""
    return [d for d in spec.dictionaries.values() if d.kind != "pretrained"]


def _layers(spec: Spec) -> set[int]:
    out = set()
    for d in trained(spec):
        out |= set(d.layers if d.layers is not None else spec.layers)
    return out


def train_tasks(spec: Spec, name: str, d, layer: int, dims: dict, upstream: dict) -> list[Task]:
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


def clt_tasks(spec: Spec, name: str, d, dims: dict, upstream: dict) -> list[Task]:
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


def evaluate_task(
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
    deps = source_deps(model, tokens) | coder_deps(coders)
    prefix = f"{spliced_name(refs, span, whole)}-{refs[0].member}"
    return make_task("evaluate", prefix, config, deps, {}, {"whole": whole})


def spliced_name(refs: tuple[CoderRef, ...], span: list[int] | None, whole: bool) -> str:
    """Readable part of an evaluation's id: the dictionary and where it is spliced
    (``span``: a joint splice over fewer than all its layers; ``whole``: a CLT's)."""
    one = len(refs) == 1 and not whole
    layer = f"L{refs[0].layer}" if one else "all"
    if span is not None:
        layer = "L" + "-".join(map(str, span))
    return f"{refs[0].dictionary}-{layer}"


def features_task(spec: Spec, coder: Task, model: Task, tokens: Task, layer: int) -> Task:
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
    deps = source_deps(model, tokens)
    deps |= coder_deps([coder])
    return make_task("interp", config.coder.label, config, deps, {})


def probe_task(spec: Spec, coder: Task, model: Task, layer: int) -> Task:
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
    deps = {"model": ("model", model.id)} | coder_deps([coder])
    return make_task("probe", config.coder.label, config, deps, {})


def study_task(spec: Spec, features: list[Task]) -> Task:
    """The blind rating study over every studied dictionary's features."""
    config = StudyConfig(features=spec.interp.features, seed=spec.seed)
    deps = {f"features_{i}": ("interp", t.id) for i, t in enumerate(features)}
    return make_task("study", f"study-{spec.experiment}", config, deps, {})


def circuit_task(spec: Spec, c, selected: list[Task], model: Task, tokens: Task) -> Task:
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
    deps = source_deps(model, tokens)
    deps |= coder_deps(selected)
    return make_task("circuits", f"{c.task}-{c.dictionary.name}", config, deps, {})


def export_task(spec: Spec, e, selected: list[Task], model: Task) -> Task:
    """Every selected dictionary written in one target format."""
    name = spec.model.name if spec.model.kind == "pretrained" else f"tcspec-{spec.model.kind}"
    config = ExportConfig(
        to=e.to,
        coders=tuple(coder_ref(t) for t in selected),
        model_name=name,
        context_size=spec.data.context,
        dataset=getattr(spec.data, "name", None) or spec.data.kind,
    )
    deps = {"model": ("model", model.id)} | coder_deps(selected)
    return make_task("export", e.to, config, deps, {})


def _stages(spec: Spec) -> set[str]:
    """What the spec has that has tables of its own (`TablesSpec.names`)."""
    stages = {c.task for c in spec.circuits}
    optional = {"interp": spec.interp, "probe": spec.probe}
    stages |= {name for name, part in optional.items() if part is not None}
    return stages | ({"synthetic"} if spec.model.kind == "synthetic" else set())


def tables_task(spec: Spec, upstream: list[Task]) -> Task:
    config = TablesConfig(
        experiment=spec.experiment,
        include=spec.tables.names(_stages(spec)),
        reference=spec.tables.reference,
    )
    deps = {f"{t.stage}_{i}": (t.stage, t.id) for i, t in enumerate(upstream)}
    return make_task("tables", spec.experiment, config, deps, {})
