"""A spec file's bytes before YAML parsing: decoding and limits on what the parser is fed.

Every problem comes back as ``(line, col, message)`` (1-based) for the loader to report,
never as an exception from the decoder, the YAML reader or Python's recursion limit:

- the file holds at most ``MAX_BYTES`` bytes of UTF-8 (a leading byte-order mark is allowed);
- YAML's reader refuses control characters (NUL, ESC, ...): the position it reports
  becomes a line and column;
- collections nest at most ``MAX_DEPTH`` deep, an alias may not refer to the collection it
  sits in (a recursive document), and the document, aliases expanded, has at most
  ``MAX_NODES`` values and ``MAX_CHARS`` characters (a few aliases can otherwise stand for
  billions of them);
- values are plain data: no tag beyond YAML's plain ones (``!!binary``, ``!!timestamp``,
  ``!!set``... and every language tag are refused; ``!!int abc`` too), no integer of more
  than ``MAX_INT_CHARS`` characters, and no string holding a control character or half of a
  UTF-16 surrogate pair (which double-quoted escapes can spell: ``"\\ud800"``).
"""

from __future__ import annotations

import re
import unicodedata

import yaml

Located = tuple[int, int, str]  # (line, col, message), 1-based

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_CHARS = 8 * MAX_BYTES
PLAIN_TAGS = {None, "!"} | {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
}
_VALUE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null")}
_RESOLVER = yaml.resolver.Resolver()
MAX_INT_CHARS = 100
"""Longer integers are refused before they are converted (a 64-bit one takes at most 66
characters, in binary with a sign; Python refuses to convert very long ones at all)."""
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode(data: bytes) -> str | Located:
    """The text of a spec file, or where it stops being UTF-8 (or that it is too large)."""
    if len(data) > MAX_BYTES:
        return (
            1,
            1,
            f"the file has more than {MAX_BYTES:,} bytes; a spec is a small text file",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8", errors="replace")
        line, col = _line_col(good, len(good))
        byte = data[exc.start : exc.start + 1].hex()
        return line, col, f"not UTF-8 text (byte 0x{byte}); save the spec as UTF-8"


def reader_problem(exc: yaml.reader.ReaderError, text: str) -> Located:
    """A character YAML's reader refuses, at its line and column."""
    line, col = _line_col(text, exc.position)
    char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
    return line, col, f"YAML: character {char} is not allowed in a spec"


def structure_problem(text: str) -> Located | None:
    """The first place where the document nests too deeply, refers to itself, expands to
    too many values or characters, or holds a value that is not plain data; None when it
    does not (or when it is not valid YAML: the parser then reports that)."""
    depth, size = 0, (0, 0)  # size: values and characters so far, aliases expanded
    open_anchors: list[str | None] = []
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> the values and characters it stands for
    starts: list[tuple[int, int]] = []  # the size at each open collection's start
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            where = event.start_mark
            bad = _value_problem(event)
            if bad:
                return where.line + 1, where.column + 1, bad
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return _at(where, f"collections nest more than {MAX_DEPTH} levels deep")
                open_anchors.append(event.anchor)
                starts.append(size)
                size = (size[0] + 1, size[1])
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, start = open_anchors.pop(), starts.pop()
                if anchor is not None:
                    sizes[anchor] = (size[0] - start[0], size[1] - start[1])
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    return _at(where, f"alias `*{event.anchor}` refers to the collection it is in")
                more = sizes.get(event.anchor, (1, 0))
                size = (size[0] + more[0], size[1] + more[1])
            elif isinstance(event, yaml.ScalarEvent):
                size = (size[0] + 1, size[1] + len(event.value))
                if event.anchor is not None:
                    sizes[event.anchor] = (1, len(event.value))
            if size[0] > MAX_NODES:
                return _at(where, f"more than {MAX_NODES:,} values once aliases are expanded")
            if size[1] > MAX_CHARS:
                return _at(where, f"more than {MAX_CHARS:,} characters once aliases are expanded")
    except yaml.YAMLError:
        return None
    return None


def _value_problem(event: yaml.Event) -> str | None:
    """A tag beyond plain data, or a scalar that is not a plain value (`_scalar_problem`)."""
    if isinstance(event, (yaml.CollectionStartEvent, yaml.ScalarEvent)):
        if event.tag not in PLAIN_TAGS:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")
            return f"YAML tag `{tag}` is not allowed: specs are plain data"
    return _scalar_problem(event) if isinstance(event, yaml.ScalarEvent) else None


def _scalar_problem(event: yaml.ScalarEvent) -> str | None:
    """A value its tag does not fit (`!!int abc`), an integer longer than any that fits in
    64 bits (whatever its base), or a character that is not text."""
    value, tag = event.value, event.tag
    if event.implicit[0] or tag in _VALUE_TAGS:
        read_as = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
        if tag in _VALUE_TAGS and read_as != tag:
            kind = tag.rsplit(":", 1)[1]
            hint = " (a YAML float has a dot: 1.0e-3)" if kind == "float" and _number(value) else ""
            return f"`{visible(value[:40])}` is not a YAML {kind}{hint}"
        if read_as.endswith(":int") and len(value) > MAX_INT_CHARS:
            return f"a number of {len(value):,} characters (integers here fit in 64 bits)"
    bad = _NOT_TEXT.search(value)
    if bad:
        return f"character {visible(bad.group())} is not text"
    return None


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def visible(text: str) -> str:
    """``text`` with every control, format (zero-width, byte-order mark), surrogate or
    unusual space character written as ``\\uXXXX``, so a message shows it."""
    return "".join(
        f"\\u{ord(c):04x}"
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") or c in _ODD_SPACES
        else c
        for c in text
    )


_ODD_SPACES = {c for c in map(chr, range(0x80, 0x3001)) if unicodedata.category(c) == "Zs"}


def odd_space(text: str, line: int) -> str | None:
    """A note naming the first no-break or other unusual space on ``line`` or the line
    above (1-based): YAML reads it as part of a word, not as a space."""
    lines = text.splitlines()
    for i in (line - 1, line - 2):
        hit = next((c for c in lines[i] if c in _ODD_SPACES), None) if 0 <= i < len(lines) else None
        if hit:
            name = unicodedata.name(hit, "a space").lower()
            return f"line {i + 1} holds U+{ord(hit):04X} ({name}), not a plain space"
    return None


def _at(mark, message: str) -> Located:
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return line, col, f"{message}; a spec is a small mapping of plain values"
