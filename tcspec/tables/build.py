"""`build_tables`: the tables a spec asks for, their index and the flattened records,
written into one folder that then holds exactly them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tcspec import atomic
from tcspec.tables import reference as reference_table
from tcspec.tables.curves import Curve
from tcspec.tables.extra import ExtraTable
from tcspec.tables.paper import REFERENCES
from tcspec.tables.records import records_frame
from tcspec.tables.registry import TABLES, builder
from tcspec.tables.section import Inputs, Section


def _check_names(include: Sequence[str], reference: str | None) -> None:
    unknown = [n for n in include if n not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"unknown reference `{reference}`; choose from {list(REFERENCES)}")


def _records_section(inputs: Inputs) -> Section:
    df = inputs.records
    path = atomic.write_text(inputs.out_dir / "results.csv", df.to_csv(index=False))
    line = (
        f"- [results.csv](results.csv): all {len(df)} records flattened, one row "
        "per record, every metric a column."
    )
    return Section((path,), (line,))


def build_tables(
    records: list[dict],
    out_dir: Path,
    *,
    include: Sequence[str],
    reference: str | None,
    title: str,
    extra: Mapping[str, Sequence[ExtraTable | tuple]] | None = None,
    curves: Sequence[Curve] = (),
) -> list[Path]:
    """Write the tables named in `include` (names of `registry.TABLES`) for `records` into
    `out_dir`, with `index.md` (every table inline, every plot shown) and `results.csv`
    (all records flattened, one row per record, every metric a column).

    `out_dir` is the tables' own folder: it is replaced as a whole (atomically), so it holds
    exactly this build's files. `records` are metrics records (see `records.records_frame`);
    `reference` optionally names a published table of `tcspec.tables.paper.REFERENCES` to show
    beside ours (its sweep is drawn on the Pareto plot of its layer); `title` heads the
    index and the plots. `extra` holds tables other stages computed, by table name
    (`interpretability`, `greater_than`): `ExtraTable`s, or `(stem, frame, caption)`;
    `curves` the trained dictionaries' training curves (`training_curves`).
    Returns the paths written (inside `out_dir`). Raises ValueError for an unknown table or
    reference name, before writing anything.
    """
    _check_names(include, reference)
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir) as tmp:
        inputs = Inputs(
            records=records_frame(records),
            out_dir=tmp,
            title=title,
            reference=REFERENCES[reference] if reference else None,
            extra=dict(extra or {}),
            curves=tuple(curves),
        )
        sections = [builder(name)(inputs) for name in TABLES if name in include]
        if reference:
            sections.append(reference_table.section(inputs))
        sections.append(_records_section(inputs))
        contents = [line for s in sections for line in s.contents]
        bodies = [s.body for s in sections if s.body is not None]
        index = "\n\n".join([f"# {title}", "\n".join(contents), *bodies]) + "\n"
        written = [p for s in sections for p in s.paths]
        written.append(atomic.write_text(tmp / "index.md", index))
    return [out_dir / p.name for p in written]
