"""What checking outputs costs: every task records the xxh3-128 of each file it writes, and
every job verifies its upstream tasks' files before it starts (`tcspec.tasks.integrity`).

- hash: `tcspec.checksums.file_checksum` over one file in the page cache, against reading
  the same file bare (what any check costs at least) and against sha256 (the token
  manifest's checksum), interleaved; MB/s.
- jobs: for every finished job of a results folder (the quickstart's, `--results`), the
  time to check its upstream tasks' files as `run_task` does before the job (every size,
  the checksums of the files it reads) and to record its own outputs' checksums as
  `finish` does, against the job's own wall time (task.json), summed by stage. Read-only:
  nothing is marked damaged or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import interleaved, markdown_table
from tcspec import layout
from tcspec.checksums import CHUNK, file_checksum
from tcspec.plan.stages import PASSES, STAGES
from tcspec.plan.store import load_task
from tcspec.tasks import inputs, integrity


def _read(path: Path) -> None:
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _sha256(path: Path) -> None:
    h = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])


def hash_table(mb: int, rounds: int) -> tuple[str, dict]:
    """MB/s of the checksum, a bare read and sha256 over one `mb` MB file (page cache)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.bin"
        path.write_bytes(os.urandom(mb << 20))
        fns = {
            "xxh3-128 (tcspec.checksums)": lambda: file_checksum(path),
            "bare read": lambda: _read(path),
            "sha256": lambda: _sha256(path),
        }
        timings = interleaved(fns, rounds)
    rows = [[name, mb / t.wall(), mb / t.wall("median")] for name, t in timings.items()]
    xxh = timings["xxh3-128 (tcspec.checksums)"].wall()
    text = markdown_table([f"reads a file of {mb} MB", "MB/s (best)", "MB/s (median)"], rows)
    return text, {
        "integrity: xxh3-128 file checksum MB/s": mb / xxh,
        "integrity: checksum time / bare read time": xxh / timings["bare read"].wall(),
    }


def jobs_of(results: Path) -> dict[tuple[str, str], tuple[float, list[Path]]]:
    """(stage, id) -> (wall time, the task folders it wrote) of every finished job with
    checksums: a training or evaluation pass once (its stored pass config), else the task."""
    jobs: dict[tuple[str, str], tuple[float, list[Path]]] = {}
    passes = {member: stage for stage, member in PASSES.items()}
    for done in sorted(Path(results).glob(f"tasks/*/*/{layout.DONE}")):
        record = json.loads(done.read_text())
        wall = record.get("provenance", {}).get("wall_s")
        if wall is None or integrity.OUTPUTS not in record:
            continue
        stage, job = record["stage"], record.get("summary", {}).get("pass")
        key = (passes[stage], job) if job else (stage, record["id"])
        jobs[key] = (wall, [*jobs.get(key, (0, []))[1], done.parent])
    return jobs


def job_table(results: Path) -> tuple[str, dict]:
    """By stage: jobs, upstream MB hashed, seconds checking them, seconds recording the
    job's own outputs' checksums (as finish does), seconds of the jobs."""
    by_stage: dict[str, list[float]] = {}
    for (stage, job_id), (wall, written) in jobs_of(results).items():
        size, t0 = 0, time.perf_counter()
        for folder, reads in inputs(load_task(results, stage, job_id), results).items():
            assert integrity.problems(folder, reads=reads) == [], folder
            outputs = json.loads((folder / layout.DONE).read_text())[integrity.OUTPUTS]
            size += sum(e["bytes"] for f, e in outputs.items() if reads is None or reads(f))
        t1 = time.perf_counter()
        for folder in written:
            integrity.outputs(folder)
        row = by_stage.setdefault(PASSES.get(stage, stage), [0] * 5)
        for i, x in enumerate([1, size / 2**20, t1 - t0, time.perf_counter() - t1, wall]):
            row[i] += x
    if not by_stage:
        return f"No finished tasks with checksums in `{results}`: run the quickstart first.", {}
    total = [sum(r[i] for r in by_stage.values()) for i in range(5)]
    rows = [[s, *by_stage[s]] for s in STAGES if s in by_stage] + [["all", *total]]
    rows = [[*r, r[3] / r[5], r[4] / r[5]] for r in rows]
    header = ["stage", "jobs", "inputs hashed (MB)", "checking (s)", "recording (s)",
              "jobs (s)", "checking / job", "recording / job"]  # fmt: skip
    return markdown_table(header, rows), {
        "integrity: checking / job time (all)": total[2] / total[4],
        "integrity: recording / job time (all)": total[3] / total[4],
    }


def run(tiny: bool, results: Path = Path("results")) -> tuple[str, dict]:
    hashes, headline = hash_table(8 if tiny else 512, 2 if tiny else 5)
    jobs, more = job_table(results)
    text = (
        f"### checksum throughput\n\n{hashes}\n\n### checking inputs vs the jobs\n\n"
        f"Every finished job of `{results}`: its upstream tasks' files checked as the job "
        "checks them before it starts (page cache warm, as the job then reads them), and its "
        f"own outputs' checksums computed as it records them when it ends.\n\n{jobs}"
    )
    return text, headline | more
