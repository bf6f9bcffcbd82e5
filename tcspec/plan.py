"""The compiler: Spec -> Plan of content-addressed Tasks.

All expansion happens here (sweeps, layers, which cache a dictionary reads), so Snakemake
rules stay thin. A task's id is a readable prefix plus a hash of its resolved config and
its upstream ids: change one sweep value and only the tasks downstream of it get new ids;
two specs that need the same cache compute the same acts id and share it.

    model --> tokens --> acts --> train (one per dictionary x layer; a whole sweep in one pass)
                              \\--> evaluate (one per sweep point x layer) --> tables
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from tcspec import paths
from tcspec.checks import dictionary_hooks, model_dims
from tcspec.hooks import full_name, hook_width
from tcspec.spec import SWEEP_FIELDS, Spec

# fields of the spec that describe the machine, not the science: never part of an id
MACHINE_FIELDS = ("device",)


@dataclass(frozen=True)
class Task:
    stage: str
    id: str
    config: dict
    """Everything the task function needs, resolved and JSON-serialisable."""
    deps: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Named inputs: name -> (stage, task id)."""
    resources: dict = field(default_factory=dict)
    """Estimates for the scheduler: mem_mb, disk_mb, runtime (min), gpu, flops, params."""

    def dir(self, results: Path) -> Path:
        return paths.task_dir(results, self.stage, self.id)

    def done(self, results: Path) -> Path:
        return paths.done_file(results, self.stage, self.id)


@dataclass
class Plan:
    spec: Spec
    tasks: dict[tuple[str, str], Task] = field(default_factory=dict)

    def add(self, task: Task) -> Task:
        self.tasks.setdefault((task.stage, task.id), task)
        return task

    def get(self, stage: str, task_id: str) -> Task:
        try:
            return self.tasks[(stage, task_id)]
        except KeyError:
            raise KeyError(
                f"no {stage} task `{task_id}` in the plan of `{self.spec.experiment}`"
            ) from None

    def stage(self, stage: str) -> list[Task]:
        return [t for (s, _), t in self.tasks.items() if s == stage]

    def inputs(self, task: Task, results: Path) -> dict[str, str]:
        """Named input files (upstream done markers) of a task."""
        return {name: str(paths.done_file(results, s, i)) for name, (s, i) in task.deps.items()}


