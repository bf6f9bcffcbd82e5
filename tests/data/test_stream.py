"""Streamed activations: order, shuffling, resume, equivalence with the cache, estimates."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.data.cache import cache_activations
from tcspec.data.stream import ActivationStream, StreamConfig
from tcspec.dictionaries.coders import CoderConfig
from tcspec.models.hooks import full_name
from tcspec.plan.cost import StreamShape, estimate_memory, n_params
from tcspec.plan.stream import split_by_memory
from tcspec.spec import SAESpec, TranscoderSpec
from tcspec.training import CHECKPOINT, Member, read_checkpoint, train_group
from tcspec.vocab import WEIGHTS_FILE

torch.set_num_threads(1)

BOS, VOCAB, CTX, N_CTX = 0, 97, 12, 21
HOOKS = (
    "blocks.0.ln2.hook_normalized",
    "blocks.0.hook_mlp_out",
    "blocks.1.ln2.hook_normalized",
    "blocks.1.hook_mlp_out",
)


def tiny_model(dtype: torch.dtype = torch.float32) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_mlp=64, n_heads=2, d_head=16, n_ctx=32, d_vocab=VOCAB,
        act_fn="gelu", normalization_type="LN", seed=0, dtype=dtype,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """21 BOS-led contexts of random tokens, int32 [21, CTX] (the last forward batch of 4
    contexts is partial)."""
    t = np.random.default_rng(0).integers(1, VOCAB, size=(N_CTX, CTX)).astype(np.int32)
    t[:, 0] = BOS
    return t


@pytest.fixture(scope="module")
def reference(model, tokens) -> dict[str, torch.Tensor]:
    """run_with_cache over all contexts at once, BOS dropped: {hook: [231, d]}."""
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return {h: cache[h][:, 1:].reshape(-1, cache[h].shape[-1]) for h in HOOKS}


def stream(model, tokens, **kw) -> ActivationStream:
    cfg = dict(hooks=HOOKS, batch_size=16, buffer_tokens=64, batch_contexts=4, seed=3,
               exclude_tokens=(BOS,)) | kw  # fmt: skip
    return ActivationStream(model, tokens, StreamConfig(**cfg))


def take(it, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(it) for _ in range(n)]


# ------------------------------------------------------------------------ order, shuffling
def test_unshuffled_stream_is_token_order_across_epochs(model, tokens, reference):
    s = stream(model, tokens, shuffle=False)
    batches = take(s.iter_batches(0), 30)  # 480 rows: two epochs of 231 and a bit
    for h in HOOKS:
        got = torch.cat([b[h] for b in batches])  # [480, d]
        want = torch.cat([reference[h]] * 3)[:480]
        assert got.dtype == torch.float32 and got.shape == (480, reference[h].shape[1])
        assert torch.allclose(got, want, atol=1e-5), h


def test_shuffled_rows_come_from_the_tokens_and_stay_paired(model, tokens, reference):
    s = stream(model, tokens)
    batches = take(s.iter_batches(0), 14)  # 224 of the 231 rows of an epoch
    ref = reference[HOOKS[0]]
    rows = []
    for b in batches:
        d = torch.cdist(b[HOOKS[0]], ref, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = d.argmin(1)
        assert d.min(1).values.max() < 1e-4
        for h in HOOKS[1:]:  # every hook's row i is the same token position
            assert torch.allclose(b[h], reference[h][nearest], atol=1e-5)
        rows += nearest.tolist()
    assert rows != sorted(rows)  # shuffled
    # the first fill runs two forward batches (88 rows): the first batch draws from them
    assert max(rows[:16]) < 88


@pytest.mark.parametrize("exclude", [(BOS,), ()])
def test_stream_holds_the_rows_the_cache_holds(model, tokens, tmp_path, exclude):
    """Documents starting mid-row: under `exclude` every BOS is left out, wherever it sits,
    by the stream as by the cache; under `include` every position is there."""
    packed = tokens.copy()
    packed[2, 6] = packed[9, 3] = packed[9, 10] = BOS
    m = cache_activations(model, packed, list(HOOKS), tmp_path / "c", shard_tokens=1000,
                          exclude_tokens=exclude, progress=False)  # fmt: skip
    n = m["total_rows"]
    assert n == (N_CTX * CTX - N_CTX - 3 if exclude else N_CTX * CTX)
    s = stream(model, packed, shuffle=False, exclude_tokens=exclude)
    got = take(s.iter_batches(0), n // 16)
    for h in HOOKS:
        want = np.load(tmp_path / "c" / m["shards"][0]["files"][h]["file"])[: n // 16 * 16]
        assert torch.allclose(torch.cat([b[h] for b in got]), torch.from_numpy(want), atol=1e-5)


def test_seed_sets_the_order(model, tokens):
    a = take(stream(model, tokens, seed=3).iter_batches(0), 6)
    b = take(stream(model, tokens, seed=3).iter_batches(0), 6)
    c = take(stream(model, tokens, seed=4).iter_batches(0), 6)
    assert all(torch.equal(x[h], y[h]) for x, y in zip(a, b) for h in HOOKS)
    assert not torch.equal(a[2][HOOKS[0]], c[2][HOOKS[0]])


def test_only_the_blocks_needed_run(model, tokens):
    ran = []
    handle = model.blocks[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        next(stream(model, tokens).iter_batches(0))
    finally:
        handle.remove()
    assert ran == []  # block 2 is past the deepest hook


def test_half_precision_model_gives_float32_batches(tokens):
    m = tiny_model(torch.bfloat16)
    s = stream(m, tokens, shuffle=False)
    b = next(s.iter_batches(0))
    assert s.buffer[HOOKS[1]].dtype == torch.bfloat16
    assert s.buffer[HOOKS[0]].dtype == torch.float32  # TransformerLens's LayerNorm is fp32
    shape = StreamShape(batch_size=16, buffer_tokens=64, rows_per_forward=48, act_bytes=2)
    cfgs = [c.config for c in members(Path("unused"))]
    est = estimate_memory(cfgs, s.widths, shape)
    assert est.buffer == sum(buf.nbytes for buf in s.buffer.values()) == 112 * 32 * (4 + 2) * 2
    assert b[HOOKS[1]].dtype == torch.float32
    with torch.no_grad():
        _, cache = m.run_with_cache(torch.as_tensor(tokens[:4], dtype=torch.long))
    want = cache[HOOKS[1]][:, 1:].reshape(-1, 32)[:16].float()
    assert torch.equal(b[HOOKS[1]], want)


def test_bad_configs_are_refused(model, tokens):
    with pytest.raises(ValueError, match="two batches"):
        StreamConfig(hooks=HOOKS, batch_size=40, buffer_tokens=64)
    with pytest.raises(ValueError, match="distinct"):
        StreamConfig(hooks=(HOOKS[0], HOOKS[0]), batch_size=4, buffer_tokens=64)
    with pytest.raises(ValueError, match="no hook"):
        stream(model, tokens, hooks=("blocks.0.hook_mlp_outt",))


# ---------------------------------------------------------------------------- resume
def roundtrip(state: dict) -> dict:
    """Through torch.save and a weights-only load, as the trainer's checkpoint stores it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("at", [0, 1, 3, 5, 13, 16])  # before/after refills, past an epoch
