"""The restricted checkpoint reader: tensors come back exactly; any other global is refused
before it can run."""

from __future__ import annotations

import collections
import os

import pytest
import torch

from tcspec.interop import UnsafePickleError, load_checkpoint, load_dictionary

torch.set_num_threads(1)


class TouchMarker:
    """Unpickling this runs `touch <marker>` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def malicious_checkpoint(tmp_path):
    """The released layout with a payload beside it."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {
        "cfg": {"d_in": 4},
        "state_dict": {"W_enc": torch.zeros(4, 8)},
        "extra": TouchMarker(marker),
    }
    torch.save(payload, path)
    return path, marker


def test_a_pickle_that_calls_os_system_is_refused_and_nothing_runs(tmp_path):
    path, marker = malicious_checkpoint(tmp_path)
    with pytest.raises(UnsafePickleError, match=r"evil.pt: refused to load .*`posix.system`"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"evil.pt: .*`posix.system`.*trust_pickle"):
        load_dictionary(path)
    assert not marker.exists()


def test_trust_is_what_lets_the_same_file_run(tmp_path):
    path, marker = malicious_checkpoint(tmp_path)
    obj = load_checkpoint(path, trust=True)
    assert marker.exists() and obj["extra"] == 0


@pytest.mark.parametrize(
    "payload,name",
    [
        (CallsEval(), "builtins.eval"),
        (collections.Counter("ab"), "collections.Counter"),
        (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
    ],
)
def test_every_other_global_is_refused_by_name(tmp_path, payload, name):
    torch.save({"x": payload}, tmp_path / "f.pt")
    with pytest.raises(UnsafePickleError, match=f"`{name}`"):
        load_checkpoint(tmp_path / "f.pt")


def test_tensors_come_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    obj = {
        "a": base,
        "view": base.T,  # shares base's storage, strided
        "slice": base[1:4, 2:],
        "half": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "ints": torch.arange(6).view(2, 3),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.ones(2)),
        "nested": collections.OrderedDict(w=torch.ones(2)),
        "meta": {"device": torch.device("cpu"), "dtype": torch.float16, "n": 3, "s": {1, 2}},
    }
    torch.save(obj, tmp_path / "t.pt")
    back = load_checkpoint(tmp_path / "t.pt")
    for key in ("a", "view", "slice", "half", "bf16", "ints", "mask", "scalar", "empty"):
        assert back[key].dtype == obj[key].dtype and torch.equal(back[key], obj[key]), key
    assert torch.equal(back["param"], torch.ones(2))
    assert torch.equal(back["nested"]["w"], torch.ones(2))
    assert back["meta"] == {"device": "cpu", "dtype": "torch.float16", "n": 3, "s": {1, 2}}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_and_legacy_files_are_not_read(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        load_checkpoint(tmp_path / "ts.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy"):
        load_checkpoint(tmp_path / "old.pt")
