"""Semantic checks of a validated spec: what pydantic's field types cannot see.

Each check yields ``(path, message)``; the loader turns paths into file locations.
Model dimensions come from offline sources only: the toy recipe, a local checkpoint, a
pretrained model's config.json in the local Hugging Face cache, else tcspec's catalog (and a
cached config that disagrees with the catalog is an error: the cached model is what runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tcspec.atomic import read_json
from tcspec.dictionaries.families import FAMILIES
from tcspec.models import catalog
from tcspec.models.hooks import BLOCK_HOOKS, SYNTHETIC_HOOKS, hook_width
from tcspec.spec import SWEEP_FIELDS, Spec, prechecks
from tcspec.spec.dictionaries import NO_LM, dictionary_hooks
from tcspec.vocab import MODEL_JSON, TRANSPOSED_INITS, d_sae_of

Found = Iterator[tuple[tuple, str]]


class DimsUnknown(ValueError):
    pass


def model_dims(model) -> dict:
    """Model dims (n_layers, d_model, d_mlp, n_ctx, parallel_attn_mlp, ...) known offline."""
    if model.kind == "toy":
        return dict(
            n_layers=model.n_layers,
            d_model=model.d_model,
            d_mlp=model.d_mlp,
            n_heads=model.n_heads,
            d_head=model.d_model // model.n_heads,
            n_ctx=model.n_ctx,
            parallel_attn_mlp=False,
        )
    if model.kind == "synthetic":
        # one block whose MLP hooks hold x and y (`tcspec.models.synthetic`); no tokens
        return dict(
            n_layers=1, d_model=model.d_model, d_mlp=model.d_model, n_heads=1,
            d_head=model.d_model, n_ctx=None, d_vocab=0, parallel_attn_mlp=False,
        )  # fmt: skip
    if model.kind == "pretrained":
        return pretrained_dims(model.name)
    return checkpoint_dims(model.path)


def pretrained_dims(name: str) -> dict:
    """Dims of a pretrained model: its cached config.json's, checked against the catalog's."""
    known, (cached, file) = catalog.lookup(name), cached_config(name)
    if cached is not None:
        dims = hf_config_dims(cached, file)
        differ = [k for k in DIMS_COMPARED if known and k in dims and dims[k] != known[k]]
        if differ:
            have = ", ".join(f"{k} {dims[k]}" for k in differ)
            want = ", ".join(f"{k} {known[k]}" for k in differ)
            raise DimsUnknown(
                f"the local Hugging Face cache's `{name}` ({file}) has {have}, but `{name}` "
                f"has {want} (tcspec's catalog): the cached model is what would run; use it as "
                f"`kind: checkpoint, path: {file.parent}`, or replace the cached copy"
            )
        return (dict(known) if known else {}) | dims
    if known is None:
        import difflib

        close = difflib.get_close_matches(name, catalog.known_names(), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise DimsUnknown(
            f"model `{name}` is neither in the local Hugging Face cache nor in tcspec's "
            f"offline catalog; {hint}use `kind: checkpoint` with a local folder for other models"
        )
    return dict(known)


DIMS_COMPARED = ("n_layers", "d_model", "d_mlp", "n_heads")
"""The dims a cached config and the catalog must agree on."""


def cached_config(name: str) -> tuple[dict | None, Path | None]:
    """The config.json of a pretrained model in the local Hugging Face cache (read only,
    never downloaded), and its path; (None, None) when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    for repo in catalog.hub_ids(name):
        try:
            found = try_to_load_from_cache(repo, "config.json")
        except ValueError:  # not a valid repository id
            continue
        if isinstance(found, str):
            return _model_settings(Path(found)), Path(found)
    return None, None


def checkpoint_dims(path: Path) -> dict:
    """Dims from a local folder: our model.json, or an HF config.json."""
    if not _exists(path) or not path.is_dir():
        raise DimsUnknown(f"checkpoint folder not found: {path}")
    if (path / MODEL_JSON).exists():
        return _model_settings(path / MODEL_JSON)["cfg"]
    if not (path / "config.json").exists():
        raise DimsUnknown(f"no model.json or config.json in {path}")
    return hf_config_dims(_model_settings(path / "config.json"), path / "config.json")


