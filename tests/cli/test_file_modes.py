"""Files tcspec writes get the modes the user's umask gives (a shared folder's other users
can read them), whichever writer made them: safetensors creates its files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from tcspec import atomic
from tcspec.dictionaries import clt_io, coders
from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.interop import export


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


@pytest.mark.parametrize("to", ["saelens", "sparsify", "circuit-tracer"])
def test_exported_files_follow_the_umask(to, umask, tmp_path):
    cfg = coders.CoderConfig("transcoder", 4, 4, 8, in_hook="blocks.0.ln2.hook_normalized",
                             out_hook="blocks.0.hook_mlp_out", layer=0)  # fmt: skip
    written = export(coders.Coder(cfg), tmp_path / "out", to, model_name="m", context_size=8)
    assert any(p.suffix == ".safetensors" for p in written)
    assert set(_modes(tmp_path / "out").values()) == {0o666 & ~umask}


def test_folders_written_whole_follow_the_umask(umask, tmp_path):
    """`atomic_dir` (a CLT's circuit-tracer folder) and single files of every writer."""
    clt = CLT(CLTConfig(n_layers=2, d_model=4, d_sae=6))
    clt_io.export_circuit_tracer(clt, tmp_path / "clt", model_name="m")
    with atomic.atomic_dir(tmp_path / "nested") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x.txt").write_text("x")
    atomic.write_text(tmp_path / "a.txt", "x")
    atomic.atomic_write(tmp_path / "t.safetensors", lambda p: torch.save({}, p))
    modes = _modes(tmp_path)
    assert modes.pop("clt") == modes.pop("nested") == modes.pop("nested/sub") == 0o777 & ~umask
    assert modes and set(modes.values()) == {0o666 & ~umask}
