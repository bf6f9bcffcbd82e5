"""The model layer: toy corpus, tokenizer, toy training, and loading of every model kind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tcspec.compute.threads import JOB_ENVIRONMENT
from tcspec.models import corpus
from tcspec.models.load import (
    load_model,
    model_info,
    prepare_checkpoint,
    prepare_pretrained,
    quiet_deprecation,
    resolve_device,
    resolve_dtype,
)
from tcspec.models.tokenizer import DIGIT_PAIRS, load_tokenizer, train_tokenizer
from tcspec.models.toy import (
    RECIPES,
    get_recipe,
    pack_contexts,
    sinusoidal_positions,
    train_toy_model,
)

TINY = dict(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, steps=3, batch=2, warmup=1)
PROMPT = "The war lasted from the year 1732 to the year 17"

# ----------------------------------------------------------------------------- corpus


def test_toy_documents_are_deterministic_and_seeded():
    assert corpus.toy_documents(0, 50) == corpus.toy_documents(0, 50)
    assert corpus.toy_documents(0, 50) != corpus.toy_documents(1, 50)
    assert len(corpus.toy_documents(3, 17)) == 17


def test_text_splits_are_disjoint():
    train, held = set(corpus.text_documents("train")), set(corpus.text_documents("eval"))
    assert train and held and not train & held
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.2


def _start_years(docs: list[str]) -> list[int]:
    import re

    return [int(m) for d in docs for m in re.findall(r"from the year \d\d(\d\d) to", d)]


def test_held_out_rule():
    assert corpus.held_out_yy() == list(range(5, 99, 5))
    assert not set(corpus.held_out_yy()) & set(corpus.train_yy())
    train = _start_years(corpus.toy_documents(0, 400, task_fraction=0.9))
    held = _start_years(corpus.toy_documents(0, 100, split="eval", task_fraction=0.9))
    assert len(train) > 500 and len(held) > 100
    assert not any(corpus.is_held_out_yy(yy) for yy in train)
    assert all(corpus.is_held_out_yy(yy) for yy in held)


def test_greater_than_sentence_template():
    s = corpus.greater_than_sentence(32, 88, noun="treaty", century=14)
    assert s == "The treaty lasted from the year 1432 to the year 1488."
    assert s.startswith(corpus.greater_than_prompt(32, "treaty", 14))


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_year_tokens(toy_tokenizer):
    for pair in DIGIT_PAIRS:
        assert len(toy_tokenizer.encode(pair, add_special_tokens=False)) == 1
        assert len(toy_tokenizer.encode(" " + pair, add_special_tokens=False)) == 1
    pieces = toy_tokenizer.convert_ids_to_tokens(toy_tokenizer.encode(PROMPT))
    assert pieces[0] == "<|endoftext|>"  # BOS prepended
    assert pieces[-1] == "Ġ17" and pieces[-6:-4] == ["Ġ17", "32"]


def test_tokenizer_is_deterministic_and_round_trips(tmp_path, toy_tokenizer):
    docs = corpus.toy_documents(0, 300)
    assert train_tokenizer(docs, vocab_size=1024).get_vocab() == toy_tokenizer.get_vocab()
    assert len(toy_tokenizer) == 1024
    toy_tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "def f(x): return x ** 2  # 1999"
    assert again.encode(text) == toy_tokenizer.encode(text)
    assert again.decode(again.encode(text), skip_special_tokens=True) == text


def test_pack_contexts_starts_rows_with_bos(toy_tokenizer):
    rows = pack_contexts(toy_tokenizer, iter(corpus.toy_documents(0, 40)), 5, 16)
    assert rows.shape == (5, 16)
    assert (rows[:, 0] == toy_tokenizer.bos_token_id).all()


# ----------------------------------------------------------------------------- toy model


def test_recipes():
    assert "greater_than_mix" in RECIPES and get_recipe("greater_than_mix").task_fraction == 0.5
    with pytest.raises(ValueError, match="unknown toy recipe"):
        get_recipe("nope")


def test_sinusoidal_positions():
    codes = sinusoidal_positions(8, 4)  # [n_ctx, d_model]
    assert codes.shape == (8, 4)
    torch.testing.assert_close(codes[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(codes[:, 0], torch.sin(torch.arange(8.0)))


def test_toy_folder_layout(toy_model_dir):
    names = sorted(p.name for p in toy_model_dir.iterdir())
    assert names == ["model.json", "tokenizer.json", "tokenizer_config.json", "weights.safetensors"]
    meta = json.loads((toy_model_dir / "model.json").read_text())
    assert meta["kind"] == "toy" and meta["recipe"] == "greater_than_mix" and meta["seed"] == 0
    assert meta["cfg"] == {
        "n_layers": 2, "d_model": 32, "d_mlp": 64, "d_head": 16, "n_heads": 2,
        "d_vocab": meta["cfg"]["d_vocab"], "n_ctx": 32, "act_fn": "gelu",
        "normalization_type": "LN", "parallel_attn_mlp": False,
    }  # fmt: skip
    assert meta["bos_token_id"] == 0
    assert meta["task_layer"] in (0, 1)
    m = meta["metrics"]
    for key in ("greater_than_prob_diff", "text_loss", "unigram_text_loss", "mlp_ablation"):
        assert key in m
    assert set(m["mlp_ablation"]) == {"0", "1"}
    for hook in ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "blocks.0.hook_mlp_in"):
        assert hook in meta["hook_names"]
    assert meta["versions"]["transformer-lens"]


def test_toy_training_is_deterministic(tmp_path, toy_model_dir):
    train_toy_model(tmp_path / "again", seed=0, progress=False, **TINY)
    a = load_file(str(toy_model_dir / "weights.safetensors"))
    b = load_file(str(tmp_path / "again" / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_toy_training_on_two_threads_is_byte_identical_across_processes(tmp_path):
    """The quickstart's model job trains on 2 threads: at the recipe's shape, runs of 20
    steps in different processes give the same weights (without deterministic algorithms
    they differed on every run), whether idle OpenMP threads spin at length (GNU OpenMP's
    default), briefly (`tcspec task`'s `JOB_ENVIRONMENT`) or not at all."""
    code = (
        "import sys, json, torch; torch.set_num_threads(2); from tcspec.models.toy import "
        "train_toy_model; m = train_toy_model(sys.argv[1], recipe='greater_than_fast', seed=0, "
        "steps=20, batch=8, progress=False); print(m['weights_xxh3'])"
    )
    env = os.environ | {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(name, None)
    waits = {"a": {}, "b": JOB_ENVIRONMENT, "c": {"OMP_WAIT_POLICY": "PASSIVE"}}
    digests = []
    for run, wait in waits.items():
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], env=env | wait,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.split()[-1])
    assert len(set(digests)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["greater_than_mix", "greater_than_fast"])