def hf_config_dims(cfg: dict, file: Path) -> dict:
    """Dims from a Hugging Face config.json (GPT-2, GPT-NeoX and Llama-style names)."""

    def first(*keys, default=None):
        return next((cfg[k] for k in keys if k in cfg), default)

    d_model = first("n_embd", "hidden_size", "d_model")
    n_layers = first("n_layer", "num_hidden_layers")
    if not _count(d_model) or not _count(n_layers):
        raise DimsUnknown(f"{file} gives no n_layer/num_hidden_layers or n_embd/hidden_size")
    dims = dict(
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=first("n_inner", "intermediate_size") or 4 * d_model,
        n_heads=first("n_head", "num_attention_heads"),
        d_vocab=first("vocab_size"),
        n_ctx=first("n_positions", "max_position_embeddings"),
        parallel_attn_mlp=bool(first("use_parallel_residual", default=False)),
    )
    return {k: v for k, v in dims.items() if v is not None}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name the OS refuses (too long, NUL byte)
        return False


def _model_settings(path: Path) -> dict:
    """A model.json or config.json of model settings; `DimsUnknown` when unreadable."""
    try:
        cfg = read_json(path)
    except ValueError as exc:
        raise DimsUnknown(str(exc)) from None
    if "cfg" in cfg and not isinstance(cfg["cfg"], dict):
        raise DimsUnknown(f"{path} is not a JSON object of model settings")
    return cfg


def check_spec(spec: Spec) -> list[tuple[tuple, str]]:
    return list(_check(spec))


def sanity_warnings(spec: Spec) -> list[tuple[tuple, str]]:
    """Settings that run but cannot act within the run, or are likely mistakes: (location,
    message), for `tcspec check` (errors with `--strict`); and a target whose tokens cannot
    be checked yet."""
    out = []
    entries = prechecks.target_entries(spec)
    if entries and spec.model.kind != "synthetic" and prechecks.model_tokenizer(spec) is None:
        out += [(("circuits", i, "target"), "the model's tokenizer is not on this machine (not "
                 "in the local Hugging Face cache): the target's tokens are checked when the "
                 "circuits job loads the model") for i, _ in entries]  # fmt: skip
    for name, d in spec.dictionaries.items():
        if d.kind != "pretrained":
            out += [(("dictionaries", name) + loc, msg) for loc, msg in _run_warnings(spec, d)]
    return out


def _run_warnings(spec: Spec, d) -> Found:
    """A trained dictionary's settings that its run is too short for (or too small)."""
    tokens = d.train_tokens or spec.data.train_tokens
    steps = d.train_steps(spec.data.train_tokens)
    run = f"training takes {steps} steps ({tokens} tokens / batch {d.batch_size})"
    if d.batch_size > spec.data.train_tokens:
        yield (
            ("batch_size",),
            (
                f"batch of {d.batch_size} tokens is larger than the cache (data.train_tokens "
                f"{spec.data.train_tokens})"
            ),
        )
    if not steps:
        return
    for field in ("lr_warmup_steps", "l1_warmup_steps"):
        warmup = getattr(d, field)
        if warmup > steps:
            yield (field,), f"{warmup} warm-up steps, but {run}: it never reaches its full value"
    window = getattr(d, "dead_window", None)
    if window is not None and window >= steps and d.uses_dead_window():
        yield (
            ("dead_window",),
            (
                f"dead window of {window} steps, but {run}: no feature can count as dead, so "
                f"{_dead_users(d)} never acts; leave `dead_window` unset (a tenth of the run) "
                "or shorten it"
            ),
        )
    if "checkpoint_every" in d.model_fields_set and d.checkpoint_every >= steps:
        yield (
            ("checkpoint_every",),
            (
                f"a checkpoint every {d.checkpoint_every} steps, but {run}: none is written, so "
                "a killed job starts over"
            ),
        )