def test_resume_from_state_is_bitwise(model, tokens, at, shuffle):
    full = take(stream(model, tokens, shuffle=shuffle).iter_batches(0), at + 12)
    first = stream(model, tokens, shuffle=shuffle)
    it = first.iter_batches(0)
    take(it, at)
    state = roundtrip(first.state_dict())
    assert state["step"] == at
    resumed = stream(model, tokens, shuffle=shuffle)
    resumed.load_state_dict(state)
    for h in HOOKS:  # the rebuilt buffer holds the very rows the saved one held
        held = state["slots"]
        assert torch.equal(resumed.buffer[h][held], first.buffer[h][held])
    again = take(resumed.iter_batches(at), 12)
    for x, y in zip(full[at:], again):
        for h in HOOKS:
            assert torch.equal(x[h], y[h]), (at, h)


def test_iter_batches_from_a_step_replays(model, tokens):
    full = take(stream(model, tokens).iter_batches(0), 20)
    late = take(stream(model, tokens).iter_batches(9), 11)
    assert all(torch.equal(x[h], y[h]) for x, y in zip(full[9:], late) for h in HOOKS)
    s = stream(model, tokens)
    take(s.iter_batches(0), 12)
    back = take(s.iter_batches(4), 2)  # an earlier step restarts from the beginning
    assert torch.equal(back[0][HOOKS[0]], full[4][HOOKS[0]])


