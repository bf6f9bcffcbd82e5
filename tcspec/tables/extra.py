"""Tables other stages computed (interpretability ratings, circuit studies), written as
Markdown and CSV and shown in the index like the rest; one with a figure is shown in the
index by its figure (its rows stay in its files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tcspec import atomic
from tcspec.tables.section import Inputs, Section


@dataclass(frozen=True)
class ExtraTable:
    """One table another stage computed."""

    stem: str
    """File stem in the tables folder (`{stem}.md`, `{stem}.csv`)."""
    frame: pd.DataFrame
    caption: str
    figure: Path | None = None
    """A PNG that shows the table; copied beside it as `{stem}.png` and shown in the index
    instead of the rows."""


def as_extra(item: ExtraTable | tuple) -> ExtraTable:
    """An `ExtraTable`, or a `(stem, frame, caption)` tuple as one."""
    return item if isinstance(item, ExtraTable) else ExtraTable(*item)


def write_extra(out_dir: Path, table: ExtraTable) -> Section:
    """`{stem}.md` (with the notes in `frame.attrs["notes"]`), `{stem}.csv` (and
    `{stem}.png`) of one table."""
    stem, caption = table.stem, table.caption
    notes = [str(n) for n in table.frame.attrs.get("notes") or ()]
    md = "\n\n".join([table.frame.to_markdown(index=False, floatfmt=".4g"), *notes])
    paths = [
        atomic.write_text(out_dir / f"{stem}.md", f"## {caption}\n\n{md}\n"),
        atomic.write_text(out_dir / f"{stem}.csv", table.frame.to_csv(index=False)),
    ]
    line = f"- [{stem}.md]({stem}.md) (.csv): {caption}."
    if table.figure is not None:
        png = atomic.write_bytes(out_dir / f"{stem}.png", Path(table.figure).read_bytes())
        paths.append(png)
        line = f"- [{png.name}]({png.name}) ([{stem}.csv]({stem}.csv), .md): {caption}."
        md = f"![{caption}]({png.name})\n\nThe rows: [{stem}.csv]({stem}.csv)."
    return Section(tuple(paths), (line,), f"## {caption}\n\n{md}")


def section_for(name: str, needs: str):
    """The builder of table `name`, whose frames come in `Inputs.extra[name]`; without them
    the index says what the table `needs`."""

    def section(inputs: Inputs) -> Section:
        items = [as_extra(x) for x in inputs.extra.get(name) or ()]
        if not items:
            return Section(contents=(f"- {name}: not built yet ({needs}).",))
        parts = [write_extra(inputs.out_dir, t) for t in items]
        return Section(
            tuple(p for s in parts for p in s.paths),
            tuple(c for s in parts for c in s.contents),
            "\n\n".join(s.body for s in parts),
        )

    return section


interpretability = section_for(
    "interpretability", "needs the interp stage's study and, for Table 1, ingested ratings"
)
greater_than = section_for("greater_than", "needs a greater_than circuit study in the spec")
attribution = section_for("attribution", "needs a circuits entry with `task: attribution`")
