"""Dictionaries: hand-computed forward passes, TopK, init, and the folder format."""

from __future__ import annotations

import json

import pytest
import torch

from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig


def _tiny(kind: str = "transcoder", activation: str = "relu", k: int | None = None) -> Coder:
    """d_in 2, d_sae 3, d_out 2 with weights set by hand."""
    cfg = CoderConfig(kind=kind, d_in=2, d_out=2, d_sae=3, activation=activation, k=k)
    c = Coder(cfg)
    with torch.no_grad():
        c.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]]))
        c.b_enc.copy_(torch.tensor([0.0, -3.0, 0.5]))
        c.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        c.b_dec.copy_(torch.tensor([0.5, -0.5]))
        if kind != "sae":
            c.b_dec_out.copy_(torch.tensor([1.0, -1.0]))
    return c


X = torch.tensor([[1.0, 2.0]])
# x - b_dec = [0.5, 2.5]; (x - b_dec) W_enc = [0.5, 2.5, 2.0]; + b_enc = [0.5, -0.5, 2.5]


def test_transcoder_by_hand():
    c = _tiny()
    y_hat, z = c(X)
    assert torch.allclose(z, torch.tensor([[0.5, 0.0, 2.5]]))
    # z W_dec = [0.5 + 1.5, 2.0] = [2.0, 2.0]; + b_dec_out = [3.0, 1.0]
    assert torch.allclose(y_hat, torch.tensor([[3.0, 1.0]]))


def test_topk_by_hand():
    c = _tiny(activation="topk", k=1)
    y_hat, z = c(X)
    assert torch.equal(z, torch.tensor([[0.0, 0.0, 2.5]]))
    assert torch.allclose(y_hat, torch.tensor([[2.5, 1.0]]))  # 2.5 [0.6, 0.8] + [1, -1]


def test_topk_keeps_k_largest_and_relus_them():
    cfg = CoderConfig(kind="transcoder", d_in=4, d_out=4, d_sae=6, activation="topk", k=3)
    c = Coder(cfg)
    pre = torch.tensor([[5.0, -1.0, 3.0, -2.0, 4.0, 0.0], [-5.0, -4.0, -3.0, -2.0, -1.0, -6.0]])
    z = c.activate(pre)
    assert torch.equal(z[0], torch.tensor([5.0, 0.0, 3.0, 0.0, 4.0, 0.0]))
    assert torch.equal(z[1], torch.zeros(6))  # the top 3 are negative: ReLU'd to 0
    assert ((c.encode(torch.randn(50, 4)) > 0).sum(1) <= 3).all()


def test_sae_ties_output_bias_to_b_dec():
    c = _tiny(kind="sae")
    assert "b_dec_out" not in dict(c.named_parameters())
    y_hat, _ = c(X)
    assert torch.allclose(y_hat, torch.tensor([[2.5, 1.5]]))  # [2, 2] + b_dec [0.5, -0.5]
    assert c.b_out is c.b_dec


def test_skip_transcoder_adds_linear_skip():
    cfg = CoderConfig(kind="skip_transcoder", d_in=2, d_out=2, d_sae=3)
    c = Coder(cfg)
    assert torch.equal(c.W_skip, torch.zeros(2, 2))  # starts as a plain transcoder
    with torch.no_grad():
        c.W_skip.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    y_hat, z = c(X)
    assert torch.allclose(y_hat, c.decode(z, X))
    assert torch.allclose(y_hat - (z @ c.W_dec + c.b_dec_out), torch.tensor([[7.0, 10.0]]))
    with pytest.raises(ValueError, match="needs the input"):
        c.decode(z)


def test_init_is_seeded_unit_norm_and_zero_biases():
    cfg = CoderConfig(kind="transcoder", d_in=8, d_out=6, d_sae=32)
    a, b, c = Coder(cfg, seed=1), Coder(cfg, seed=1), Coder(cfg, seed=2)
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name])
    assert not torch.equal(a.W_enc, c.W_enc)
    assert torch.allclose(a.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(a.b_enc, torch.zeros(32))
    bound = (6 / 32) ** 0.5  # kaiming-uniform, fan_in = d_sae for W_enc [d_in, d_sae]
    assert a.W_enc.abs().max() <= bound and a.W_enc.abs().max() > 0.8 * bound
    g = torch.Generator().manual_seed(1)
    assert torch.equal(Coder(cfg, seed=g).W_enc, a.W_enc)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(kind="mlp"), "kind"),
        (dict(activation="topk"), "k"),
        (dict(k=3), "k only applies"),
        (dict(d_sae=0), "d_sae"),
        (dict(kind="sae", d_out=5), "d_in == d_out"),
        (dict(activation="topk", k=100), "k <= d_sae"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    base = dict(kind="transcoder", d_in=4, d_out=4, d_sae=8)
    with pytest.raises(ValueError, match=msg):
        CoderConfig(**(base | kw))


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder", "sae"])
def test_save_load_round_trip_is_exact(tmp_path, kind):
    cfg = CoderConfig(
        kind=kind,
        d_in=6,
        d_out=6,
        d_sae=20,
        activation="topk",
        k=4,
        in_hook="blocks.1.ln2.hook_normalized",
        out_hook="blocks.1.hook_mlp_out",
        layer=1,
    )
    c = Coder(cfg, seed=3)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(torch.randn_like(p))
    coders.save(c, tmp_path / "d", extra={"name": "l1-0.001", "training": {"l1": 1e-3}})
    back = coders.load(tmp_path / "d")
    assert back.cfg == cfg
    assert set(back.state_dict()) == set(c.state_dict())
    for k, v in c.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    x = torch.randn(5, 6)
    assert torch.equal(c(x)[0], back(x)[0])
    cfg2, extra = coders.load_cfg(tmp_path / "d")
    assert cfg2 == cfg and extra == {"name": "l1-0.001", "training": {"l1": 1e-3}}
    assert json.loads((tmp_path / "d" / "cfg.json").read_text())["d_sae"] == 20
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cfg.json", "weights.safetensors"]


def test_save_rejects_extra_that_overwrites_config(tmp_path):
    c = Coder(CoderConfig(kind="sae", d_in=4, d_out=4, d_sae=8))
    with pytest.raises(ValueError, match="overwrite"):
        coders.save(c, tmp_path, extra={"d_sae": 3})