def test_state_of_another_stream_is_refused(model, tokens):
    s = stream(model, tokens)
    take(s.iter_batches(0), 2)
    other = stream(model, tokens, seed=9)
    with pytest.raises(ValueError, match="saved for"):
        other.load_state_dict(s.state_dict())
    changed = tokens.copy()
    changed[5, 3] += 1  # same shape, other tokens
    with pytest.raises(ValueError, match="saved for"):
        stream(model, changed).load_state_dict(s.state_dict())


def test_state_holds_no_activations(model, tokens):
    s = stream(model, tokens)
    take(s.iter_batches(0), 3)
    state = s.state_dict()
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    assert sum(t.nbytes for t in tensors) <= 2 * 8 * 108 + 5056  # slots, origins, RNG


# ---------------------------------------------------------------- training: stream = cache
def members(root: Path, layers=(0, 1), sae_layer: int = 1, **opts) -> list[Member]:
    base = dict(d_sae=48, lr=3e-3, lr_warmup_steps=5, batch_size=16, checkpoint_every=8)
    base |= opts
    out = []
    for layer in layers:
        i, o = full_name(layer, "ln2.hook_normalized"), full_name(layer, "hook_mlp_out")
        for l1 in (1e-3, 1e-2):
            spec = TranscoderSpec(kind="transcoder", l1=l1, **base)
            cfg = CoderConfig("transcoder", 32, 32, 48, in_hook=i, out_hook=o, layer=layer)
            out.append(Member(f"tc-L{layer}-{l1}", spec, cfg, i, o, root / f"L{layer}-{l1}", 0))
    h = full_name(sae_layer, "hook_mlp_out")
    spec = SAESpec(kind="sae", l1=1e-3, dead_features="ghost_grads", dead_window=3, **base)
    cfg = CoderConfig("sae", 32, 32, 48, in_hook=h, out_hook=h, layer=sae_layer)
    return out + [Member("sae", spec, cfg, h, h, root / "sae", 7)]


