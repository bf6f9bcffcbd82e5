"""Does a training pass resume bitwise on this device? A pass of four dictionaries (a TopK
and a JumpReLU CLT over 3 layers, a ReLU + L1 transcoder with ghost grads and a TopK one
with aux-k at layer 1) in one precision: stopped by a crash after its step-8 checkpoint,
rerun from it, and compared with an uninterrupted pass, weight by weight, as saved.

On a CPU at a fixed thread count it is bitwise (the tests check it). On CUDA the
checkpoint restores every generator and the run makes torch's deterministic settings
(`tcspec.compute.determinism`), but an op without a deterministic CUDA kernel (the
scatters and `index_add_`) adds in the order its atomics land: this check says whether the
resumed weights equal the uninterrupted ones there, and by how much they differ if not.

    python bench/resume.py                   # CUDA when present, else the CPU
    python bench/resume.py --device cpu

`bench/gpu.py` runs it in every precision of the device.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from itertools import count
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcspec.compute import precisions_on  # noqa: E402
from tcspec.compute.determinism import make_deterministic, settings  # noqa: E402
from tcspec.dictionaries import clt_io  # noqa: E402
from tcspec.dictionaries.clt import CLTConfig  # noqa: E402
from tcspec.dictionaries.coders import CoderConfig  # noqa: E402
from tcspec.models.hooks import full_name  # noqa: E402
from tcspec.spec import CLTSpec, TranscoderSpec  # noqa: E402
from tcspec.training import Member, MemberRun, train  # noqa: E402
from tcspec.training.clt import CLTRun  # noqa: E402
from tcspec.vocab import WEIGHTS_FILE  # noqa: E402

L, D, F, B = 3, 64, 256, 128  # layers, d_model, features (a CLT's per layer), batch
STEPS, EVERY, CRASH = 12, 4, 10  # the pass, its checkpoints, the batch the crash comes at
IN, OUT = "ln2.hook_normalized", "hook_mlp_out"


def batches(crash_at: int | None = None):
    """Batch i: every layer's input and output hook [B, D], seeded by i (on the CPU; the
    loop moves it to the device)."""
    A = torch.randn(L, D, D, generator=torch.Generator().manual_seed(5)) / D**0.5

    def source(start: int):
        for i in count(start):
            if i == crash_at:
                raise RuntimeError(f"simulated crash at batch {i}")
            g = torch.Generator().manual_seed(20_000 + i)
            x = torch.relu(torch.randn(L, B, D, generator=g) - 0.5) + 0.1  # [L, B, D]
            y = x @ A  # [L, B, D]
            yield {full_name(li, h): t[li] for li in range(L) for h, t in ((IN, x), (OUT, y))}

    return source


def runs(folder: Path, precision: str, device: str) -> list:
    """The four dictionaries of the pass, each writing under `folder`."""
    out = []
    for act, extra in (("topk", dict(k=8)), ("jumprelu", dict(pre_act_coef=1e-3, l1=1e-2))):
        cfg = CLTConfig(n_layers=L, d_model=D, d_sae=F, activation=act, k=extra.get("k"))
        spec = CLTSpec(kind="clt", d_sae=F, activation=act, lr=3e-3, batch_size=B, seed=1,
                       checkpoint_every=EVERY, precision=precision, **extra)  # fmt: skip
        out.append(CLTRun(f"clt-{act}", spec, cfg, STEPS, folder / f"clt-{act}", device))
    per_layer = (("relu", dict(l1=1e-3, dead_features="ghost_grads", dead_window=2)),
                 ("topk", dict(activation="topk", k=8, dead_features="aux_k", dead_window=2)))  # fmt: skip
    for name, opts in per_layer:
        spec = TranscoderSpec(kind="transcoder", d_sae=F, lr=3e-3, batch_size=B,
                              checkpoint_every=EVERY, precision=precision, **opts)  # fmt: skip
        cfg = CoderConfig(kind="transcoder", d_in=D, d_out=D, d_sae=F, activation=spec.activation,
                          k=spec.k)  # fmt: skip
        m = Member(f"tc-{name}", spec, cfg, full_name(1, IN), full_name(1, OUT),
                   folder / f"tc-{name}", seed=2)  # fmt: skip
        out.append(MemberRun(m, STEPS, B, device))
    return out


def saved(folder: Path) -> dict[str, torch.Tensor]:
    """Every dictionary's weights as saved under `folder`, by "dictionary/tensor"."""
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name.startswith("clt-"):
            weights = clt_io.load(d).state_dict()
        else:
            weights = load_file(str(d / WEIGHTS_FILE))
        out |= {f"{d.name}/{k}": v.float() for k, v in weights.items()}
    return out


def check(device: str, precision: str) -> dict:
    """Resume a stopped pass in `precision` on `device`; whether it ends bitwise equal to an
    uninterrupted one, the largest difference and the tensors that differ."""
    make_deterministic(device)
    quiet = dict(device=device, progress=False, log=lambda s: None, log_every=1)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        root = Path(tmp)
        train(runs(root / "whole", precision, device), batches(), STEPS, root / "ck0", **quiet)
        try:
            train(runs(root / "resumed", precision, device), batches(CRASH), STEPS, root / "ck",
                  **quiet)  # fmt: skip
            raise AssertionError("the pass did not crash")
        except RuntimeError as e:
            if "simulated crash" not in str(e):
                raise
        train(runs(root / "resumed", precision, device), batches(), STEPS, root / "ck", **quiet)
        a, b = saved(root / "whole"), saved(root / "resumed")
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    diff = max(((a[k] - b[k]).abs().max().item() for k in differ), default=0.0)
    nondeterministic = sorted({str(w.message).split(" ")[0] for w in seen
                               if "does not have a deterministic" in str(w.message)})  # fmt: skip
    return {"precision": precision, "bitwise": not differ, "max_abs_diff": diff,
            "tensors": len(a), "differ": differ, "nondeterministic_ops": nondeterministic}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    rows = [check(a.device, prec) for prec in precisions_on(a.device)]
    print(json.dumps({"device": a.device, "settings": settings(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
