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

from tcspec.spec import FieldError, Spec
from tcspec.spec import text as spec_text

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


MAX_SHOWN = 50
"""Problems a SpecError prints; past them, one located line counts the rest."""


class SpecError(Exception):
    """A spec has problems; ``str()`` gives one located line per problem (the first
    ``MAX_SHOWN``, then one line saying how many more)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = [str(p) for p in problems[:MAX_SHOWN]]
        if len(problems) > MAX_SHOWN:
            p = problems[MAX_SHOWN]
            more = f"and {len(problems) - MAX_SHOWN:,} more problems (the first {MAX_SHOWN} shown)"
            shown.append(str(Problem(p.file, p.line, p.col, "", more)))
        super().__init__("\n".join(shown))


def format_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        name = spec_text.visible(str(part))
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
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


_KEY_TYPES = {"bool": "true or false", "int": "a number", "float": "a number", "null": "null"}


def _key_problems(node: yaml.Node | None, loc: Loc = ()) -> list[tuple[Loc, str, yaml.Mark]]:
    """Keys given twice in one mapping (located at the second occurrence), and keys YAML
    reads as something other than a string (`1:`, `true:`, `null:`, a date)."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Mark] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):  # complex keys fail construction anyway
                continue
            kind = k.tag.rsplit(":", 1)[-1]
            if kind not in ("str", "merge") and k.tag.startswith("tag:yaml.org,2002:"):
                what = _KEY_TYPES.get(kind, f"a {kind}")
                message = f"key `{k.value}` reads as {what}, not a name; quote it: '{k.value}'"
                found.append((loc + (k.value,), message, k.start_mark))
            elif k.value in seen:
                first = seen[k.value].line + 1
                found.append(
                    (
                        loc + (k.value,),
                        f"duplicate key `{k.value}` (first at line {first})",
                        k.start_mark,
                    )
                )
            else:
                seen[k.value] = k.start_mark
            found += _key_problems(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _key_problems(v, loc + (i,))
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


def _pydantic_problems(err: ValidationError, data: Any, locator: _Locator) -> list[Problem]:
    by_path: dict[Loc, list[dict]] = {}
    for e in err.errors(include_url=False):
        if e["type"] == "invalid_key" or (e["loc"][-1:] == ("[key]",) and _is_type_error(e)):
            continue  # a key that is not a string: `_key_problems` says so
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
    return [locator.problem(loc, _message(errs, loc, data)) for loc, errs in by_path.items()]


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


def _show(value: Any) -> str:
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
            return f"expected one of {', '.join(choices)}, got {_show(got)}"
        return f"{_show(got)} is not allowed{_suggest(str(got), choices)} (one of {', '.join(choices)})"
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le"))
        return f"must be {_BOUNDS[kind]} {bound}, got {_show(got)}"
    if kind == "string_pattern_mismatch":
        return f"{_show(got)} is not a valid name: use lowercase letters, digits, `_` and `-`"
    if kind == "finite_number":
        return f"expected a finite number, got {_show(got)}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        what = "at least" if kind == "too_short" else "at most"
        return f"needs {what} {bound} item(s), got {ctx.get('actual_length', '?')}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        what = "at least" if kind == "string_too_short" else "at most"
        return f"needs {what} {bound} character(s), got {_show(got)}"
    if _is_type_error(e):
        expected = [_EXPECTED.get(x["type"].rsplit("_", 1)[0]) for x in errs if _is_type_error(x)]
        expected = list(dict.fromkeys(x for x in expected if x))
        if "a list" in expected and len(expected) > 1:  # a sweep field: a value or a list
            scalar = next(x for x in expected if x != "a list")
            return f"expected {scalar} or a list of them (a sweep), got {_show(got)}"
        if expected:
            return f"expected {expected[0]}, got {_show(got)}"
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


# ----------------------------------------------------------------------------------- load
_ALLOWED_KEYS = "experiment, model, data, layers, dictionaries, ..."


def _yaml_problem(exc: yaml.YAMLError, file: str, text: str) -> Problem:
    """One located line for a YAML error (syntax, or a tag safe loading refuses)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(file, 1, 1, "", f"YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = str(exc.problem or exc.context or "invalid YAML")
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return Problem(
            file, line, col, "", f"YAML tag `{tag}` is not allowed: specs are plain data"
        )
    context, opened = exc.context or "", exc.context_mark
    bracket = "`[`" if "flow sequence" in context else "`{`" if "flow mapping" in context else ""
    odd = spec_text.odd_space(text, line)
    if "'\\t'" in problem:  # PyYAML quotes the character it found
        problem += " (indent with spaces, not tabs)"
    elif odd:  # YAML reads a no-break space as part of a word
        problem += f" ({odd})"
    elif "mapping values are not allowed" in problem:
        # the parser stops at the `:`; the key whose indentation is off starts the line
        source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
        col = len(source) - len(source.lstrip()) + 1 if source.strip() else col
        problem = f"{problem} (check the indentation of this line and the one above)"
    elif bracket and opened is not None and mark is not None and mark.line > opened.line:
        # the collection runs on past its line: most likely it was never closed
        problem = (
            f"the {bracket} opened here is not closed ({problem} at line {line}, column {col})"
        )
        line, col = opened.line + 1, opened.column + 1
    elif "expected <block end>" in problem:
        problem = f"{problem} (check the indentation of this line and the one above)"
    elif context and opened is not None and opened is not mark:
        problem += f" ({context} at line {opened.line + 1}, column {opened.column + 1})"
    return Problem(file, line, col, "", f"YAML syntax: {problem}")


def parse_spec(text: str, file: str = "<spec>", base_dir: Path | None = None) -> Spec:
    """Parse and validate spec text; raise ``SpecError`` with located problems."""
    try:
        return _parse(text, file, base_dir)
    except RecursionError:  # a last guard: `spec_text` limits nesting before parsing
        raise SpecError([Problem(file, 1, 1, "", "the spec is nested too deeply")]) from None


def _parse(text: str, file: str, base_dir: Path | None) -> Spec:
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here
    except yaml.reader.ReaderError as exc:
        raise _located(file, spec_text.reader_problem(exc, text)) from None
    too_big = spec_text.structure_problem(text)
    if too_big:
        loader.dispose()
        raise _located(file, too_big)
    try:  # one parse: the node tree gives locations, the same tree constructs the data
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, file, text)]) from None
    finally:
        loader.dispose()
    locator = _Locator(root, file)
    problems = [
        Problem(file, m.line + 1, m.column + 1, format_path(loc), msg)
        for loc, msg, m in _key_problems(root)
    ]
    if not isinstance(data, dict):
        what = "empty" if data is None else f"{_show(data)}, not a mapping"
        problems.append(
            locator.problem(
                (), f"the spec is {what}; a spec is a mapping of keys ({_ALLOWED_KEYS})"
            )
        )
        raise SpecError(problems)
    try:
        spec = Spec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise SpecError(_sorted(problems + _pydantic_problems(err, data, locator))) from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    from tcspec.spec.checks import check_spec  # semantic checks need the validated spec

    problems += [locator.problem(loc, msg) for loc, msg in check_spec(spec)]
    if problems:
        raise SpecError(_sorted(problems))
    return spec


def _located(file: str, where: spec_text.Located) -> SpecError:
    line, col, message = where
    return SpecError([Problem(file, line, col, "", message)])


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line, p.col))


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
        with path.open("rb") as f:
            data = f.read(spec_text.MAX_BYTES + 1)  # more is refused without reading it all
    except OSError as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    text = spec_text.decode(data)
    if isinstance(text, tuple):
        raise _located(str(path), text)
    return parse_spec(text, str(path), path.parent.resolve())


def locate(path: str | Path, found: list[tuple[Loc, str]]) -> list[Problem]:
    """Problems at their lines in the spec file at `path` (which `load_spec` accepted):
    (path in the spec, message) pairs, e.g. `tcspec.spec.checks.sanity_warnings`."""
    text = spec_text.decode(Path(path).read_bytes())
    locator = _Locator(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
    return _sorted([locator.problem(loc, msg) for loc, msg in found])