def test_toy_training_is_byte_identical_across_processes(tmp_path, recipe):
    """Same seed and thread count, another process with another hash seed: the same bytes
    in every file but model.json (which records wall times)."""
    code = (
        "import sys, torch; torch.set_num_threads(1); from tcspec.models.toy import "
        f"train_toy_model; train_toy_model(sys.argv[1], recipe={recipe!r}, seed=0, "
        f"progress=False, **{TINY!r})"
    )
    for run, hash_seed in (("a", "1"), ("b", "2")):
        env = os.environ | {"PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "weights.safetensors" in files and files == sorted(
        p.name for p in (tmp_path / "b").iterdir()
    )
    for name in files:
        if name != "model.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), (
                name
            )
    meta = [json.loads((tmp_path / r / "model.json").read_text()) for r in "ab"]
    assert meta[0]["weights_xxh3"] == meta[1]["weights_xxh3"]
    assert meta[0]["metrics"] == meta[1]["metrics"]


def test_toy_load_matches_raw_weights(toy_model_dir):
    meta = json.loads((toy_model_dir / "model.json").read_text())
    cfg = {k: v for k, v in meta["cfg"].items() if k != "parallel_attn_mlp"}
    with quiet_deprecation():
        raw = HookedTransformer(HookedTransformerConfig(**cfg, init_weights=False))
    raw.load_state_dict(load_file(str(toy_model_dir / "weights.safetensors")))
    model = load_model(toy_model_dir)
    assert model.cfg.normalization_type == "LNPre"  # LayerNorm folded
    tokens = model.to_tokens(PROMPT)
    assert tokens[0, 0] == 0 and model.to_string(tokens[0, 1:]) == PROMPT
    torch.testing.assert_close(
        model(tokens).log_softmax(-1), raw(tokens).log_softmax(-1), atol=1e-4, rtol=0
    )
    assert model_info(model)["d_model"] == 32


