"""pydantic's validation errors as (path in the spec, one-line message) pairs, as the
semantic checks give theirs: the paths cleaned of the parts pydantic adds for union branches,
the messages in the spec's words (the allowed keys, kinds and bounds, a close name).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from tcspec.spec import FieldError, Spec
from tcspec.spec import text as spec_text
from tcspec.spec.base import Loc


def _clean_loc(loc: Loc, data: Any) -> Loc:
    """Drop the components pydantic adds for union branches (tags, type names)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            out.append(part)
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            out.append(part)
            data = data[part]
        elif isinstance(data, dict) and part not in data and not _looks_like_branch(part):
            out.append(part)  # a missing or unknown key: keep it, stop descending
            data = None
    return tuple(out)


def _looks_like_branch(part: str | int) -> bool:
    """A part pydantic adds to name a union member (`toy`, `int`, `list[constrained-float]`);
    field names are identifiers, so any other part is one too."""
    return isinstance(part, str) and (
        part in _BRANCH_TAGS or part in _TYPE_NAMES or not part.isidentifier()
    )


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "tuple", "none", "function-after"}
_BRANCH_TAGS = {
    "toy",
    "pretrained",
    "checkpoint",
    "hub",
    "files",
    "transcoder",
    "skip_transcoder",
    "sae",
    "greater_than",
    "attribution",
}
UNION_TAGS = ("kind", "task")
"""The fields tagged unions are discriminated on (`circuits` entries: `task`)."""


def _unwrap(tp: Any, value: Any) -> Any:
    """Find the pydantic model class a value is validated against, if any."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0], value)
    if origin in (typing.Union, types.UnionType):
        branches = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [_unwrap(a, value) for a in branches]
        models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
        for tag in UNION_TAGS:
            if isinstance(value, dict) and tag in value:
                for m in models:
                    if value[tag] in _literal_values(m.model_fields.get(tag)):
                        return m
        return models[0] if len(models) == 1 else None
    return tp


def _literal_values(field) -> tuple:
    return typing.get_args(field.annotation) if field is not None else ()


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` in the document."""
    tp: Any = Spec
    for part in loc:
        tp = _unwrap(tp, data)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        else:
            origin = typing.get_origin(tp)
            args = typing.get_args(tp)
            if origin is dict:
                tp = args[1]
            elif origin is list:
                tp = args[0]
            else:
                return None
        data = (
            data.get(part)
            if isinstance(data, dict)
            else (data[part] if isinstance(data, list) and isinstance(part, int) else None)
        )
    tp = _unwrap(tp, data)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _suggest(word: str, choices) -> str:
    """``; did you mean `x`?`` for the first of: the same word in another case, a choice
    that extends the word (`lr_warmup` -> `lr_warmup_steps`), a choice the word extends
    (`l1_coef` -> `l1`), the closest choice; else ``""``."""
    choices = [str(c) for c in choices]
    close = [c for c in choices if c.lower() == word.lower()]
    close = close or sorted(c for c in choices if c.startswith(word + "_"))
    if not close:
        close = sorted((c for c in choices if word.startswith(c + "_")), key=len, reverse=True)
    close = close or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def validation_problems(err: ValidationError, data: Any) -> list[tuple[Loc, str]]:
    by_path: dict[Loc, list[dict]] = {}
    for e in err.errors(include_url=False):
        if e["type"] == "invalid_key" or (e["loc"][-1:] == ("[key]",) and _is_type_error(e)):
            continue  # a key that is not a string: the loader's `_key_problems` says so
        loc = _clean_loc(e["loc"], data)
        error = e.get("ctx", {}).get("error")
        if isinstance(error, FieldError):  # a cross-field check names the key it is about
            loc += (error.field,)
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc += (e.get("ctx", {}).get("discriminator", "'kind'").strip("'"),)
        by_path.setdefault(loc, []).append(e)
    # `l1: [a, b]` fails as a number (at l1) and item by item (at l1[0], l1[1]): the items
    # say more, so drop a parent's type errors when errors under it exist
    for loc in [p for p in by_path if any(q[: len(p)] == p and q != p for q in by_path)]:
        if all(_is_type_error(e) for e in by_path[loc]):
            del by_path[loc]
    return [(loc, _message(errs, loc, data)) for loc, errs in by_path.items()]


