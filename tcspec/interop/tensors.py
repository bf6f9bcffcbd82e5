"""What every format's loader shares: named tensors taken by shape, JSON and safetensors
reading with located errors, Coder construction, the pre-bias fold, and the tcspec sidecar
file that keeps a transcoder's input pre-bias through formats that have none.

Exactness. A transcoder computes `(x - b_dec) W_enc + b_enc`; SAELens, sparsify and
circuit-tracer transcoders have no input pre-bias, so an export folds it into the encoder
bias (`b_enc - b_dec W_enc`). The fold is exact in real numbers, not in float32: a feature at
its threshold can flip. Exports therefore also write `PRE_BIAS_FILE` beside the format's
files (other tools ignore it) holding the unfolded `b_dec` and `b_enc`; tcspec's loader uses
them when the format's encoder bias is still, bitwise, their fold, so an export read back by
tcspec is the same dictionary bit for bit. When the format's files were changed after the
export (the fold no longer matches), the format's own tensors are used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.families import FAMILIES
from tcspec.models.hooks import split_name

# beside an export: the tcspec parameters the format cannot hold ({prefix}b_dec, {prefix}b_enc)
PRE_BIAS_FILE = "tcspec_pre_bias.safetensors"


class Tensors:
    """Named tensors of one file: `take` each one with its expected shape; `done` refuses any
    left over."""

    def __init__(self, file: Path, tensors: dict[str, Tensor]):
        self.file, self.tensors = file, dict(tensors)

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> Tensor:
        if key not in self.tensors:
            raise ValueError(f"{self.file}: missing tensor `{key}`")
        t = self.tensors.pop(key)
        if not isinstance(t, Tensor):
            raise ValueError(f"{self.file}: `{key}` is a {type(t).__name__}, not a tensor")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"{self.file}: tensor `{key}` has shape {list(t.shape)}, expected {list(shape)}"
            )
        return t.detach().to("cpu", torch.float32)

    def ndim2(self, key: str) -> tuple[int, int]:
        """The shape of a matrix that is still to be taken (to read dims from it)."""
        if key not in self.tensors:
            raise ValueError(f"{self.file}: missing tensor `{key}`")
        shape = tuple(self.tensors[key].shape)
        if len(shape) != 2:
            raise ValueError(f"{self.file}: tensor `{key}` has shape {list(shape)}, not a matrix")
        return shape  # type: ignore[return-value]

    def done(self, why: dict[str, str] | None = None) -> None:
        for key in self.tensors:
            reason = (why or {}).get(key, "no tcspec parameter holds it")
            raise ValueError(f"{self.file}: tensor `{key}` is not supported: {reason}")


# tensors some formats carry that a Coder cannot represent, and why
_STRAY_THRESHOLD = "JumpReLU thresholds in a file whose config names no JumpReLU architecture"
NOT_REPRESENTABLE = {
    "threshold": _STRAY_THRESHOLD,
    "log_threshold": "JumpReLU log-thresholds (training form; save thresholds, `exp` of them)",
    "activation_function.threshold": _STRAY_THRESHOLD,
    "log_thresholds": "JumpReLU log-thresholds (training form; save thresholds, `exp` of them)",
    "scaling_factor": "a fine-tuning scale on the features that tcspec Coders lack",
}


def take_threshold(t: Tensors, key: str, d_sae: int) -> Tensor:
    """A JumpReLU threshold [d_sae] of a tool that ReLUs first (`relu(pre) * [pre > th]`,
    SAELens, Gemma Scope, circuit-tracer) as a Coder threshold (`pre * [pre > th]`): a negative
    threshold acts as 0 there, so it becomes 0 (nonnegative ones are kept bit for bit)."""
    th = t.take(key, (d_sae,))
    return torch.where(th < 0, torch.zeros_like(th), th)


def read_safetensors(file: Path) -> Tensors:
    if not file.is_file():
        raise ValueError(f"{file}: missing weights file")
    try:
        return Tensors(file, load_file(str(file)))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{file}: unreadable safetensors file: {e}") from e


def one_line(e: BaseException) -> str:
    """An exception's message on one line (parsers' messages span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def read_int(raw: dict, key: str, file: Path, default: int | None = None) -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{file}: `{key}` must be a positive integer, got {v!r}")
    return v


