"""The activation-family registry (`tcspec.dictionaries.families.FAMILIES`) walked: every
family the spec offers is one the trainer trains (hand-written gradients equal its autograd
reference), the evaluator runs (`Coder.activate`, and a CLT's for the CLT families), and
every export target that takes it writes it and tcspec's importer reads it back as the
same dictionary, bit for bit; the targets that refuse it say so before anything is written."""

from __future__ import annotations

import typing

import pytest
import torch

from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.families import FAMILIES, OPS, names
from tcspec.interop import export, load_dictionary
from tcspec.interop.export import refusal
from tcspec.plan.cost import clt_cost
from tcspec.spec import CLTSpec, SAESpec, TranscoderSpec
from tcspec.training import Workspace, loss_and_grads, reference_loss
from tcspec.training.member import trainable
from tcspec.vocab import ACTIVATIONS, CLT_ACTIVATIONS, EXPORT_TARGETS, KINDS

torch.set_num_threads(1)

D, S, K = 8, 16, 4
IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


def _choices(model, field: str) -> tuple[str, ...]:
    return typing.get_args(model.model_fields[field].annotation)


def test_the_spec_offers_every_registered_family_and_no_other():
    assert ACTIVATIONS == tuple(FAMILIES)
    for model in (TranscoderSpec, SAESpec):
        assert _choices(model, "activation") == ACTIVATIONS
    assert _choices(CLTSpec, "activation") == CLT_ACTIVATIONS
    assert CLT_ACTIVATIONS == names(lambda f: f.clt_sparsity is not None)
    for fam in FAMILIES.values():  # each family's own options are fields of the spec
        assert set(fam.options) <= set(TranscoderSpec.model_fields), fam.name
        assert fam.sparsity in TranscoderSpec.model_fields
        assert fam.clt_sparsity is None or fam.clt_sparsity in CLTSpec.model_fields


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_module_defines_what_the_registry_calls(name):
    ops = FAMILIES[name].ops
    assert ops.__name__.endswith(f".{name}")
    assert [f for f in OPS if not callable(getattr(ops, f, None))] == []


def _coder(name: str, kind: str = "transcoder", dtype=torch.float64) -> Coder:
    """A coder of family `name` with perturbed weights and positive thresholds."""
    k = K if FAMILIES[name].takes_k else None
    out = IN if kind == "sae" else OUT
    cfg = CoderConfig(kind, D, D, S, name, k, in_hook=IN, out_hook=out, layer=0)
    c = Coder(cfg, seed=0).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
        if cfg.thresholded:
            c.threshold.copy_(torch.rand(S, generator=g, dtype=dtype) * 0.5 + 0.1)
    return c


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_trainer_trains_every_family_as_its_reference_says(name):
    """One step's hand-written loss and gradients equal autograd's on the family's
    `reference` (float64), and the trainer's state hooks make a threshold it can infer with."""
    fam = FAMILIES[name]
    opts = TranscoderSpec(kind="transcoder", d_sae=S, k=K if fam.takes_k else None,
                          activation=name, l1=0.01).for_run(100, D, D)  # fmt: skip
    c = _coder(name)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, D, generator=g, dtype=torch.float64)
    y = torch.randn(32, D, generator=g, dtype=torch.float64)
    lt = c.threshold.detach().log().requires_grad_() if fam.thresholded else None
    ref = reference_loss(c, x, y, opts, 0.01, None, lt)
    ref["loss"].backward()
    grads, terms, codes, _ = loss_and_grads(c, x, y, opts, 0.01, None, Workspace("cpu", x.dtype))
    torch.testing.assert_close(terms["loss"], ref["loss"].detach(), rtol=1e-12, atol=1e-12)
    for k in ("W_enc", "b_enc", "W_dec", "b_dec_out"):
        torch.testing.assert_close(grads[k], getattr(c, k).grad, rtol=1e-9, atol=1e-12)
    ops = fam.ops
    for key in ops.trained(c, opts):  # a trained threshold (JumpReLU's log_threshold)
        torch.testing.assert_close(grads[key], lt.grad, rtol=1e-9, atol=1e-12)
    params, state = trainable(c, opts), ops.state()
    assert set(params) - set(dict(c.named_parameters())) == set(ops.trained(c, opts))
    assert set(ops.rates(opts, 1.0)) <= set(params)
    ops.update(state, codes, opts)
    with torch.no_grad():
        ops.sync(c, params, state)
    if fam.thresholded:
        assert bool((c.threshold > 0).all())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_evaluator_infers_with_every_family(name):
    """`Coder.activate` is the family's inference form: ReLU'd, k per token (TopK), or
    pre * [pre > threshold]."""
    fam, c = FAMILIES[name], _coder(name, dtype=torch.float32)
    pre = torch.randn(5, 3, S, generator=torch.Generator().manual_seed(3))
    z = c.activate(pre)
    assert z.shape == pre.shape and bool((z >= 0).all())
    kept = z != 0
    assert torch.equal(z[kept], pre[kept])
    if fam.thresholded:
        assert torch.equal(kept, pre > c.threshold)
    elif fam.takes_k:
        assert bool((kept.sum(-1) == K).all())  # k of S kept (toy draws: enough positive)
    else:
        assert torch.equal(kept, pre > 0)