def _is_type_error(e: dict) -> bool:
    return e["type"].endswith(("_type", "_parsing"))


def _pick(errs: list[dict]) -> dict:
    """Among union-branch errors for one path, prefer the most specific one."""
    order = ["extra_forbidden", "missing", "union_tag_invalid", "union_tag_not_found"]
    for kind in order:
        for e in errs:
            if e["type"] == kind:
                return e
    # constraint errors (greater_than, literal_error...) say more than type mismatches
    for e in errs:
        if not _is_type_error(e):
            return e
    return errs[0]


def show(value: Any) -> str:
    """A short rendering of a YAML value for a message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = spec_text.visible(" ".join(str(value).split()))  # one line, nothing invisible
    return f"`{text[:40]}...`" if len(text) > 43 else f"`{text}`"


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "bool": "true or false",
    "dict": "a mapping (key: value)",
    "model": "a mapping (key: value)",
    "model_attributes": "a mapping (key: value)",
    "list": "a list",
    "tuple": "a list",
    "path": "a file path",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _message(errs: list[dict], loc: Loc, data: Any) -> str:
    e = _pick(errs)
    kind, ctx, got = e["type"], e.get("ctx", {}), e.get("input")
    last = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        fields = sorted(model.model_fields) if model else []
        hint = _suggest(last, fields) or (f"; allowed: {', '.join(fields)}" if fields else "")
        return f"unknown key `{spec_text.visible(last)}`{hint}"
    if kind == "missing":
        return f"missing required key `{last}`"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        choices = _kinds_at(loc[:-1], data, last)
        one_of = f"one of {', '.join(choices)}"
        if kind == "union_tag_not_found":
            return f"missing required key `{last}`: {one_of}"
        tag = str(ctx.get("tag", got))
        return f"unknown {last} `{tag}`{_suggest(tag, choices)} ({one_of})"
    if kind == "literal_error":
        choices = [c.strip(" '") for c in ctx.get("expected", "").replace(" or ", ",").split(",")]
        if isinstance(got, (dict, list)) or got is None:
            return f"expected one of {', '.join(choices)}, got {show(got)}"
        return (
            f"{show(got)} is not allowed{_suggest(str(got), choices)} (one of {', '.join(choices)})"
        )
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le"))
        return f"must be {_BOUNDS[kind]} {bound}, got {show(got)}"
    if kind == "string_pattern_mismatch":
        return f"{show(got)} is not a valid name: use lowercase letters, digits, `_` and `-`"
    if kind == "finite_number":
        return f"expected a finite number, got {show(got)}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        what = "at least" if kind == "too_short" else "at most"
        return f"needs {what} {bound} item(s), got {ctx.get('actual_length', '?')}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        what = "at least" if kind == "string_too_short" else "at most"
        return f"needs {what} {bound} character(s), got {show(got)}"
    if _is_type_error(e):
        expected = [_EXPECTED.get(x["type"].rsplit("_", 1)[0]) for x in errs if _is_type_error(x)]
        expected = list(dict.fromkeys(x for x in expected if x))
        if "a list" in expected and len(expected) > 1:  # a sweep field: a value or a list
            scalar = next(x for x in expected if x != "a list")
            return f"expected {scalar} or a list of them (a sweep), got {show(got)}"
        if expected:
            return f"expected {expected[0]}, got {show(got)}"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[0].lower() + msg[1:] if msg else kind


def _kinds_at(loc: Loc, data: Any, tag: str = "kind") -> list[str]:
    """The ``tag`` values of the tagged union validated at ``loc`` (e.g. toy, pretrained)."""
    tp: Any = Spec
    for i, part in enumerate(loc):
        tp = _unwrap(tp, _at(data, loc[:i]))
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    kinds = []
    for branch in typing.get_args(tp):
        if isinstance(branch, type) and issubclass(branch, BaseModel):
            kinds += _literal_values(branch.model_fields.get(tag))
    return kinds


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data
