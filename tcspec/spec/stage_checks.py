"""Semantic checks of the stages that name dictionaries (evaluate's splice layers, interp,
probe, circuits, export): each reference names a dictionary, layer and sweep point that
exist, and the dictionary can serve what the stage asks of it.
"""

from __future__ import annotations

from tcspec.dictionaries.families import FAMILIES
from tcspec.spec import SWEEP_FIELDS, Spec
from tcspec.spec.base import Found, as_list, path_exists


def check_probe(spec: Spec) -> Found:
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
        if not path_exists(f) or f.is_dir():
            yield ("probe", "dataset", "data_files"), f"file not found: {f}"
    for i, ref in enumerate(p.dictionaries):
        d = spec.dictionaries.get(ref.name)
        if d is not None and (why := d.cannot("probe")):
            yield ("probe", "dictionaries", i, "name"), f"`{ref.name}` {why}"


def check_traced(spec: Spec, loc: tuple, c, d) -> Found:
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


def check_splice_layers(spec: Spec) -> Found:
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
                f"`where: {{{unpicked[0]}: {as_list(getattr(d, unpicked[0]))[0]}}}`"
            ),
        )


def check_ref(spec: Spec, loc: tuple, ref) -> Found:
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
        values = as_list(getattr(d, field, None))
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
