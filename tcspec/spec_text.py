"""A spec file's bytes before YAML parsing: decoding and limits on what the parser is fed.

Every problem comes back as ``(line, col, message)`` (1-based) for the loader to report,
never as an exception from the decoder, the YAML reader or Python's recursion limit:

- the file holds at most ``MAX_BYTES`` bytes of UTF-8 (a leading byte-order mark is allowed);
- YAML's reader refuses control characters (NUL, ESC, ...): the position it reports
  becomes a line and column;
- collections nest at most ``MAX_DEPTH`` deep, an alias may not refer to the collection it
  sits in (a recursive document), and the document, aliases expanded, has at most
  ``MAX_NODES`` values (a few aliases can otherwise stand for billions of them).
"""

from __future__ import annotations

import yaml

Located = tuple[int, int, str]  # (line, col, message), 1-based

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


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
    """The first place where the document nests too deeply, refers to itself, or expands to
    too many values; None when it does not (or when it is not valid YAML: the parser then
    reports that)."""
    depth, count = 0, 0
    open_anchors: list[str | None] = []
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    starts: list[int] = []  # value count at each open collection's start
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            where = event.start_mark
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return _at(where, f"collections nest more than {MAX_DEPTH} levels deep")
                open_anchors.append(event.anchor)
                starts.append(count)
                count += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor = open_anchors.pop()
                start = starts.pop()
                if anchor is not None:
                    sizes[anchor] = count - start
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    return _at(where, f"alias `*{event.anchor}` refers to the collection it is in")
                count += sizes.get(event.anchor, 1)
            elif isinstance(event, yaml.ScalarEvent):
                count += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            if count > MAX_NODES:
                return _at(where, f"more than {MAX_NODES:,} values once aliases are expanded")
    except yaml.YAMLError:
        return None
    return None


def _at(mark, message: str) -> Located:
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return line, col, f"{message}; a spec is a small mapping of plain values"