def _dead_users(d) -> str:
    """What acts on a dictionary's dead features, in words."""
    users = {"ghost_grads": "ghost grads", "aux_k": "the aux-k loss", "resample": "resampling"}
    names = [users[d.dead_features]] if d.dead_features in users else []
    if d.pre_act_coef is not None:
        names.append("the pre-activation loss")
    return " or ".join(names)


def _check(spec: Spec) -> Found:
    yield from _check_data(spec)
    yield from _check_synthetic(spec)
    yield from _check_device(spec)
    try:
        dims = model_dims(spec.model)
    except DimsUnknown as exc:
        yield ("model", "name" if spec.model.kind == "pretrained" else "path"), str(exc)
        return
    n_layers = dims["n_layers"]
    for i, layer in enumerate(spec.layers):
        if layer >= n_layers:
            yield (
                ("layers", i),
                f"layer {layer} does not exist: the model has {n_layers} (0..{n_layers - 1})",
            )
    n_ctx = dims.get("n_ctx")
    if n_ctx and spec.data.context > n_ctx:
        yield (
            ("data", "context"),
            f"context {spec.data.context} is longer than the model's n_ctx {n_ctx}",
        )
    for name, d in spec.dictionaries.items():
        yield from _check_dictionary(spec, name, d, dims)
    ev = spec.evaluate.eval_tokens
    if ev is not None and ev > spec.data.eval_tokens:
        yield (
            ("evaluate", "eval_tokens"),
            f"{ev} eval tokens asked but data.eval_tokens is {spec.data.eval_tokens}",
        )
    yield from _check_splice_layers(spec)
    refs = []
    if spec.interp:
        refs += [(("interp", "dictionaries", i), r) for i, r in enumerate(spec.interp.dictionaries)]
    refs += [(("circuits", i, "dictionary"), c.dictionary) for i, c in enumerate(spec.circuits)]
    if spec.probe:
        refs += [(("probe", "dictionaries", i), r) for i, r in enumerate(spec.probe.dictionaries)]
        yield from _check_probe(spec)
    refs += [
        (("export", i, "dictionaries", j), r)
        for i, e in enumerate(spec.export)
        for j, r in enumerate(e.dictionaries)
    ]
    for loc, ref in refs:
        yield from _check_ref(spec, loc, ref)
    yield from prechecks.check_exports(spec, dims)
    yield from prechecks.check_targets(spec)
    for i, c in enumerate(spec.circuits):
        d = spec.dictionaries.get(c.dictionary.name)
        if d is not None:
            yield from _check_traced(spec, ("circuits", i), c, d)
        if c.task == "attribution" and c.prompts_file is not None:
            f = c.prompts_file
            if not _exists(f) or f.is_dir():
                yield ("circuits", i, "prompts_file"), f"file not found: {f}"
            elif not c.prompt_list():
                yield ("circuits", i, "prompts_file"), f"no prompts in {f} (one a line)"


def _check_probe(spec: Spec) -> Found:
    """Probing reads texts: the toy corpus's families need the toy model, else a dataset;
    it probes per-layer dictionaries."""
    p = spec.probe
    if p.dataset is None and spec.model.kind not in ("toy", "synthetic"):
        yield (
            ("probe",),
            "the toy corpus's document families label texts for a toy model only; give "
            "`probe.dataset` (a labelled dataset: path, text_column, label_column)",
        )
    for f in (p.dataset.data_files or []) if p.dataset else []:
        if not _exists(f) or f.is_dir():
            yield ("probe", "dataset", "data_files"), f"file not found: {f}"
    for i, ref in enumerate(p.dictionaries):
        d = spec.dictionaries.get(ref.name)
        if d is not None and (why := d.cannot("probe")):
            yield ("probe", "dictionaries", i, "name"), f"`{ref.name}` {why}"


