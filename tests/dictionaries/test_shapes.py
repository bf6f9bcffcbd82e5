"""The two shapes of a dictionary behind one loader: a folder's kind picks the loader, one
layer's features come out as a Coder for either shape, a CLT traces alone."""

import pytest
import torch

from tcspec.dictionaries import clt_io, clt_views, coders
from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.shapes import layer_view, load, load_set, spans_layers


@pytest.fixture
def folders(tmp_path):
    clt = CLT(CLTConfig(n_layers=2, d_model=8, d_sae=12, layers=(1, 3)), seed=2)
    coder = Coder(CoderConfig("transcoder", 8, 8, 12, layer=1), seed=3)
    clt_io.save(clt, tmp_path / "clt")
    coders.save(coder, tmp_path / "tc")
    return clt, coder, tmp_path


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_folder_loads_as_its_shape_and_shows_one_layer(folders):
    clt, coder, root = folders
    assert spans_layers("clt") and not spans_layers("transcoder")
    loaded_clt, loaded_tc = load(root / "clt"), load(root / "tc")
    assert isinstance(loaded_clt, CLT) and same(loaded_clt, clt)
    assert isinstance(loaded_tc, Coder) and same(loaded_tc, coder)
    view, norms = layer_view(loaded_clt, 3)  # the CLT's second layer, at block 3
    assert same(view, clt_views.layer_coder(clt, 1)) and norms[1] == [3]
    assert torch.equal(norms[0], clt_views.write_norms(clt, 1))
    assert layer_view(loaded_tc, 1) == (loaded_tc, None)
    assert layer_view({1: loaded_tc}, 1) == (loaded_tc, None)
    with pytest.raises(ValueError, match="spans blocks \\[1, 3\\], not block 2"):
        layer_view(loaded_clt, 2)


def test_a_clt_traces_alone(folders):
    _, _, root = folders
    assert isinstance(load_set([(1, root / "clt")], "cpu", torch.float32), CLT)
    by_layer = load_set([(1, root / "tc")], "cpu", torch.float32)
    assert list(by_layer) == [1] and isinstance(by_layer[1], Coder)
    with pytest.raises(ValueError, match="a CLT traces alone"):
        load_set([(1, root / "clt"), (2, root / "tc")], "cpu", torch.float32)


def test_either_shape_saves_and_goes_to_circuit_tracer_through_one_call(folders):
    """`save` and `write_circuit_tracer` take either shape: a CLT (listed at each layer it
    spans) becomes a CLT folder, per-layer transcoders a transcoder set."""
    from tcspec.dictionaries.shapes import save, write_circuit_tracer

    clt, _, root = folders
    for d, name in [(clt, "clt2"), (Coder(CoderConfig("transcoder", 8, 8, 12, layer=0)), "tc2")]:
        save(d, root / name, extra={"source": "test"})
        assert same(load(root / name), d)
    whole = CLT(CLTConfig(n_layers=2, d_model=8, d_sae=12, layers=(0, 1)), seed=4)
    files = write_circuit_tracer({0: whole, 1: whole}, root / "ct-clt", model_name="m")
    assert sorted(p.name for p in files) == [
        "W_dec_0.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors",
        "W_enc_1.safetensors", "config.yaml",
    ]  # fmt: skip
    assert same(clt_io.load_circuit_tracer(root / "ct-clt"), whole)
    per_layer = {i: Coder(CoderConfig("transcoder", 8, 8, 12, layer=i, in_hook=f"blocks.{i}.ln2.hook_normalized", out_hook=f"blocks.{i}.hook_mlp_out"), seed=i) for i in (0, 1)}  # fmt: skip
    files = write_circuit_tracer(per_layer, root / "ct-set", model_name="m")
    assert {p.name for p in files} >= {"layer_0.safetensors", "layer_1.safetensors", "config.yaml"}
