"""Sparse dictionaries: transcoders, skip transcoders and SAEs, and their file format.

A transcoder is an SAE whose input and output hooks differ, so one module serves all three:

    z     = act((x - b_dec) W_enc + b_enc)          act = ReLU, TopK (k largest, ReLU'd), or
                                                    the threshold form pre * [pre > threshold]
                                                    (JumpReLU; BatchTopK at inference)
    y_hat = z W_dec + b_out (+ x W_skip)            b_out = b_dec_out, or b_dec for an SAE

W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_in] (input pre-bias),
b_dec_out [d_out] (output bias; an SAE has none: its output bias is tied to b_dec),
W_skip [d_in, d_out] for skip transcoders (it reads the raw input x), threshold [d_sae] for
JumpReLU and BatchTopK dictionaries.

On disk a dictionary is a folder: ``cfg.json`` (the CoderConfig plus any extra keys) and
``weights.safetensors`` (the parameters above by name), each written atomically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tcspec.atomic import atomic_write as _atomic
from tcspec.dictionaries.families import Family, family, names
from tcspec.vocab import ACTIVATIONS, CFG_FILE, KINDS, WEIGHTS_FILE


@dataclass(frozen=True)
class CoderConfig:
    """Shape and type of one dictionary (what is needed to rebuild it from its weights)."""

    kind: Literal[KINDS]  # type: ignore[valid-type]
    """`sae` reconstructs its input (tied output bias); the transcoders predict another hook."""
    d_in: int
    """Width of the input hook."""
    d_out: int
    """Width of the output hook (equals d_in for an SAE)."""
    d_sae: int
    """Number of features."""
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    """ReLU; TopK keeping the k largest pre-activations (then ReLU'd); JumpReLU; BatchTopK
    (k per token on average in training, the threshold form at inference)."""
    k: int | None = None
    """Active features per token for `topk` and `batchtopk`."""
    in_hook: str | None = None
    """Full TransformerLens name of the input hook, e.g. `blocks.8.ln2.hook_normalized`."""
    out_hook: str | None = None
    """Full TransformerLens name of the output hook, e.g. `blocks.8.hook_mlp_out`."""
    layer: int | None = None
    """Block the dictionary belongs to."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind `{self.kind}` is not one of {KINDS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation `{self.activation}` is not one of {ACTIVATIONS}")
        for f in ("d_in", "d_out", "d_sae"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise ValueError(f"{f} must be a positive int, got {getattr(self, f)!r}")
        if self.family.takes_k:
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(
                    f"{self.activation} needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}"
                )
        elif self.k is not None:
            raise ValueError(f"k only applies to activations {names(lambda f: f.takes_k)}")
        if self.kind == "sae" and self.d_in != self.d_out:
            raise ValueError(f"an SAE has d_in == d_out, got {self.d_in} and {self.d_out}")

    @property
    def tied_bias(self) -> bool:
        """True when the output bias is b_dec itself (SAE)."""
        return self.kind == "sae"

    @property
    def skip(self) -> bool:
        return self.kind == "skip_transcoder"

    @property
    def family(self) -> Family:
        """Its activation family (`tcspec.dictionaries.families`)."""
        return family(self.activation)

    @property
    def thresholded(self) -> bool:
        """True when inference is z = pre * [pre > threshold] (JumpReLU, BatchTopK)."""
        return self.family.thresholded


class Coder(nn.Module):
    """A sparse dictionary (see the module docstring for the maths)."""

    def __init__(self, cfg: CoderConfig, seed: int | torch.Generator = 0):
        super().__init__()
        self.cfg = cfg
        g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        # kaiming-uniform as torch lays it out: fan_in is the second dim of each matrix
        W_enc = nn.init.kaiming_uniform_(torch.empty(cfg.d_in, cfg.d_sae), generator=g)
        W_dec = nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_out), generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)  # unit-norm decoder rows
        self.W_enc = nn.Parameter(W_enc)  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))  # [d_sae]
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_out]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))  # [d_in]
        if not cfg.tied_bias:
            self.b_dec_out = nn.Parameter(torch.zeros(cfg.d_out))  # [d_out]
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out))  # [d_in, d_out]
        if cfg.thresholded:
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))  # [d_sae]

    @property
    def b_out(self) -> Tensor:
        """The output bias: b_dec_out, or b_dec for an SAE (tied)."""
        return self.b_dec if self.cfg.tied_bias else self.b_dec_out

    def pre_acts(self, x: Tensor) -> Tensor:
        """(x - b_dec) W_enc + b_enc: [..., d_in] -> [..., d_sae]."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The family's inference form: ReLU; TopK: keep the k largest pre-activations per
        token, ReLU'd, zero the rest; the threshold form (JumpReLU, BatchTopK): pre * [pre >
        threshold]."""
        threshold = self.threshold if self.cfg.thresholded else None
        return self.cfg.family.ops.activate(pre, self.cfg.k, threshold)

    def encode(self, x: Tensor) -> Tensor:
        """x [..., d_in] -> feature activations z [..., d_sae]."""
        return self.activate(self.pre_acts(x))

    def decode(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """z [..., d_sae] -> y_hat [..., d_out]; a skip transcoder also needs its input x."""
        y = z @ self.W_dec + self.b_out  # [..., d_out]
        if self.cfg.skip:
            if x is None:
                raise ValueError("a skip transcoder's decode needs the input x")
            y = y + x @ self.W_skip
        return y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [..., d_in] -> (y_hat [..., d_out], z [..., d_sae])."""
        z = self.encode(x)
        return self.decode(z, x), z


# ----------------------------------------------------------------------------- files
def save(coder: Coder, dir: str | Path, extra: dict | None = None) -> None:
    """Write ``cfg.json`` (config + ``extra``) and ``weights.safetensors`` into ``dir``.

    Each file is written to a temporary name and renamed, weights first, so a folder with a
    ``cfg.json`` always holds complete weights.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(coder.cfg)
    clash = set(cfg) & set(extra or {})
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite the dictionary's config")
    cfg |= extra or {}
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in coder.state_dict().items()
    }
    _atomic(dir / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _atomic(
        dir / CFG_FILE, lambda p: p.write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    )


def load_cfg(dir: str | Path) -> tuple[CoderConfig, dict]:
    """Read ``cfg.json``: the CoderConfig and the extra keys saved beside it."""
    raw = json.loads((Path(dir) / CFG_FILE).read_text())
    if not isinstance(raw, dict):
        raise TypeError(f"it holds a JSON {type(raw).__name__}, not an object")
    names = {f.name for f in dataclasses.fields(CoderConfig)}
    return CoderConfig(**{k: v for k, v in raw.items() if k in names}), {
        k: v for k, v in raw.items() if k not in names
    }


def load(dir: str | Path, device: str | torch.device = "cpu") -> Coder:
    """Rebuild a Coder from a folder written by `save`."""
    cfg, _ = load_cfg(dir)
    coder = Coder(cfg)
    state = load_file(str(Path(dir) / WEIGHTS_FILE))
    differ = set(coder.state_dict()) ^ set(state)
    if differ:
        raise ValueError(
            f"{dir}: weights do not match a {cfg.kind}: differing keys {sorted(differ)}"
        )
    coder.load_state_dict(state)
    return coder.to(device)