def _check_traced(spec: Spec, loc: tuple, c, d) -> Found:
    """The dictionary a circuit study traces: one its kind lets a study trace, at one sweep
    point; `layer` and the MLP0 de-embeddings only where its kind has them. (An imported
    dictionary's files say what it is: checked when the study loads it.)"""
    name = c.dictionary.name
    if why := d.cannot("circuits"):
        yield loc + ("dictionary", "name"), f"`{name}` {why}"
        return
    if getattr(c, "mlp0_deembeddings", False):
        if why := d.cannot("mlp0_deembeddings"):
            yield loc + ("mlp0_deembeddings",), f"`{name}` {why}"
        else:
            yield from _check_mlp0(spec, loc, c, d)
    if c.dictionary.layer is not None and (why := d.cannot("circuit_layer")):
        yield loc + ("dictionary", "layer"), f"`{name}` {why}"
    yield from _check_one_point(loc + ("dictionary",), c.dictionary, d)


def _check_mlp0(spec: Spec, loc: tuple, c, d) -> Found:
    """The MLP0 de-embeddings go through the traced dictionary's layer-0 transcoder."""
    layers = d.layers if d.layers is not None else spec.layers
    ref_layer = c.dictionary.layer
    if 0 not in layers or ref_layer not in (None, 0):
        has = f"layer {ref_layer} is traced" if ref_layer not in (None, 0) else f"layers {layers}"
        yield (
            loc + ("mlp0_deembeddings",),
            f"`mlp0_deembeddings` needs `{c.dictionary.name}` at layer 0 ({has}); add layer "
            "0 or drop `mlp0_deembeddings`",
        )


def _check_splice_layers(spec: Spec) -> Found:
    """`evaluate.splice_layers` must be layers of every transcoder spliced jointly."""
    chosen = spec.evaluate.splice_layers
    if chosen is None:
        return
    for name, d in spec.dictionaries.items():
        layers = d.layers if d.layers is not None else spec.layers
        if d.cannot("joint_splice") or len(layers) < 2:
            continue
        missing = [layer for layer in chosen if layer not in layers]
        if missing:
            yield (
                ("evaluate", "splice_layers"),
                f"`{name}` has no layer {', '.join(map(str, missing))} (its layers "
                f"{layers}): splice a subset of them",
            )


def _check_one_point(loc: tuple, ref, d) -> Found:
    """A circuit traces through one sweep point: `where` must pick exactly one."""
    swept = [
        f for f in SWEEP_FIELDS if isinstance(getattr(d, f, None), list) and len(getattr(d, f)) > 1
    ]
    unpicked = [f for f in swept if f not in ref.where]
    if unpicked:
        yield (
            loc,
            (
                f"`{ref.name}` sweeps {', '.join(unpicked)}; pick one sweep point with "
                f"`where: {{{unpicked[0]}: {_as_list(getattr(d, unpicked[0]))[0]}}}`"
            ),
        )


def _check_synthetic(spec: Spec) -> Found:
    """A synthetic source has no language model: the data must be its samples, the
    dictionaries must read its two hooks, and no stage may need tokens or a model."""
    synthetic = spec.model.kind == "synthetic"
    if synthetic != (spec.data.kind == "synthetic"):
        which = "`model: {kind: synthetic}` needs" if synthetic else "only a synthetic model has"
        yield ("data", "kind"), f"{which} `data: {{kind: synthetic}}` (samples, not text)"
    if not synthetic:
        return
    if spec.interp is not None:
        yield ("interp",), f"`interp` (feature dashboards over text) {NO_LM}: drop it"
    if spec.probe is not None:
        yield ("probe",), f"`probe` (probing texts' activations) {NO_LM}: drop it"
    for i, _ in enumerate(spec.circuits):
        yield ("circuits", i), f"circuit studies {NO_LM}: drop `circuits`"
    if spec.evaluate.splice_all_layers:
        yield ("evaluate", "splice_all_layers"), f"splicing into a model {NO_LM}"
    for i, _ in enumerate(spec.export):
        yield ("export", i), f"an export names the model's hooks for another tool; {NO_LM}"
    hooks = SYNTHETIC_HOOKS
    for name, d in spec.dictionaries.items():
        base = ("dictionaries", name)
        if why := d.cannot("synthetic"):
            yield (
                base + ("kind",),
                f"`kind: {d.kind}` {why}; use transcoder, skip_transcoder or sae",
            )
            continue
        fields = ("hook",) if d.kind == "sae" else ("in_hook", "out_hook")
        bad = [(f, h) for f, h in zip(fields, dictionary_hooks(d)) if h not in hooks]
        for field, hook in bad:
            yield (
                base + (field,),
                f"the synthetic source has no `{hook}`: it has `{hooks[0]}` (x, the input "
                f"features) and `{hooks[1]}` (y, their image under the map)",
            )
        if not bad and d.kind != "sae" and dictionary_hooks(d) != tuple(hooks):
            yield base + ("in_hook",), f"a transcoder maps `{hooks[0]}` to `{hooks[1]}` here"


