"""Load a spec file: YAML (safe) -> pydantic -> semantic checks, with every problem located.

Problems are reported as ``file:line:col: dotted.path[i]: message``; nothing here raises a
traceback for bad input. ``SpecError`` carries all problems found, not only the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tcspec.spec import Spec
from tcspec.spec import text as spec_text
from tcspec.spec.base import Loc
from tcspec.spec.messages import show, validation_problems


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        # a file name that is empty or starts or ends with a space is shown quoted
        file = self.file if self.file and self.file == self.file.strip() else repr(self.file)
        return f"{file}:{self.line}:{self.col}: {where}{self.message}"


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
        what = "empty" if data is None else f"{show(data)}, not a mapping"
        problems.append(
            locator.problem(
                (), f"the spec is {what}; a spec is a mapping of keys ({_ALLOWED_KEYS})"
            )
        )
        raise SpecError(problems)
    try:
        spec = Spec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        found = [locator.problem(loc, msg) for loc, msg in validation_problems(err, data)]
        raise SpecError(_sorted(problems + found)) from None
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
