"""Semantic checks of a validated spec: what pydantic's field types cannot see.

Each check yields ``(path, message)``; the loader turns paths into file locations.
`check_spec` runs them all: the data and model sources' here, each dictionary's
(`tcspec.spec.dictionary_checks`), the stages' references to dictionaries
(`tcspec.spec.stage_checks`) and what later stages would refuse (`tcspec.spec.prechecks`),
against the model's dimensions known offline (`tcspec.spec.dims`). `sanity_warnings` lists
settings that run but are likely mistakes.
"""

from __future__ import annotations

from tcspec.models.hooks import SYNTHETIC_HOOKS
from tcspec.spec import Spec, prechecks
from tcspec.spec.base import Found, path_exists
from tcspec.spec.dictionaries import dictionary_hooks
from tcspec.spec.dictionary_base import NO_LM
from tcspec.spec.dictionary_checks import check_dictionary
from tcspec.spec.dims import DimsUnknown, model_dims
from tcspec.spec.stage_checks import check_probe, check_ref, check_splice_layers, check_traced


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
        yield from check_dictionary(spec, name, d, dims)
    ev = spec.evaluate.eval_tokens
    if ev is not None and ev > spec.data.eval_tokens:
        yield (
            ("evaluate", "eval_tokens"),
            f"{ev} eval tokens asked but data.eval_tokens is {spec.data.eval_tokens}",
        )
    yield from check_splice_layers(spec)
    refs = []
    if spec.interp:
        refs += [(("interp", "dictionaries", i), r) for i, r in enumerate(spec.interp.dictionaries)]
    refs += [(("circuits", i, "dictionary"), c.dictionary) for i, c in enumerate(spec.circuits)]
    if spec.probe:
        refs += [(("probe", "dictionaries", i), r) for i, r in enumerate(spec.probe.dictionaries)]
        yield from check_probe(spec)
    refs += [
        (("export", i, "dictionaries", j), r)
        for i, e in enumerate(spec.export)
        for j, r in enumerate(e.dictionaries)
    ]
    for loc, ref in refs:
        yield from check_ref(spec, loc, ref)
    yield from prechecks.check_exports(spec, dims)
    yield from prechecks.check_targets(spec)
    for i, c in enumerate(spec.circuits):
        d = spec.dictionaries.get(c.dictionary.name)
        if d is not None:
            yield from check_traced(spec, ("circuits", i), c, d)
        if c.task == "attribution" and c.prompts_file is not None:
            f = c.prompts_file
            if not path_exists(f) or f.is_dir():
                yield ("circuits", i, "prompts_file"), f"file not found: {f}"
            elif not c.prompt_list():
                yield ("circuits", i, "prompts_file"), f"no prompts in {f} (one a line)"


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
            if not path_exists(p) or p.is_dir():
                yield ("data", "paths", i), f"file not found: {p}"
        if all(path_exists(p) and not p.is_dir() for p in data.paths):
            # a byte-level tokenizer makes at most one token per byte (plus BOS per line)
            limit = sum(p.stat().st_size for p in data.paths) * 2
            need = data.train_tokens + data.eval_tokens
            if need > limit:
                yield (
                    ("data", "train_tokens"),
                    f"train_tokens + eval_tokens = {need} but the files hold at most ~{limit} tokens",
                )


__all__ = ["check_spec", "sanity_warnings"]