def _check_device(spec: Spec) -> Found:
    if spec.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            yield (
                ("device",),
                "cuda, but this torch sees no CUDA device (built without CUDA, or no GPU "
                "visible here); use `auto` (CUDA when present) or `cpu`",
            )


def _check_data(spec: Spec) -> Found:
    data = spec.data
    if data.kind == "files":
        for i, p in enumerate(data.paths):
            if not _exists(p) or p.is_dir():
                yield ("data", "paths", i), f"file not found: {p}"
        if all(_exists(p) and not p.is_dir() for p in data.paths):
            # a byte-level tokenizer makes at most one token per byte (plus BOS per line)
            limit = sum(p.stat().st_size for p in data.paths) * 2
            need = data.train_tokens + data.eval_tokens
            if need > limit:
                yield (
                    ("data", "train_tokens"),
                    f"train_tokens + eval_tokens = {need} but the files hold at most ~{limit} tokens",
                )


def _check_pretrained(spec: Spec, name: str, d, dims: dict) -> Found:
    base = ("dictionaries", name)
    for i, layer in enumerate(d.layers or []):
        if layer >= dims["n_layers"]:
            yield (
                base + ("layers", i),
                f"layer {layer} does not exist: the model has {dims['n_layers']}",
            )
    if d.repo is None:
        for layer in d.layers if d.layers is not None else spec.layers:
            path = Path(d.path.replace("{layer}", str(layer)))
            if not path.exists():
                yield base + ("path",), f"not found: {path}"
                break


def _check_dictionary(spec: Spec, name: str, d, dims: dict) -> Found:
    """A trained dictionary against the model (layers, hooks), its widths and its budget;
    an imported one's files (`_check_pretrained`)."""
    base = ("dictionaries", name)
    if d.kind == "pretrained":
        yield from _check_pretrained(spec, name, d, dims)
        return
    yield from _check_layers_and_hooks(base, d, dims)
    in_hook, out_hook = dictionary_hooks(d)
    yield from _check_widths(base, d, hook_width(in_hook, dims), hook_width(out_hook, dims))
    yield from _check_budget(spec, base, d)


def _check_layers_and_hooks(base: tuple, d, dims: dict) -> Found:
    """Its layers exist; its hooks exist in the model's blocks; a transcoder maps one hook
    to another."""
    for i, layer in enumerate(d.layers or []):
        if layer >= dims["n_layers"]:
            yield (
                base + ("layers", i),
                f"layer {layer} does not exist: the model has {dims['n_layers']}",
            )
    in_hook, out_hook = dictionary_hooks(d)
    for field, hook in (
        (("in_hook", in_hook), ("out_hook", out_hook)) if d.kind != "sae" else (("hook", in_hook),)
    ):
        if dims.get("parallel_attn_mlp") and hook in ("hook_resid_mid", "hook_mlp_in"):
            yield (
                base + (field,),
                (
                    f"the model has parallel attention and MLP blocks: it has no `{hook}`; "
                    "use `ln2.hook_normalized`"
                ),
            )
    if d.kind != "sae" and in_hook == out_hook:
        field = "out_hook" if "out_hook" in d.model_fields_set else "in_hook"
        yield (
            base + (field,),
            (
                f"a transcoder's in_hook and out_hook are both `{in_hook}`; "
                "use `kind: sae` to reconstruct one hook"
            ),
        )


