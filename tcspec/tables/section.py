"""What every table builder receives (`Inputs`) and returns (`Section`), and the writer of
a table's three files and its index line (`table_section`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tcspec import atomic
from tcspec.tables.format import Column, latex, markdown
from tcspec.tables.paper import Reference

if TYPE_CHECKING:
    from tcspec.tables.curves import Curve
    from tcspec.tables.extra import ExtraTable


@dataclass(frozen=True)
class Inputs:
    """One build: the flattened records, where files go, and what else was asked for."""

    records: pd.DataFrame
    """`records_frame` of the metrics records."""
    out_dir: Path
    """Folder the files are written into."""
    title: str
    """Heads the index and the plots."""
    reference: Reference | None = None
    """Published numbers shown beside ours."""
    extra: Mapping[str, Sequence[ExtraTable]] = field(default_factory=dict)
    """Tables other stages computed, by table name."""
    curves: Sequence[Curve] = ()
    """The trained dictionaries' training curves."""


@dataclass(frozen=True)
class Section:
    """What one table adds: files written, lines of the index's contents, its index body."""

    paths: tuple[Path, ...] = ()
    contents: tuple[str, ...] = ()
    body: str | None = None


def table_section(
    inputs: Inputs,
    name: str,
    df: pd.DataFrame,
    columns: Sequence[Column],
    csv: pd.DataFrame,
    caption: str,
    notes: Sequence[str],
    about: str,
) -> Section:
    """`name.md`, `name.tex` (shown cells of `df`, then `notes`), `name.csv` (raw `csv`) in
    `inputs.out_dir`, as a `Section`: an index line linking `name.md` (.tex, .csv) followed
    by `about`, and the table under its caption."""
    md = "\n\n".join([markdown(df, columns), *notes])
    tex_notes = "% needs \\usepackage{booktabs}\n" + "".join(f"% {n}\n" for n in notes)
    tex = tex_notes + latex(df, columns, caption, f"tab:{name}")
    out = inputs.out_dir
    paths = (
        atomic.write_text(out / f"{name}.md", f"## {caption}\n\n{md}\n"),
        atomic.write_text(out / f"{name}.tex", tex),
        atomic.write_text(out / f"{name}.csv", csv.to_csv(index=False)),
    )
    line = f"- [{name}.md]({name}.md) (.tex, .csv): {about}"
    return Section(paths, (line,), f"## {caption}\n\n{md}")