def ordered_cache_batches(cache_dir: Path, batch_size: int):
    """The cache's rows in token order (its shards one after another), batch by batch."""
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    rows = {
        h: np.concatenate([np.load(cache_dir / s["files"][h]["file"]) for s in manifest["shards"]])
        for h in manifest["hooks"]
    }  # {hook: [total_rows, d]}

    def batches(start: int):
        for step in range(start, manifest["total_rows"] // batch_size):
            sl = slice(step * batch_size, (step + 1) * batch_size)
            yield {h: torch.from_numpy(a[sl].copy()) for h, a in rows.items()}

    return batches


def trained(ms: list[Member]) -> dict[str, dict[str, torch.Tensor]]:
    return {m.name: load_file(str(m.out_dir / WEIGHTS_FILE)) for m in ms}


def test_unshuffled_stream_trains_what_the_cache_trains(model, tokens, tmp_path):
    cache = tmp_path / "acts" / "cache"
    cache_activations(model, tokens, list(HOOKS), cache, batch_contexts=4, shard_tokens=50,
                      exclude_tokens=(BOS,), progress=False)  # fmt: skip
    steps = 14  # 224 of the 231 rows
    from_cache = members(tmp_path / "cache")
    train_group(from_cache, ordered_cache_batches(cache, 16), steps, tmp_path / "ck1",
                progress=False, log=lambda s: None)  # fmt: skip
    from_stream = members(tmp_path / "stream")
    src = stream(model, tokens, shuffle=False)
    train_group(from_stream, src.iter_batches, steps, tmp_path / "ck2", progress=False,
                log=lambda s: None)  # fmt: skip
    a, b = trained(from_cache), trained(from_stream)
    assert len(a) == 5
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def test_unshuffled_stream_trains_the_clt_the_cache_trains(model, tokens, tmp_path):
    """A CLT over blocks 0-1 (all four hooks from one forward) trained from the unshuffled
    stream, the stream itself as the source (its state in each checkpoint), equals bitwise
    the CLT trained on the cache's rows in token order: same forward batches, so the same
    activations, paired across layers row by row.

    Shuffled, the two cannot agree bitwise by design: the cache's reader permutes shards and
    their rows with permutations seeded by (seed, epoch, group); the stream permutes a
    buffer refilled from token order. The batches differ from step 0, so training differs;
    what the stream feeds a shuffled pass (rows of the tokens, paired across hooks) is
    `test_shuffled_rows_come_from_the_tokens_and_stay_paired`."""
    from tcspec.dictionaries.clt import CLTConfig
    from tcspec.spec import CLTSpec
    from tcspec.training import train
    from tcspec.training.clt import CLTRun

    cache = tmp_path / "acts" / "cache"
    cache_activations(model, tokens, list(HOOKS), cache, batch_contexts=4, shard_tokens=50,
                      exclude_tokens=(BOS,), progress=False)  # fmt: skip
    cfg = CLTConfig(n_layers=2, d_model=32, d_sae=48, activation="jumprelu", skip=True)
    assert sorted(cfg.in_names + cfg.out_names) == sorted(HOOKS)
    opts = CLTSpec(
        kind="clt", d_sae=48, activation="jumprelu", skip=True, seed=0, batch_size=16, lr=3e-3,
        lr_warmup_steps=5, lr_decay="cosine", penalty="tanh", l1=1e-2, pre_act_coef=1e-3,
        l1_warmup_steps=4, checkpoint_every=8, precision="fp32",
    )  # fmt: skip
    quiet = dict(progress=False, log=lambda s: None, log_every=1)
    from_cache = CLTRun("clt", opts, cfg, 14, tmp_path / "a", "cpu")
    train([from_cache], ordered_cache_batches(cache, 16), 14, tmp_path / "ck-a", **quiet)
    src = stream(model, tokens, shuffle=False)
    from_stream = CLTRun("clt", opts, cfg, 14, tmp_path / "b", "cpu")
    train([from_stream], src, 14, tmp_path / "ck-b", **quiet)
    a, b = from_cache.clt.state_dict(), from_stream.clt.state_dict()
    assert len(a) == 7 and a.keys() == b.keys()  # W_enc b_enc W_dec.0/1 b_dec W_skip log_th
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert from_cache.curve == from_stream.curve  # loss, fvu, l0 of every step
    assert from_stream.curve[-1]["fvu"] < from_stream.curve[0]["fvu"]


def test_train_group_on_a_stream_resumes_after_a_crash(model, tokens, tmp_path):
    steps = 20

    def crashing(src: ActivationStream, at: int):
        def batches(start: int):
            for i, b in enumerate(src.iter_batches(start), start):
                if i == at:
                    raise RuntimeError("simulated crash")
                yield b

        return batches

    clean = members(tmp_path / "clean")
    train_group(clean, stream(model, tokens).iter_batches, steps, tmp_path / "ck-clean",
                progress=False, log=lambda s: None)  # fmt: skip
    crashed = members(tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_group(crashed, crashing(stream(model, tokens), 13), steps, tmp_path / "ck",
                    progress=False, log=lambda s: None)  # fmt: skip
    logs: list[str] = []
    train_group(crashed, stream(model, tokens).iter_batches, steps, tmp_path / "ck",
                progress=False, log=logs.append)  # fmt: skip
    assert "step 8/20" in logs[0]
    a, b = trained(clean), trained(crashed)
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


# ------------------------------------------------------------------ resume after SIGKILL
def sigkill_job(root: str, sleep: float) -> None:
    """The job the SIGKILL test runs in a subprocess: 5 dictionaries, 40 steps (2.8 epochs
    of the tokens) from a shuffled stream, a checkpoint every 5 steps."""
    torch.set_num_threads(1)
    t = np.random.default_rng(0).integers(1, VOCAB, size=(N_CTX, CTX)).astype(np.int32)
    t[:, 0] = BOS
    source = stream(tiny_model(), t)

    def batches(start: int):
        for b in source.iter_batches(start):
            time.sleep(sleep)
            yield b

    ms = members(Path(root), checkpoint_every=5)
    train_group(ms, batches, 40, Path(root) / "ckpt", progress=False, log=lambda s: None)


@pytest.mark.slow
def test_stream_training_resumes_after_sigkill_bitwise(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_stream; test_stream.sigkill_job({str(tmp_path / 'killed')!r}, 0.05)"
    )
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    sigkill_job(str(tmp_path / "clean"), 0.0)  # the uninterrupted run, meanwhile
    ckpt = tmp_path / "killed" / "ckpt" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists():
        assert killed.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))  # die at a random step after the first checkpoint
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    step = read_checkpoint(ckpt)["step"]
    assert 0 < step < 40
    sigkill_job(str(tmp_path / "killed"), 0.0)  # the rerun finds the checkpoint
    a = trained(members(tmp_path / "clean"))
    b = trained(members(tmp_path / "killed"))
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k, step)