def task_id(prefix: str, config: dict, deps: dict) -> str:
    blob = json.dumps({"config": config, "deps": deps}, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _make(stage: str, prefix: str, config: dict, deps: dict, resources: dict) -> Task:
    return Task(stage, task_id(prefix, config, deps), config, deps, resources)


# ------------------------------------------------------------------------------ sweeps
def sweep_points(d) -> list[dict]:
    """The sweep points of a dictionary spec: list-valued fields crossed, `zip` fields paired."""
    axes = {f: getattr(d, f) for f in SWEEP_FIELDS if isinstance(getattr(d, f), list)}
    zipped = [f for f in d.zip if f in axes]
    crossed = [f for f in axes if f not in zipped]
    zip_rows = list(zip(*(axes[f] for f in zipped))) if zipped else [()]
    points = []
    for zrow in zip_rows:
        for crow in itertools.product(*(axes[f] for f in crossed)):
            points.append(dict(zip(zipped, zrow)) | dict(zip(crossed, crow)))
    return points


def member_name(point: dict) -> str:
    """Readable folder name of a sweep point: ``l1_0.0003-lr_0.0004``; ``single`` if none."""
    if not point:
        return "single"
    return "-".join(f"{k}_{v:g}" if isinstance(v, float) else f"{k}_{v}" for k, v in point.items())


# ------------------------------------------------------------------------------ compile
def compile_plan(spec: Spec) -> Plan:
    plan = Plan(spec)
    dims = model_dims(spec.model)
    model = plan.add(_model_task(spec, dims))
    tokens = plan.add(_tokens_task(spec, model))
    acts = plan.add(_acts_task(spec, dims, model, tokens)) if _trained(spec) else None
    evaluations, trains = [], {}
    for name, d in spec.dictionaries.items():
        layers = d.layers if d.layers is not None else spec.layers
        groups = {}
        for layer in layers:
            if d.kind == "pretrained":
                train = plan.add(_import_task(spec, name, d, layer))
            else:
                train = plan.add(_train_task(spec, name, d, layer, dims, acts))
            groups[layer] = trains[(name, layer)] = train
            for member in train.config["members"]:
                evaluations.append(plan.add(_evaluate_task(spec, train, member, model, tokens)))
        if spec.evaluate.splice_all_layers and d.kind != "sae" and len(layers) > 1:
            for m in groups[layers[0]].config["members"]:
                evaluations.append(
                    plan.add(_splice_task(spec, name, m["name"], groups, model, tokens))
                )
    downstream = []
    if spec.interp is not None:
        features = [
            plan.add(_features_task(spec, train, member, model, tokens))
            for train, member in _select(spec, spec.interp.dictionaries, trains)
        ]
        downstream.append(plan.add(_study_task(spec, features)))
    for i, c in enumerate(spec.circuits):
        selected = _select(spec, [c.dictionary], trains)
        downstream.append(plan.add(_circuit_task(spec, i, c, selected, model, tokens)))
    for e in spec.export:
        plan.add(_export_task(spec, e, _select(spec, e.dictionaries, trains), model))
    plan.add(_tables_task(spec, evaluations + downstream))
    return plan


def _select(spec: Spec, refs, trains: dict) -> list[tuple[Task, dict]]:
    """(train task, member) pairs a list of DictionaryRefs selects; empty selects all."""
    if not refs:
        from tcspec.spec import DictionaryRef

        refs = [DictionaryRef(name=n) for n in spec.dictionaries]
    out = []
    for ref in refs:
        for (name, layer), train in trains.items():
            if name != ref.name or (ref.layer is not None and layer != ref.layer):
                continue
            for m in train.config["members"]:
                if all(float(m["opts"][f]) == float(v) for f, v in ref.where.items()):
                    out.append((train, m))
    return out


def _model_task(spec: Spec, dims: dict) -> Task:
    m = spec.model
    config = m.model_dump(mode="json")
    if m.kind == "toy":
        config["seed"] = spec.seed
        prefix = f"toy-{m.recipe}"
    elif m.kind == "pretrained":
        prefix = m.name.replace("/", "_").replace(".", "_")
    else:
        prefix = f"checkpoint-{Path(m.path).name}"
    return _make("model", _safe(prefix), config, {}, {"mem_mb": _model_mem_mb(dims), "gpu": 0})


def _tokens_task(spec: Spec, model: Task) -> Task:
    data = spec.data
    config = data.model_dump(mode="json") | {"seed": spec.seed}
    prefix = f"{data.kind}-ctx{data.context}"
    return _make("tokens", prefix, config, {"model": ("model", model.id)}, {"mem_mb": 2000})


def _acts_task(spec: Spec, dims: dict, model: Task, tokens: Task) -> Task:
    hooks: dict[str, int] = {}
    for d in _trained(spec):
        in_hook, out_hook = dictionary_hooks(d)
        for layer in d.layers if d.layers is not None else spec.layers:
            for h in (in_hook, out_hook):
                hooks[full_name(layer, h)] = hook_width(h, dims)
    hooks = dict(sorted(hooks.items()))
    config = spec.acts.model_dump(mode="json") | {"hooks": hooks, "drop_bos": True}
    rows = spec.data.train_tokens
    bytes_per = 2 if spec.acts.dtype != "float32" else 4
    disk_mb = rows * sum(hooks.values()) * bytes_per / 2**20
    deps = {"model": ("model", model.id), "tokens": ("tokens", tokens.id)}
    resources = {"disk_mb": int(disk_mb) + 1, "mem_mb": _model_mem_mb(dims) + 1000, "gpu": 0}
    return _make("acts", f"L{'-'.join(map(str, sorted(_layers(spec))))}", config, deps, resources)


def _trained(spec: Spec) -> list:
    """Dictionaries tcspec trains (imported ones read no activation cache)."""
    return [d for d in spec.dictionaries.values() if d.kind != "pretrained"]


def _layers(spec: Spec) -> set[int]:
    out = set()
    for d in _trained(spec):
        out |= set(d.layers if d.layers is not None else spec.layers)
    return out


def _train_task(spec: Spec, name: str, d, layer: int, dims: dict, acts: Task) -> Task:
    in_hook, out_hook = dictionary_hooks(d)
    d_in, d_out = hook_width(in_hook, dims), hook_width(out_hook, dims)
    tokens = d.train_tokens or spec.data.train_tokens
    steps = tokens // d.batch_size
    members, flops, params = [], 0, 0
    for point in sweep_points(d):
        opts = d.model_dump(mode="json", exclude={"layers", "zip"}) | point
        d_sae = opts["d_sae"] if opts["d_sae"] is not None else opts["expansion"] * d_in
        opts["seed"] = d.seed if d.seed is not None else spec.seed
        n_params = d_sae * (d_in + d_out) + d_sae + d_in + d_out
        n_params += d_in * d_out if d.kind == "skip_transcoder" else 0
        params += n_params
        flops += 6 * steps * d.batch_size * d_sae * (d_in + d_out)
        members.append(
            dict(
                name=member_name(point),
                point=point,
                opts=opts,
                layer=layer,
                d_in=d_in,
                d_out=d_out,
                d_sae=d_sae,
                in_key=full_name(layer, in_hook),
                out_key=full_name(layer, out_hook),
            )
        )
    config = dict(dictionary=name, kind=d.kind, layer=layer, steps=steps, members=members)
    # weights + Adam moments + grads, fp32, plus a few batches
    mem_mb = params * 4 * 4 / 2**20 + 4 * d.batch_size * (d_in + d_out) * 4 / 2**20 + 1500
    gpu = 0 if spec.model.kind == "toy" else 1  # the toy pipeline is sized for a CPU
    resources = {"mem_mb": int(mem_mb), "flops": flops, "params": params, "gpu": gpu}
    return _make("train", f"{name}-L{layer}", config, {"acts": ("acts", acts.id)}, resources)


def _import_task(spec: Spec, name: str, d, layer: int) -> Task:
    """Import a released dictionary into tcspec's format: a train task without training."""
    path = d.path.replace("{layer}", str(layer))
    member = dict(name="pretrained", point={}, opts={}, layer=layer, d_sae=None)
    config = dict(
        dictionary=name,
        kind="pretrained",
        layer=layer,
        path=path,
        repo=d.repo,
        format=d.format,
        in_hook=full_name(layer, d.in_hook) if d.in_hook else None,
        out_hook=full_name(layer, d.out_hook) if d.out_hook else None,
        trust_pickle=d.trust_pickle,
        members=[member],
    )
    return _make("train", _safe(f"{name}-L{layer}-import"), config, {}, {"mem_mb": 4000, "gpu": 0})


def _evaluate_task(spec: Spec, train: Task, member: dict, model: Task, tokens: Task) -> Task:
    ev = spec.evaluate
    config = dict(
        dictionary=train.config["dictionary"],
        kind=train.config["kind"],
        member=member["name"],
        point=member["point"],
        layers=[member["layer"]],
        eval_tokens=ev.eval_tokens or spec.data.eval_tokens,
        batch_contexts=ev.batch_contexts,
    )
    deps = {
        "model": ("model", model.id),
        "tokens": ("tokens", tokens.id),
        "train": ("train", train.id),
    }
    prefix = f"{train.config['dictionary']}-L{member['layer']}-{member['name']}"
    return _make("evaluate", _safe(prefix), config, deps, {"mem_mb": 3000, "gpu": 0})


def _splice_task(
    spec: Spec, name: str, member: str, groups: dict, model: Task, tokens: Task
) -> Task:
    first = groups[next(iter(groups))]
    point = next(m["point"] for m in first.config["members"] if m["name"] == member)
    ev = spec.evaluate
    config = dict(
        dictionary=name,
        kind=first.config["kind"],
        member=member,
        point=point,
        layers=sorted(groups),
        eval_tokens=ev.eval_tokens or spec.data.eval_tokens,
        batch_contexts=ev.batch_contexts,
    )
    deps = {"model": ("model", model.id), "tokens": ("tokens", tokens.id)}
    deps |= {f"train_L{layer}": ("train", t.id) for layer, t in groups.items()}
    return _make(
        "evaluate", _safe(f"{name}-all-{member}"), config, deps, {"mem_mb": 3000, "gpu": 0}
    )


def _features_task(spec: Spec, train: Task, member: dict, model: Task, tokens: Task) -> Task:
    """Feature statistics and dashboards of one trained dictionary."""
    config = spec.interp.model_dump(mode="json", exclude={"dictionaries"}) | dict(
        step="features",
        seed=spec.seed,
        dictionary=train.config["dictionary"],
        kind=train.config["kind"],
        member=member["name"],
        layer=member["layer"],
        eval_tokens=spec.data.eval_tokens,
    )
    deps = {
        "model": ("model", model.id),
        "tokens": ("tokens", tokens.id),
        "train": ("train", train.id),
    }
    prefix = f"{train.config['dictionary']}-L{member['layer']}-{member['name']}"
    return _make("interp", _safe(prefix), config, deps, {"mem_mb": 3000, "gpu": 0})


def _study_task(spec: Spec, features: list[Task]) -> Task:
    """The blind rating study over every studied dictionary's features."""
    config = dict(step="study", features=spec.interp.features, seed=spec.seed)
    deps = {f"features_{i}": ("interp", t.id) for i, t in enumerate(features)}
    return _make("interp", f"study-{spec.experiment}", config, deps, {"mem_mb": 1000, "gpu": 0})


def _circuit_task(spec: Spec, i: int, c, selected, model: Task, tokens: Task) -> Task:
    """A circuit study through one transcoder per layer (one sweep point)."""
    config = c.model_dump(mode="json") | dict(
        seed=spec.seed,
        coders=[
            dict(train=t.id, member=m["name"], layer=m["layer"], kind=t.config["kind"])
            for t, m in selected
        ],
    )
    deps = {"model": ("model", model.id), "tokens": ("tokens", tokens.id)}
    deps |= {f"train_{j}": ("train", t.id) for j, (t, _) in enumerate(selected)}
    prefix = f"{c.task}-{c.dictionary.name}"
    return _make("circuits", _safe(prefix), config, deps, {"mem_mb": 3000, "gpu": 0})


def _export_task(spec: Spec, e, selected, model: Task) -> Task:
    """Every selected dictionary written in one target format."""
    name = spec.model.name if spec.model.kind == "pretrained" else f"tcspec-{spec.model.kind}"
    config = dict(
        to=e.to,
        experiment=spec.experiment,
        model_name=name,
        context_size=spec.data.context,
        dataset=getattr(spec.data, "name", None) or spec.data.kind,
        coders=[
            dict(dictionary=t.config["dictionary"], train=t.id, member=m["name"], layer=m["layer"])
            for t, m in selected
        ],
    )
    deps = {"model": ("model", model.id)}
    deps |= {f"train_{j}": ("train", t.id) for j, (t, _) in enumerate(selected)}
    return _make("export", e.to, config, deps, {"mem_mb": 2000, "gpu": 0})


def _tables_task(spec: Spec, upstream: list[Task]) -> Task:
    config = spec.tables.model_dump(mode="json") | {"experiment": spec.experiment}
    deps = {f"{t.stage}_{i}": (t.stage, t.id) for i, t in enumerate(upstream)}
    return _make("tables", spec.experiment, config, deps, {"mem_mb": 1000, "gpu": 0})


def _model_mem_mb(dims: dict) -> int:
    d, n, v = dims["d_model"], dims["n_layers"], dims.get("d_vocab", 50257)
    params = 12 * n * d * d + 2 * v * d
    return int(params * 4 * 3 / 2**20) + 1000


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