def layer_of(hook: str | None) -> int | None:
    split = split_name(hook) if isinstance(hook, str) else None
    return split[0] if split else None


def fold_pre_bias(W_enc: Tensor, b_enc: Tensor, b_pre: Tensor) -> Tensor:
    """b_enc - b_pre W_enc: the encoder bias that gives `x W_enc + b` the pre-activations of
    `(x - b_pre) W_enc + b_enc` (in float64, then float32)."""
    return (b_enc.double() - b_pre.double() @ W_enc.double()).float()  # [d_sae]


def build_coder(cfg: CoderConfig, where: Path, **params: Tensor) -> Coder:
    """A Coder with `cfg` holding exactly `params` (Coder parameter names)."""
    try:
        coder = Coder(cfg)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    state = {k: v.contiguous() for k, v in params.items()}
    expected = {k: tuple(v.shape) for k, v in coder.state_dict().items()}
    if set(state) != set(expected):
        raise ValueError(
            f"{where}: a {cfg.kind} needs {sorted(expected)}, the file gives {sorted(state)}"
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(
                f"{where}: `{k}` has shape {list(state[k].shape)}, expected {list(shape)}"
            )
    coder.load_state_dict(state)
    return coder.requires_grad_(False)


def make_cfg(where: Path, **kw) -> CoderConfig:
    try:
        return CoderConfig(**kw)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def pre_bias_tensors(coder: Coder, prefix: str = "") -> dict[str, Tensor]:
    """The tensors of `PRE_BIAS_FILE` for one transcoder (`prefix` tells layers apart)."""
    return {f"{prefix}b_dec": coder.b_dec.detach(), f"{prefix}b_enc": coder.b_enc.detach()}


def restore_pre_bias(
    folder: Path, W_enc: Tensor, b_enc: Tensor, prefix: str = ""
) -> tuple[Tensor, Tensor] | None:
    """(b_dec [d_in], b_enc [d_sae]) unfolded from `folder / PRE_BIAS_FILE` when it holds them
    for `prefix` and their fold is bitwise the format's `b_enc`; None otherwise (no file, or
    the format's tensors changed since the export). A corrupted file is a ValueError."""
    file = Path(folder) / PRE_BIAS_FILE
    if not file.is_file():
        return None
    t = read_safetensors(file)
    if not (t.has(f"{prefix}b_dec") and t.has(f"{prefix}b_enc")):
        return None
    pre = t.take(f"{prefix}b_dec", (W_enc.shape[0],))
    unfolded = t.take(f"{prefix}b_enc", (W_enc.shape[1],))
    if not torch.equal(fold_pre_bias(W_enc, unfolded, pre), b_enc):
        return None
    return pre, unfolded


def transcoder_biases(folder: Path, W_enc, b_enc, prefix: str = "") -> dict:
    """The input pre-bias and encoder bias of a transcoder read from a format without a
    pre-bias: tcspec's own, exactly, from the sidecar of a tcspec export (`tensors`);
    otherwise a zero pre-bias and the format's encoder bias (the same function)."""
    restored = restore_pre_bias(folder, W_enc, b_enc, prefix)
    if restored is None:
        return {"b_dec": torch.zeros(W_enc.shape[0]), "b_enc": b_enc}
    return dict(zip(("b_dec", "b_enc"), restored))


def threshold_family() -> str:
    """The family another tool's file with a threshold tensor is: the thresholded family
    read as itself (JumpReLU)."""
    return next(f.name for f in FAMILIES.values() if f.thresholded and f.reads_as is None)


def read_as(written: str, activation, k, d_sae: int) -> tuple[str, int | None]:
    """(activation, k) of a file other tools read as family `written` (e.g. a JumpReLU
    file): the family tcspec wrote it from when tcspec's keys (`activation`, `k`) name one
    that `reads_as` it (BatchTopK, with a valid k), otherwise `written`."""
    f = FAMILIES.get(activation) if isinstance(activation, str) else None
    if f is not None and f.reads_as == written:
        if not f.takes_k:
            return f.name, None
        if isinstance(k, int) and not isinstance(k, bool) and 0 < k <= d_sae:
            return f.name, k
    return written, None