@pytest.mark.parametrize("name", list(CLT_ACTIVATIONS))
def test_a_clt_infers_with_every_clt_family_as_a_coder_does(name):
    fam = FAMILIES[name]
    clt = CLT(CLTConfig(2, D, S, activation=name, k=K if fam.takes_k else None), seed=0)
    pre = torch.randn(4, S, generator=torch.Generator().manual_seed(4))
    for layer in range(2):
        theta = clt.threshold[layer] if fam.thresholded else None
        with torch.no_grad():
            want = fam.ops.activate(pre, clt.cfg.k, theta)
            assert torch.equal(clt.activate(pre, layer), want)


@pytest.mark.parametrize("name", list(CLT_ACTIVATIONS))
def test_the_clt_cost_estimate_covers_every_clt_family(name):
    cfg = CLTConfig(2, D, S, activation=name, k=K if FAMILIES[name].takes_k else None)
    cost = clt_cost(cfg, batch_size=32, steps=10)
    assert cost.params == sum(p.numel() for p in CLT(cfg).parameters())
    assert cost.flops > 0 and cost.train_bytes > 0


def _targets(name: str) -> list[tuple[str, str]]:
    """(target, kind) pairs of this family that the export targets take."""
    return [(to, kind) for to in EXPORT_TARGETS for kind in KINDS
            if refusal(to, kind, name, D, D) is None]  # fmt: skip


def test_every_family_has_an_export_target_and_every_target_a_family():
    taken = {name: _targets(name) for name in FAMILIES}
    assert all(taken.values()), taken
    assert {to for pairs in taken.values() for to, _ in pairs} == set(EXPORT_TARGETS)


@pytest.mark.parametrize(
    "name, to, kind", [(n, to, kind) for n in FAMILIES for to, kind in _targets(n)]
)
def test_each_target_writes_and_tcspec_reads_back_each_family(tmp_path, name, to, kind):
    """Exported, then loaded with tcspec's importer: the same config and weights bit for
    bit, so the same function."""
    c = _coder(name, kind, torch.float32).requires_grad_(False)
    export(c, tmp_path, to, model_name="toy", context_size=16)
    back = load_dictionary(tmp_path, layer=0 if to == "circuit-tracer" else None)
    assert (back.cfg.activation, back.cfg.k, back.cfg.kind) == (name, c.cfg.k, kind)
    state = back.state_dict()
    for key, value in c.state_dict().items():
        assert torch.equal(state[key], value), key
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(5))
    assert torch.equal(back(x)[0], c(x)[0])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_targets_that_refuse_a_family_refuse_before_writing(tmp_path, name):
    refused = [(to, kind) for to in EXPORT_TARGETS for kind in KINDS
               if refusal(to, kind, name, D, D) is not None]  # fmt: skip
    for to, kind in refused:
        with pytest.raises(ValueError, match="cannot export"):
            export(_coder(name, kind, torch.float32), tmp_path / to / kind, to,
                   model_name="toy", context_size=16)  # fmt: skip
        assert not (tmp_path / to / kind).exists() or not any((tmp_path / to / kind).iterdir())
