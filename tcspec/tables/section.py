"""What every table builder receives (`Inputs`) and returns (`Section`), and the writer of
a table's three files (`write_table`; `table_section` also links them in the index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tcspec import atomic
from tcspec.paper import Reference
from tcspec.tables.format import Column, latex, markdown

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


def write_table(
    out_dir: Path,
    name: str,
    df: pd.DataFrame,
    columns: Sequence[Column],
    csv: pd.DataFrame,
    caption: str,
    notes: Sequence[str],
) -> tuple[list[Path], str]:
    """`name.md`, `name.tex` (shown cells of `df`), `name.csv` (raw `csv`); returns the paths
    and the Markdown body."""
    md = "\n\n".join([markdown(df, columns), *notes])
    tex_notes = "% needs \\usepackage{booktabs}\n" + "".join(f"% {n}\n" for n in notes)
    tex = tex_notes + latex(df, columns, caption, f"tab:{name}")
    paths = [
        atomic.write_text(out_dir / f"{name}.md", f"## {caption}\n\n{md}\n"),
        atomic.write_text(out_dir / f"{name}.tex", tex),
        atomic.write_text(out_dir / f"{name}.csv", csv.to_csv(index=False)),
    ]
    return paths, md


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
    """`write_table`'s files in `inputs.out_dir` as a `Section`: an index line linking
    `name.md` (.tex, .csv) followed by `about`, and the table under its caption."""
    paths, md = write_table(inputs.out_dir, name, df, columns, csv, caption, notes)
    line = f"- [{name}.md]({name}.md) (.tex, .csv): {about}"
    return Section(tuple(paths), (line,), f"## {caption}\n\n{md}")
