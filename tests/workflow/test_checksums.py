"""Checksums of a task's files, and what a damaged one does (tcspec.checksums,
tcspec.tasks.integrity) on real files in a results layout; the pipeline's own runs are in
tests/workflow/test_damage.py."""

from __future__ import annotations

import json
import re

import pytest

from tcspec import atomic, layout
from tcspec.checksums import ALGORITHM, damaged, file_checksum, record
from tcspec.data.cache_format import read_by
from tcspec.tasks import integrity


@pytest.fixture
def task(tmp_path):
    """A done task folder (results/tasks/acts/a-1) with three files and a cache temporary."""
    folder = layout.task_dir(tmp_path, "acts", "a-1")
    (folder / "cache" / "shard_00000").mkdir(parents=True)
    (folder / "cache" / "manifest.json").write_text("{}")
    (folder / "cache" / "shard_00000" / "h0.npy").write_bytes(bytes(range(256)) * 64)
    (folder / "cache" / "shard_00000" / "h1.npy").write_bytes(b"\x01" * 4096)
    (folder / ".cache.tmp999").mkdir()
    (folder / ".cache.tmp999" / "x").write_bytes(b"half-written")
    outputs = integrity.outputs(folder)
    (folder / layout.DONE).write_text(json.dumps({"stage": "acts", "outputs": outputs}))
    return folder


def test_record_holds_every_written_file(task):
    outputs = json.loads((task / layout.DONE).read_text())["outputs"]
    assert sorted(outputs) == ["cache/manifest.json", "cache/shard_00000/h0.npy",
                               "cache/shard_00000/h1.npy"]  # fmt: skip
    h0 = task / "cache" / "shard_00000" / "h0.npy"
    assert outputs["cache/shard_00000/h0.npy"] == {"bytes": 16384, ALGORITHM: file_checksum(h0)}
    assert atomic.is_temp(".cache.tmp999") and not atomic.is_temp("cache")
    assert not atomic.is_temp(".tmp1") and not atomic.is_temp("x.tmp1")


def test_a_file_read_in_chunks_hashes_as_a_whole(tmp_path, monkeypatch):
    import xxhash

    from tcspec import checksums

    f = tmp_path / "f"
    f.write_bytes(bytes(range(256)) * 1000)
    monkeypatch.setattr(checksums, "CHUNK", 1000)  # many reads, the last one short
    assert file_checksum(f) == xxhash.xxh3_128_hexdigest(f.read_bytes())


def test_each_kind_of_damage_is_named(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for name in "abcd":
        (folder / name).write_bytes(name.encode() * 100)
    recorded = record(folder)
    (folder / "a").unlink()
    (folder / "b").write_bytes(b"b" * 50)
    (folder / "c").write_bytes(b"c" * 101)
    (folder / "d").write_bytes(b"d" * 99 + b"x")
    found = {f.path.name: f.why for f in damaged(folder, recorded)}
    assert found == {
        "a": "missing",
        "b": "truncated to 50 bytes (100 recorded)",
        "c": "grown to 101 bytes (100 recorded)",
        "d": f"its {ALGORITHM} checksum differs from the one recorded",
    }
    assert [f.path.name for f in damaged(folder, recorded, deep=False)] == ["a", "b", "c"]


def test_a_reader_of_some_files_hashes_only_those(task):
    """A pass over hook h0 checks h0's checksum and every file's size, not h1's checksum."""
    h1 = task / "cache" / "shard_00000" / "h1.npy"
    h1.write_bytes(b"\x02" * 4096)  # same size, other bytes
    reads = lambda rel: rel.startswith("cache/") and read_by(["h0"])(rel[len("cache/") :])  # noqa: E731
    assert integrity.problems(task, reads=reads) == []
    assert [f.path for f in integrity.problems(task)] == [h1]
    h1.write_bytes(b"\x02" * 10)
    assert [f.path for f in integrity.problems(task, reads=reads)] == [h1]


def test_damage_marks_the_task_not_done_and_is_named_until_rebuilt(task):
    shard = task / "cache" / "shard_00000" / "h0.npy"
    shard.write_bytes(b"\x00" * 100)
    message = f"damaged input {shard}: truncated to 100 bytes (16,384 recorded); made by acts a-1"
    for _ in range(2):  # found now; then from the renamed record
        with pytest.raises(
            integrity.DamagedInput, match=f"^{re.escape(message)}, now marked not done"
        ):
            integrity.verify(task, by="train g-1")
    assert not (task / layout.DONE).exists()
    kept = json.loads((task / layout.DAMAGED).read_text())
    assert kept["stage"] == "acts" and kept["damaged"]["found_by"] == "train g-1"
    assert kept["damaged"]["files"] == [f"{shard}: truncated to 100 bytes (16,384 recorded)"]
    integrity.invalidate(task, [], by="a second reader")  # that found it at the same time
    again = json.loads((task / layout.DAMAGED).read_text())
    assert again["stage"] == "acts" and again["damaged"]["found_by"] == "a second reader"


def test_every_damaged_input_is_marked_and_counted(tmp_path, task):
    other = layout.task_dir(tmp_path, "model", "m-1")
    other.mkdir(parents=True)
    (other / layout.DONE).write_text("{not json")
    (task / "cache" / "manifest.json").unlink()
    with pytest.raises(integrity.DamagedInput, match=r"manifest.json: missing; .*\(1 more damaged"):
        integrity.verify_all({task: None, other: None}, by="evaluate e-1")
    assert not (task / layout.DONE).exists() and not (other / layout.DONE).exists()
    assert (
        "not a readable record"
        in json.loads((other / layout.DAMAGED).read_text())["damaged"]["files"][0]
    )


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"outputs": {"cache/manifest.json": 3}}', "\udcff"]
)
def test_a_record_that_is_not_finish_s_is_damage(task, text):
    (task / layout.DONE).write_text(text, errors="surrogateescape")
    (found,) = integrity.problems(task)
    assert found.path == task / layout.DONE and "not a readable record" in found.why


def test_a_damaged_stored_config_is_stored_again(tmp_path):
    from tcspec.plan import compile_plan
    from tcspec.plan.store import load_task, save_task
    from tcspec.spec.loader import load_spec

    plan = compile_plan(load_spec(layout.Path(__file__).parents[1] / "workflow" / "micro.yaml"))
    t = plan.stage("train")[0]
    path = save_task(tmp_path, t)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="snakemake -n"):
        load_task(tmp_path, "train", t.id)
    assert save_task(tmp_path, t).read_bytes() == good
    mtime = path.stat().st_mtime_ns
    save_task(tmp_path, t)  # intact: left as it is
    stored = load_task(tmp_path, "train", t.id)
    assert path.stat().st_mtime_ns == mtime and (stored.config, stored.deps) == (t.config, t.deps)
