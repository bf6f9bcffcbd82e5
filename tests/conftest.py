"""Shared, session-scoped fixtures: offline tokenizers and tiny models.

Nothing here touches the network: ``HF_HUB_OFFLINE`` is set for the whole session, and a
tiny GPT-2 stands in for ``gpt2`` in a temporary Hugging Face cache.

- ``toy_tokenizer``: a small byte-level BPE of the toy corpus (every ``"00"``..``"99"`` one
  token), a ``PreTrainedTokenizerFast``.
- ``tiny_gpt2_dir``: a local Hugging Face GPT-2 folder (2 layers, d_model 64) with that
  tokenizer; ``tiny_gpt2_hf`` is the same model loaded with ``transformers``.
- ``gpt2_hf_cache``: a Hugging Face cache holding that folder as ``gpt2``
  (``hub/models--gpt2/snapshots/<hash>/``), made the test's cache; returns ``HF_HOME``.
- ``toy_model_dir``: a toy model folder trained for a few steps with tiny dims.
- ``micro_attribution_run``: tests/workflow/micro_attribution.yaml run to its end in this
  process, task by task as its Snakemake jobs would run (read it; copy it to change it).

Every test under tests/workflow/ (end-to-end Snakemake runs) is marked ``slow``, as are the
longest tests elsewhere (marked where they are defined): ``pytest -m "not slow"`` is the quick
loop, the full suite (what CI runs) includes them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

WORKFLOW = Path(__file__).resolve().parent / "workflow"


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs (tests/workflow/) are all `slow`."""
    for item in items:
        if WORKFLOW in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_tokenizer():
    from tcspec.models.corpus import toy_documents
    from tcspec.models.tokenizer import train_tokenizer

    return train_tokenizer(toy_documents(0, 300), vocab_size=1024)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, toy_tokenizer) -> Path:
    """A Hugging Face GPT-2 folder: config.json, model.safetensors, tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=64,
        n_ctx=64,
        vocab_size=len(toy_tokenizer),
        bos_token_id=toy_tokenizer.bos_token_id,
        eos_token_id=toy_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    toy_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_hf(tiny_gpt2_dir):
    """The tiny GPT-2 loaded with ``transformers`` (the reference for logits)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()


@pytest.fixture(scope="session")
def gpt2_hf_home(tmp_path_factory, tiny_gpt2_dir) -> Path:
    """A Hugging Face home whose hub cache holds the tiny GPT-2 as ``gpt2``."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--gpt2"
    files = sorted(p for p in tiny_gpt2_dir.iterdir() if p.is_file())
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    snapshot = repo / "snapshots" / digest
    snapshot.mkdir(parents=True)
    for path in files:
        shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(digest)
    return home


@pytest.fixture
def gpt2_hf_cache(gpt2_hf_home, monkeypatch):
    """Make ``gpt2_hf_home`` the test's Hugging Face cache (only this test's: later tests
    see the machine's cache again); returns its ``HF_HOME``."""
    import huggingface_hub.constants as hf_constants

    home = gpt2_hf_home
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """A toy model folder (model.json, weights.safetensors, tokenizer) after 3 steps."""
    from tcspec.models.toy import train_toy_model

    folder = tmp_path_factory.mktemp("toy_model") / "model"
    train_toy_model(
        folder,
        seed=0,
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        n_ctx=32,
        steps=3,
        batch=2,
        warmup=1,
        progress=False,
    )
    return folder


@pytest.fixture(scope="session")
def micro_attribution_run(tmp_path_factory):
    """(results folder, plan) of the micro attribution spec, every task done: configs
    stored as building the DAG stores them, then each stage's jobs (training as its pass)."""
    from tcspec.plan import compile_plan, group_task
    from tcspec.plan.stages import STAGES
    from tcspec.plan.store import save_task
    from tcspec.spec.loader import load_spec
    from tcspec.tasks import run_task

    spec = Path(__file__).resolve().parent / "workflow" / "micro_attribution.yaml"
    results = tmp_path_factory.mktemp("micro_attribution") / "results"
    plan = compile_plan(load_spec(spec))
    passes = [group_task([plan.get("train", i) for i in g], plan) for g in plan.groups]
    for t in [*plan.tasks.values(), *passes]:
        save_task(results, t)
    for stage in STAGES:
        for job in passes if stage == "train" else plan.stage(stage):
            run_task(job, results, device="cpu")
    return results, plan