def _check_widths(base: tuple, d, d_in: int, d_out: int) -> Found:
    """k and the Matryoshka prefixes fit in its narrowest width; options that need
    d_in == d_out have it."""
    widths = [d_sae_of(d_in, w, e) for w in _as_list(d.d_sae) for e in _as_list(d.expansion)]
    for k in _as_list(d.k) if d.k is not None else []:
        if k > min(widths):
            yield base + ("k",), f"k {k} exceeds d_sae {min(widths)}"
    wide = [w for w in getattr(d, "matryoshka", None) or [] if w > min(widths)]
    if wide:
        yield (
            base + ("matryoshka",),
            (
                f"prefix width {wide[0]} exceeds d_sae {min(widths)}: a prefix is at most the "
                "dictionary's width (d_sae is the last prefix)"
            ),
        )
    if getattr(d, "ghost_residual", "output") == "input" and d_in != d_out:
        yield (
            base + ("ghost_residual",),
            f"`ghost_residual: input` fits x - y_hat, but d_in {d_in} != d_out {d_out}; "
            "use `output`",
        )
    if (init := getattr(d, "encoder_init", None)) in TRANSPOSED_INITS and d_in != d_out:
        yield (
            base + ("encoder_init",),
            f"`encoder_init: {init}` sets W_enc = {'s ' * (init != 'transpose')}W_dec^T, "
            f"but d_in {d_in} != d_out "
            f"{d_out}; use `kaiming`",
        )


def _check_budget(spec: Spec, base: tuple, d) -> Found:
    """Its training tokens are in the cache, and a batch fits in them."""
    tokens = d.train_tokens or spec.data.train_tokens
    if d.train_tokens and d.train_tokens > spec.data.train_tokens:
        yield (
            base + ("train_tokens",),
            (
                f"training budget {d.train_tokens} tokens exceeds the cache "
                f"(data.train_tokens {spec.data.train_tokens})"
            ),
        )
    if d.batch_size > tokens:
        yield (
            base + ("batch_size",),
            f"batch_size {d.batch_size} exceeds the {tokens} training tokens",
        )


def _check_ref(spec: Spec, loc: tuple, ref) -> Found:
    d = spec.dictionaries.get(ref.name)
    if d is None:
        import difflib

        close = difflib.get_close_matches(ref.name, list(spec.dictionaries), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        names = ", ".join(spec.dictionaries)
        yield loc + ("name",), f"no dictionary named `{ref.name}`{hint} (dictionaries: {names})"
        return
    layers = d.layers if d.layers is not None else spec.layers
    if ref.layer is not None and ref.layer not in layers:
        yield (
            loc + ("layer",),
            f"`{ref.name}` is not trained at layer {ref.layer} (layers {layers})",
        )
    for field, value in ref.where.items():
        values = _as_list(getattr(d, field, None))
        unused = _unused_field(d, field)
        if unused:
            yield loc + ("where", field), f"`{ref.name}` {unused}: select it by another field"
            continue
        if not any(v is not None and float(v) == float(value) for v in values):
            yield (
                loc + ("where", field),
                f"`{ref.name}` has no {field} = {value} (values: {values})",
            )


def _unused_field(d, field: str) -> str | None:
    """Why `field` cannot select among `d`'s sweep points, if it cannot (it does not apply)."""
    if d.kind == "pretrained":
        return "is imported; it has no sweep points"
    if field == "l1" and FAMILIES[getattr(d, "activation", "relu")].sparsity != "l1":
        return f"is `activation: {d.activation}`, which has no L1 penalty"
    if field == "k" and getattr(d, "k", None) is None:
        return f"is `activation: {d.activation}`, which has no `k`"
    return None


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


__all__ = ["BLOCK_HOOKS", "check_spec", "model_dims", "DimsUnknown"]