# ----------------------------------------------------------------------------- pretrained


def _hf_log_probs(hf_model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(tokens).logits.log_softmax(-1)


def test_pretrained_from_hf_cache(tmp_path, gpt2_hf_cache, tiny_gpt2_hf, toy_tokenizer):
    meta = prepare_pretrained("gpt2", tmp_path / "m")
    assert meta["kind"] == "pretrained" and meta["name"] == "gpt2"
    assert meta["cfg"]["n_layers"] == 2 and meta["cfg"]["d_model"] == 64
    assert meta["cfg"]["normalization_type"] == "LN"
    assert json.loads((tmp_path / "m" / "model.json").read_text()) == meta
    model = load_model(tmp_path / "m")
    tokens = torch.tensor([toy_tokenizer.encode(PROMPT)])
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, _hf_log_probs(tiny_gpt2_hf, tokens), atol=1e-4, rtol=0)
    assert model.to_tokens(PROMPT)[0].tolist() == tokens[0].tolist()


# ----------------------------------------------------------------------------- checkpoint


def test_checkpoint_hf_folder(tmp_path, tiny_gpt2_dir, tiny_gpt2_hf, toy_tokenizer):
    meta = prepare_checkpoint(tiny_gpt2_dir, tmp_path / "m")
    assert meta["kind"] == "checkpoint" and meta["path"] == str(tiny_gpt2_dir.resolve())
    model = load_model(tmp_path / "m")
    tokens = torch.tensor([toy_tokenizer.encode(PROMPT)])
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, _hf_log_probs(tiny_gpt2_hf, tokens), atol=1e-4, rtol=0)


def test_checkpoint_transformer_lens_folder(tmp_path, toy_model_dir):
    meta = json.loads((toy_model_dir / "model.json").read_text())
    folder = tmp_path / "tl"
    folder.mkdir()
    cfg = {k: v for k, v in meta["cfg"].items() if k != "parallel_attn_mlp"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    for name in ("weights.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(toy_model_dir / name, folder / name)
    prepare_checkpoint(folder, tmp_path / "m")
    model, toy = load_model(tmp_path / "m"), load_model(toy_model_dir)
    tokens = toy.to_tokens(PROMPT)
    torch.testing.assert_close(model(tokens), toy(tokens))


def test_checkpoint_refuses_pickles(tmp_path, tiny_gpt2_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", folder / "config.json")
    torch.save(load_file(str(tiny_gpt2_dir / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="trust_pickle"):
        prepare_checkpoint(folder, tmp_path / "m")
    assert not (tmp_path / "m" / "model.json").exists()


def test_checkpoint_rejects_other_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model folder"):
        prepare_checkpoint(tmp_path / "empty", tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        prepare_checkpoint(tmp_path / "missing", tmp_path / "m")


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float9")


def test_damaged_toy_weights_are_named_and_refused(toy_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(toy_model_dir, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(weights)):
        load_model(copy)
    load_model(toy_model_dir)  # the intact folder still loads


def test_a_target_must_be_one_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tcspec.models.tokenizer import target_token_id

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert [target_token_id(fast, t) for t in ("a", "b")] == [0, 1]
    with pytest.raises(ValueError, match=r"'a b' is 2 tokens .* \('a' \+ 'b'\); a target must"):
        target_token_id(fast, "a b")
