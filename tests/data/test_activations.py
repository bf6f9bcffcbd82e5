"""The acts stage: caching hook activations to shards and reading them back shuffled."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import numpy as np
import pytest
import torch
import xxhash
from transformer_lens import HookedTransformer, HookedTransformerConfig

import tcspec.data.cache_writer as writer
from tcspec.data.cache import ActivationReader, cache_activations
from tcspec.data.cache_format import CacheError

torch.set_num_threads(1)

BOS, VOCAB, CTX = 0, 97, 12
HOOKS = [
    "blocks.0.ln2.hook_normalized",
    "blocks.0.hook_mlp_out",
    "blocks.1.ln2.hook_normalized",
    "blocks.1.mlp.hook_post",
]
IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_mlp=64, n_heads=2, d_head=16, n_ctx=32, d_vocab=VOCAB,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """20 BOS-led contexts of random tokens, int32 [20, CTX]."""
    t = np.random.default_rng(0).integers(1, VOCAB, size=(20, CTX)).astype(np.int32)
    t[:, 0] = BOS
    return t


@pytest.fixture(scope="module")
def reference(model, tokens) -> dict[str, np.ndarray]:
    """run_with_cache on all contexts at once, BOS position dropped: {hook: [rows, d]}."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return {h: cache[h][:, 1:].reshape(-1, cache[h].shape[-1]).numpy() for h in HOOKS}


@pytest.fixture(scope="module")
def cache_dir(model, tokens, tmp_path_factory):
    """A float32 cache of 220 rows in shards of 50 (the last holds 20)."""
    out = tmp_path_factory.mktemp("acts") / "cache"
    cache_activations(
        model, tokens, HOOKS, out, batch_contexts=3, shard_tokens=50, exclude_tokens=(BOS,),
        progress=False, meta={"model": "m-123", "tokens": "t-456"},
    )  # fmt: skip
    return out


def read_all(cache_dir, hook) -> np.ndarray:
    """Concatenate a hook's shards through plain np.load memory maps."""
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    parts = [
        np.load(cache_dir / s["files"][hook]["file"], mmap_mode="r") for s in manifest["shards"]
    ]
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------- caching
def test_round_trip_equals_run_with_cache(cache_dir, reference):
    for h in HOOKS:
        np.testing.assert_allclose(read_all(cache_dir, h), reference[h], rtol=1e-5, atol=1e-5)


