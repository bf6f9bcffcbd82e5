"""What later stages would refuse is refused at check time, from the same statement:
export formats against dictionary kinds, attribution targets against the tokenizer, and a
pretrained model's dimensions from its config in the local Hugging Face cache."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.families import FAMILIES
from tcspec.interop import export
from tcspec.spec.checks import sanity_warnings
from tcspec.spec.loader import SpecError, parse_spec
from tcspec.vocab import ACTIVATIONS, EXPORT_TARGETS, KINDS

SPEC = """experiment: x
model: {{kind: toy, d_model: 16, n_heads: 2, d_mlp: 32}}
data: {{kind: toy, train_tokens: 100_000, eval_tokens: 10_000}}
layers: [0]
dictionaries:
  d: {{{dictionary}}}
export: [{{to: {to}, dictionaries: [{{name: d}}]}}]
"""
HOOKS = {  # (spec fields, (d_in, d_out) on the spec's toy model)
    "sae": ("kind: sae, hook: hook_mlp_out", (16, 16)),
    "transcoder": ("kind: transcoder", (16, 16)),
    "skip_transcoder": ("kind: skip_transcoder", (16, 16)),
    "wide": ("kind: transcoder, in_hook: mlp.hook_post, out_hook: hook_mlp_out", (32, 16)),
}


def _check_refuses(to: str, hooks: str, activation: str) -> bool:
    k = ", k: 4" if FAMILIES[activation].takes_k else ""
    text = SPEC.format(to=to, dictionary=f"{hooks}, expansion: 2, activation: {activation}{k}")
    try:
        parse_spec(text, "spec.yaml")
    except SpecError as err:
        assert all(p.path.startswith("export[0]") for p in err.problems), err
        return True
    return False


def _export_refuses(to: str, kind: str, activation: str, widths, tmp_path) -> bool:
    kind = "transcoder" if kind == "wide" else kind
    cfg = CoderConfig(
        kind, *widths, 32, activation=activation, k=4 if FAMILIES[activation].takes_k else None,
        in_hook="blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out", layer=0,
    )  # fmt: skip
    coder = Coder(cfg)
    if cfg.thresholded:
        with torch.no_grad():
            coder.threshold.fill_(0.1)
    try:
        export(coder, tmp_path / f"{to}-{kind}-{activation}", to, model_name="m", context_size=8)
    except ValueError:
        return True
    return False


def test_check_refuses_exactly_what_the_exporters_refuse(tmp_path):
    """Every format x kind x activation (and a transcoder with d_in != d_out): `tcspec
    check` errs on the spec exactly when the exporter refuses the trained dictionary."""
    refused = []
    for to, kind, activation in itertools.product(EXPORT_TARGETS, HOOKS, ACTIVATIONS):
        hooks, widths = HOOKS[kind]
        at_check = _check_refuses(to, hooks, activation)
        assert at_check == _export_refuses(to, kind, activation, widths, tmp_path), (to, kind)
        refused.append(at_check)
    assert 0 < sum(refused) < len(refused)
    assert set(KINDS) <= set(HOOKS)


def _cache_as(monkeypatch, home, repo: str, snapshot) -> None:
    """A Hugging Face cache under `home` holding `snapshot`'s files as `repo`."""
    import huggingface_hub.constants as hf_constants

    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(snapshot, folder / "snapshots" / "0")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0")
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))


PRETRAINED = """experiment: x
model: {{kind: pretrained, name: {name}}}
data: {{kind: toy, context: 32, train_tokens: 100_000, eval_tokens: 10_000}}
layers: [{layer}]
dictionaries:
  tc: {{kind: transcoder, expansion: 2}}
circuits:
  - {{task: attribution, dictionary: {{name: tc}}, prompts: [a b], target: {{correct: " 17", incorrect: "{wrong}"}}}}
"""


def test_a_cached_model_that_disagrees_with_the_catalog_is_a_located_error(gpt2_hf_cache):
    """A 64-wide GPT-2 cached as `gpt2`: the plan would use the catalog's 768 and training
    would crash; the check names both and the file."""
    with pytest.raises(SpecError) as err:
        parse_spec(PRETRAINED.format(name="gpt2", layer=0, wrong=" 16"), "spec.yaml")
    (problem,) = err.value.problems
    assert (problem.line, problem.col, problem.path) == (2, 27, "model.name")
    assert "n_layers 2, d_model 64, d_mlp 256, n_heads 2" in problem.message
    assert "n_layers 12, d_model 768, d_mlp 3072, n_heads 12 (tcspec's catalog)" in problem.message
    assert "models--gpt2/snapshots/" in problem.message


def test_a_cached_model_outside_the_catalog_has_its_config_dims(
    tmp_path, monkeypatch, tiny_gpt2_dir
):
    """Its config gives the dims (a layer past them is an error) and its tokenizer checks
    the target's tokens, offline."""
    _cache_as(monkeypatch, tmp_path, "tcspec-test/tiny-gpt2", tiny_gpt2_dir)
    name = "tcspec-test/tiny-gpt2"
    spec = parse_spec(PRETRAINED.format(name=name, layer=1, wrong=" 16"), "spec.yaml")
    assert not [w for w in sanity_warnings(spec) if w[0][0] == "circuits"]
    with pytest.raises(SpecError) as err:
        parse_spec(PRETRAINED.format(name=name, layer=2, wrong=" 1600"), "spec.yaml")
    messages = sorted((p.path, p.message) for p in err.value.problems)
    assert messages[0][0] == "circuits[0].target.incorrect"
    assert "' 1600' is 2 tokens for the model's tokenizer (' 16' + '00')" in messages[0][1]
    assert messages[1] == ("layers[0]", "layer 2 does not exist: the model has 2 (0..1)")


def test_an_uncached_tokenizer_leaves_the_target_to_the_job_and_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    spec = parse_spec(PRETRAINED.format(name="gpt2", layer=0, wrong=" 1600"), "spec.yaml")
    ((loc, message),) = [w for w in sanity_warnings(spec) if w[0][0] == "circuits"]
    assert loc == ("circuits", 0, "target") and "checked when the circuits job" in message
