"""Load a spec file: YAML (safe) -> pydantic -> semantic checks, with every problem located.

Problems are reported as ``file:line:col: dotted.path[i]: message``; nothing here raises a
traceback for bad input. ``SpecError`` carries all problems found, not only the first.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tcspec.spec import Spec

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class SpecError(Exception):
    """A spec has problems; ``str()`` gives one located line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def format_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------ locations
class _Locator:
    """Maps a path into the YAML document to the line/column of its key (or item)."""

    def __init__(self, root: yaml.Node | None, file: str):
        self.root, self.file = root, file

    def mark(self, loc: Loc) -> tuple[int, int]:
        node, mark = self.root, (self.root.start_mark if self.root else None)
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                hit = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if hit is None:
                    break
                mark, node = hit[0].start_mark, hit[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        return (mark.line + 1, mark.column + 1) if mark else (1, 1)

    def problem(self, loc: Loc, message: str) -> Problem:
        line, col = self.mark(loc)
        return Problem(self.file, line, col, format_path(loc), message)


def _duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> list[tuple[Loc, str]]:
    found = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if k.value in seen:
                found.append((loc + (k.value,), f"duplicate key `{k.value}`"))
            seen.add(k.value)
            found += _duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, loc + (i,))
    return found


# ------------------------------------------------------------------- pydantic error paths
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
    return isinstance(part, str) and (
        part in _BRANCH_TAGS or any(c in part for c in "[]()") or part in _TYPE_NAMES
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
}


def _unwrap(tp: Any, value: Any) -> Any:
    """Find the pydantic model class a value is validated against, if any."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0], value)
    if origin in (typing.Union, types.UnionType):
        branches = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [_unwrap(a, value) for a in branches]
        models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(value, dict) and "kind" in value:
            for m in models:
                if value["kind"] in _literal_values(m.model_fields.get("kind")):
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
        data = data.get(part) if isinstance(data, dict) else (
            data[part] if isinstance(data, list) and isinstance(part, int) else None
        )
    tp = _unwrap(tp, data)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _pydantic_problems(err: ValidationError, data: Any, locator: _Locator) -> list[Problem]:
    by_path: dict[Loc, list[dict]] = {}
    for e in err.errors(include_url=False):
        by_path.setdefault(_clean_loc(e["loc"], data), []).append(e)
    problems = []
    for loc, errs in by_path.items():
        e = _pick(errs)
        problems.append(locator.problem(loc, _message(e, loc, data)))
    return problems


def _pick(errs: list[dict]) -> dict:
    """Among union-branch errors for one path, prefer the most specific one."""
    order = ["extra_forbidden", "missing", "union_tag_invalid", "union_tag_not_found"]
    for kind in order:
        for e in errs:
            if e["type"] == kind:
                return e
    # constraint errors (greater_than, literal_error...) say more than type mismatches
    for e in errs:
        if not e["type"].endswith("_type") and e["type"] != "list_type":
            return e
    return errs[0]


def _message(e: dict, loc: Loc, data: Any) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        fields = sorted(model.model_fields) if model else []
        hint = _suggest(str(loc[-1]), fields) or (f"; allowed: {', '.join(fields)}" if fields else "")
        return f"unknown key `{loc[-1]}`{hint}"
    if kind == "missing":
        return f"missing required key `{loc[-1]}`"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = e.get("ctx", {}).get("expected_tags", "")
        got = e.get("ctx", {}).get("tag", "")
        choices = [t.strip(" '") for t in str(tags).split(",")]
        if kind == "union_tag_not_found":
            return f"missing `kind`; one of {', '.join(choices)}"
        return f"unknown kind `{got}`{_suggest(str(got), choices)}; expected one of {', '.join(choices)}"
    if kind == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",")]
        return f"`{e['input']}` is not allowed{_suggest(str(e['input']), choices)}; expected {expected}"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[0].lower() + msg[1:] if msg else kind


# ----------------------------------------------------------------------------------- load
def parse_spec(text: str, file: str = "<spec>", base_dir: Path | None = None) -> Spec:
    """Parse and validate spec text; raise ``SpecError`` with located problems."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError([Problem(file, line, col, "", f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, 1, 1, "", f"YAML: {exc}")]) from None
    locator = _Locator(root, file)
    problems = [locator.problem(loc, msg) for loc, msg in _duplicate_keys(root)]
    if not isinstance(data, dict):
        problems.append(locator.problem((), "a spec is a mapping of keys (experiment, model, ...)"))
        raise SpecError(problems)
    try:
        spec = Spec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise SpecError(problems + _pydantic_problems(err, data, locator)) from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    from tcspec.checks import check_spec  # semantic checks need the validated spec

    problems += [locator.problem(loc, msg) for loc, msg in check_spec(spec)]
    if problems:
        raise SpecError(problems)
    return spec


def _resolve_paths(spec: Spec, base: Path) -> Spec:
    """Make relative file paths in the spec relative to the spec's folder."""
    update = {}
    data, model = spec.data, spec.model
    if data.kind == "files":
        paths = [p if p.is_absolute() else (base / p).resolve() for p in data.paths]
        update["data"] = data.model_copy(update={"paths": paths})
    if model.kind == "checkpoint" and not model.path.is_absolute():
        update["model"] = model.model_copy(update={"path": (base / model.path).resolve()})
    return spec.model_copy(update=update) if update else spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raise ``SpecError`` with located problems."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    return parse_spec(text, str(path), path.parent.resolve())