# ------------------------------------------------------------------------------ estimates
def test_memory_estimate_matches_what_is_allocated(model, tokens, tmp_path):
    s = stream(model, tokens)
    ms = members(tmp_path)
    shape = StreamShape(batch_size=16, buffer_tokens=64, rows_per_forward=s.rows_per_forward)
    est = estimate_memory([m.config for m in ms], s.widths, shape)
    assert est.buffer == sum(b.nbytes for b in s.buffer.values())  # (64 + 4 x 12) x 128 x 4
    assert est.buffer == 112 * 128 * 4
    params = sum(n_params(m.config) for m in ms)
    assert params == 4 * (48 * 64 + 48 + 64) + (48 * 64 + 48 + 32)
    assert est.weights == 4 * params and est.optimizer == 8 * params
    assert est.batch == 16 * 128 * 8
    assert est.total == sum(
        [est.weights, est.optimizer, est.workspace, est.buffer, est.batch, est.forward]
    )
    assert "total" in est.describe() and "buffer" in est.describe()


def test_split_by_memory_keeps_groups_within_budget(tmp_path):
    cfgs = [m.config for m in members(tmp_path, layers=(0, 1, 2), sae_layer=2)]
    widths = {c.in_hook: 32 for c in cfgs} | {c.out_hook: 32 for c in cfgs}
    shape = StreamShape(batch_size=16, buffer_tokens=1024, rows_per_forward=44)
    whole = estimate_memory(cfgs, widths, shape).total
    assert split_by_memory(cfgs, widths, shape, whole) == [list(range(7))]
    groups = split_by_memory(cfgs, widths, shape, whole // 2)
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == list(range(7))
    for g in groups:
        assert estimate_memory([cfgs[i] for i in g], widths, shape).total <= whole // 2
    with pytest.raises(ValueError, match="alone needs"):
        split_by_memory(cfgs, widths, shape, 1000)