def test_manifest_describes_the_cache(cache_dir):
    m = json.loads((cache_dir / "manifest.json").read_text())
    assert m["dtype"] == "float32" and m["exclude_tokens"] == [BOS]
    assert m["hooks"] == {
        "blocks.0.ln2.hook_normalized": {"width": 32},
        "blocks.0.hook_mlp_out": {"width": 32},
        "blocks.1.ln2.hook_normalized": {"width": 32},
        "blocks.1.mlp.hook_post": {"width": 64},
    }
    assert m["total_rows"] == 20 * (CTX - 1) == 220
    assert [s["rows"] for s in m["shards"]] == [50, 50, 50, 50, 20]
    assert m["meta"] == {"model": "m-123", "tokens": "t-456"}
    for shard in m["shards"]:
        for entry in shard["files"].values():
            data = (cache_dir / entry["file"]).read_bytes()
            assert len(data) == entry["bytes"]
            assert xxhash.xxh3_128_hexdigest(data) == entry["checksum"]
    assert not list(cache_dir.parent.glob(".*tmp*"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(model, tokens, reference, tmp_path, dtype):
    out = tmp_path / dtype
    m = cache_activations(
        model, tokens, HOOKS[:2], out, dtype=dtype, exclude_tokens=(BOS,), progress=False
    )
    stored = read_all(out, OUT)
    if dtype == "bfloat16":
        assert m["storage_dtype"] == "uint16" and stored.dtype == np.uint16
        got = torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16)
        want = torch.from_numpy(reference[OUT]).to(torch.bfloat16)
    else:
        assert stored.dtype == np.float16
        got, want = torch.from_numpy(stored), torch.from_numpy(reference[OUT]).half()
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    # the reader gives float32 back
    batch = next(ActivationReader(out, [OUT], batch_size=8, seed=0).iter_batches())
    assert batch[OUT].dtype == torch.float32 and batch[OUT].shape == (8, 32)


def test_keep_bos(model, tokens, tmp_path):
    m = cache_activations(model, tokens[:2], [OUT], tmp_path / "c", progress=False)
    assert m["total_rows"] == 2 * CTX and m["exclude_tokens"] == []


def test_every_bos_is_left_out_wherever_it_sits(model, tokens, tmp_path):
    """A document's BOS inside a packed row is excluded too (as evaluation excludes it):
    the cache holds exactly the non-BOS positions, in token order."""
    packed = tokens[:4].copy()
    packed[1, 5] = packed[3, 2] = packed[3, 9] = BOS  # three documents start mid-row
    m = cache_activations(
        model, packed, [IN, OUT], tmp_path / "c", batch_contexts=3, shard_tokens=7,
        exclude_tokens=(BOS,), progress=False,
    )  # fmt: skip
    assert m["total_rows"] == 4 * CTX - 4 - 3 == 41
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.as_tensor(packed, dtype=torch.long))
    keep = torch.as_tensor(packed != BOS)  # [4, CTX]
    for h in (IN, OUT):
        np.testing.assert_allclose(read_all(tmp_path / "c", h), cache[h][keep].numpy(),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_unknown_hook_is_named(model, tokens, tmp_path):
    with pytest.raises(ValueError, match=r"no hook 'blocks.0.hook_mlp_outt'"):
        cache_activations(model, tokens, ["blocks.0.hook_mlp_outt"], tmp_path / "c")


def test_disk_space_check_names_both_numbers(model, tokens, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(ValueError, match=r"needs about 157\.2 kB.*has 1\.0 kB free"):
        cache_activations(
            model, tokens, HOOKS, tmp_path / "c", exclude_tokens=(BOS,), progress=False
        )
    assert not (tmp_path / "c").exists()


def test_failure_midway_leaves_no_cache(model, tokens, tmp_path):
    bad = tokens.copy()
    bad[15, 3] = VOCAB + 5  # out of the vocabulary: the embedding fails on a late batch
    out = tmp_path / "cache"
    with pytest.raises(IndexError):
        cache_activations(model, bad, HOOKS, out, batch_contexts=4, shard_tokens=30, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_write_error_is_raised_and_leaves_no_cache(model, tokens, tmp_path, monkeypatch):
    write = writer._ShardWriter.write
    calls = []

    def failing_write(self, arrays):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        write(self, arrays)

    monkeypatch.setattr(writer._ShardWriter, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        cache_activations(model, tokens, HOOKS, tmp_path / "c", batch_contexts=2, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- reading
def row_ids(batches, reference) -> np.ndarray:
    """Which cache row each batch row is (rows of the input hook are unique)."""
    index = {r.tobytes(): i for i, r in enumerate(reference[IN])}
    return np.array([index[r.numpy().tobytes()] for b in batches for r in b[IN]])


def take(it, n):
    return [next(it) for _ in range(n)]


def test_reader_pairs_rows_and_covers_an_epoch(cache_dir, reference):
    reader = ActivationReader(cache_dir, [IN, OUT], batch_size=16, seed=3, buffer_shards=2)
    assert reader.steps_per_epoch == 220 // 16 == 13
    batches = take(reader.iter_batches(), 13)
    ids = row_ids(batches, reference)
    assert len(set(ids)) == len(ids) == 13 * 16  # no row twice within an epoch
    assert not (np.diff(ids) == 1).all()  # shuffled
    outs = torch.cat([b[OUT] for b in batches]).numpy()
    np.testing.assert_allclose(outs, reference[OUT][ids], rtol=1e-5, atol=1e-5)


def test_reader_is_deterministic_and_resumable(cache_dir):
    def run(seed, start, n):
        reader = ActivationReader(cache_dir, [IN, OUT], batch_size=16, seed=seed, buffer_shards=2)
        return take(reader.iter_batches(start), n)

    full = run(7, 0, 40)  # three epochs and a bit
    for start in (1, 5, 12, 13, 14, 27, 33):
        for a, b in zip(run(7, start, 40 - start), full[start:], strict=True):
            for k in (IN, OUT):
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    other = run(8, 0, 1)[0]
    assert not torch.equal(other[IN], full[0][IN])


def test_epochs_wrap_around_with_a_new_order(cache_dir, reference):
    reader = ActivationReader(cache_dir, [IN], batch_size=20, seed=0, buffer_shards=2)
    spe = reader.steps_per_epoch  # 11: the 220 rows exactly
    it = reader.iter_batches()
    e0, e1 = row_ids(take(it, spe), reference), row_ids(take(it, spe), reference)
    assert sorted(e0) == sorted(e1) == list(range(220))
    assert not np.array_equal(e0, e1)


def test_skipped_groups_are_not_read(cache_dir, tmp_path):
    """Resuming inside the last shard group never opens the groups before it."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    reader = ActivationReader(copy, [IN], batch_size=10, seed=1, buffer_shards=2)
    groups = reader._groups(0)
    first_shard = reader.shards[groups[0][0][0]]
    corrupt(copy / first_shard["files"][IN]["file"])
    last_lo = groups[-1][1]
    batch = next(reader.iter_batches(start_step=last_lo // 10 + 1))
    assert batch[IN].shape == (10, 32)
    with pytest.raises(CacheError, match=first_shard["name"]):
        next(reader.iter_batches(0))


def corrupt(path) -> None:
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_truncated_shard_is_named_on_open(cache_dir, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    path = copy / "shard_00002" / f"{OUT}.npy"
    os.truncate(path, path.stat().st_size - 4)
    with pytest.raises(CacheError, match=r"shard_00002/blocks\.0\.hook_mlp_out\.npy is truncated"):
        ActivationReader(copy, [IN, OUT], batch_size=16, seed=0)
    ActivationReader(copy, [IN], batch_size=16, seed=0)  # other hooks stay readable
    path.unlink()
    with pytest.raises(CacheError, match="is missing"):
        ActivationReader(copy, [OUT], batch_size=16, seed=0)


def test_corrupted_shard_is_named_when_read(cache_dir, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    corrupt(copy / "shard_00003" / f"{IN}.npy")
    reader = ActivationReader(copy, [IN], batch_size=20, seed=0)
    with pytest.raises(
        CacheError, match=r"shard_00003/blocks\.0\.ln2\.hook_normalized\.npy is corr"
    ):
        take(reader.iter_batches(), reader.steps_per_epoch)
    unverified = ActivationReader(copy, [IN], batch_size=20, seed=0, verify=False)
    assert len(take(unverified.iter_batches(), unverified.steps_per_epoch)) == 11


def test_reader_rejects_unknown_keys_and_incomplete_caches(cache_dir, tmp_path):
    with pytest.raises(ValueError, match=r"no hooks \['blocks.5.hook_mlp_out'\]"):
        ActivationReader(cache_dir, ["blocks.5.hook_mlp_out"], batch_size=4, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ActivationReader(cache_dir, [IN], batch_size=1000, seed=0)
    with pytest.raises(CacheError, match="not a complete activation cache"):
        ActivationReader(tmp_path, [IN], batch_size=4, seed=0)
