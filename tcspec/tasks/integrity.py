"""A task's outputs, checksummed when it finishes and verified before anything reads them.

``outputs(folder)`` is what ``tcspec.tasks.finish`` records under ``"outputs"`` in every
task.json: each file of the task's folder with its size and xxh3-128 digest
(``tcspec.checksums``). ``verify(folder, by)`` is the one check every reader of another
task's files goes through: a job, for each of its upstream tasks before it starts
(``run_task``); ``tcspec status`` for every done task of the spec; ``tcspec export`` for
the dictionary it writes; ``tcspec interp ingest`` for the study packet.

A job that reads only some of an upstream task's files (a training pass: the cache shards of
its own hooks) checks every file's size but only those files' checksums: its stage module's
``reads(task)`` names them.

Damage marks the task not done: its task.json is renamed to task.damaged.json, with what
was found and by whom added. task.json is the output of the task's Snakemake rule (of its
training or evaluation pass for a train or evaluate task: passes are declared for members
not done), and Snakemake reruns a job whose output is missing whatever its metadata says,
then everything downstream (their inputs are newer than their outputs). So the plain command
that met the damage rebuilds the task when run again, and nothing else needs removing: the
rebuild overwrites the damaged files. The renamed record keeps the finding visible
(``tcspec status``, and any job that would read the task) until then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tcspec import atomic, checksums, layout
from tcspec.checksums import DamagedFile

OUTPUTS = "outputs"
"""Key of the outputs' checksums in a task's record."""
Reads = Callable[[str], bool]
"""Which files of a task's folder (relative paths) a reader opens, when not all."""


class DamagedInput(ValueError):
    """A task's outputs are damaged (or were found so and not rebuilt yet): one line naming
    the file, why, and the task that made it."""


def outputs(folder: Path) -> dict[str, dict]:
    """The checksums ``finish`` records: every file under the task folder but its record
    (task.json, task.damaged.json) and writers' temporaries."""
    records = {layout.DONE, layout.DAMAGED}

    def skip(rel: str) -> bool:
        return rel in records or any(atomic.is_temp(part) for part in rel.split("/"))

    return checksums.record(folder, skip)


def problems(folder: Path, deep: bool = True, reads: Reads | None = None) -> list[DamagedFile]:
    """What is damaged in a done task's folder: its record (unreadable), or files that
    differ from the checksums it holds: every file's size, and the checksum of those a
    reader ``reads`` (paths relative to the folder; all when None), unless not ``deep``. A
    record without checksums (written before they were recorded) has nothing to check."""
    done = Path(folder) / layout.DONE
    try:
        recorded = json.loads(done.read_text()).get(OUTPUTS, {})
        return checksums.damaged(folder, recorded, deep, reads)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:  # not finish's
        return [DamagedFile(done, f"not a readable record ({type(e).__name__})")]


def invalidate(folder: Path, found: list[DamagedFile], by: str) -> None:
    """Mark a task not done: its record becomes task.damaged.json with ``found`` added (the
    record kept there already when another reader marked it first)."""
    folder = Path(folder)
    done = folder / layout.DONE
    record = {}
    for path in (done, folder / layout.DAMAGED):
        try:
            record = json.loads(path.read_text())
            break
        except (OSError, ValueError):
            continue
    record = record if isinstance(record, dict) else {}
    record["damaged"] = {
        "files": [str(f) for f in found],
        "found_by": by,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic.write_json(folder / layout.DAMAGED, record)
    done.unlink(missing_ok=True)


def recorded_damage(folder: Path) -> str | None:
    """The first damaged file a task's task.damaged.json names, when it is not done."""
    folder = Path(folder)
    if (folder / layout.DONE).exists() or not (folder / layout.DAMAGED).exists():
        return None
    try:
        files = json.loads((folder / layout.DAMAGED).read_text())["damaged"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = []
    return files[0] if files else f"{folder / layout.DAMAGED} (unreadable)"


def verify(folder: Path, by: str, reads: Reads | None = None) -> None:
    """Check a task's outputs before reading them (``reads``: as for ``problems``). On
    damage, found now (the task is then marked not done) or earlier and not rebuilt yet,
    raise DamagedInput naming the file and the task; a task neither done nor damaged
    passes (the caller decides)."""
    folder = Path(folder)
    stage, task_id = layout.task_of_dir(folder)
    if (folder / layout.DONE).exists():
        found = problems(folder, reads=reads)
        if not found:
            return
        invalidate(folder, found, by)
        first = str(found[0])
    elif (first := recorded_damage(folder)) is None:
        return
    raise DamagedInput(
        f"damaged input {first}; made by {stage} {task_id}, now marked not done: rerun to "
        "rebuild it"
    )


def verify_all(folders: dict[Path, Reads | None], by: str) -> None:
    """``verify`` each folder (with what the caller reads of it), so that every damaged one
    is marked not done (one rerun rebuilds them all); then raise DamagedInput for the
    first, counting the others."""
    found = []
    for folder, reads in folders.items():
        try:
            verify(folder, by, reads)
        except DamagedInput as e:
            found.append(str(e))
    if found:
        more = f" ({len(found) - 1} more damaged inputs)" if len(found) > 1 else ""
        raise DamagedInput(found[0] + more)
