"""Gemma Scope files: JumpReLU SAEs and transcoders as Google DeepMind released them.

| file | tensors |
|---|---|
| `params.npz` (Gemma Scope) | W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out], threshold [d_sae] |
| `params.safetensors` (Gemma Scope 2) | w_enc, w_dec, b_enc, b_dec, threshold as above, affine_skip_connection [d_in, d_out] |

The function is `z = relu(x W_enc + b_enc) * [x W_enc + b_enc > threshold]`,
`y = z W_dec + b_dec (+ x affine_skip_connection)`: no input pre-bias. A transcoder's Coder
b_dec is 0 (its b_dec is the output bias); an SAE's tied b_dec moves into the encoder bias
(`b_enc + b_dec W_enc`, the same pre-activations up to float32 rounding). A negative
threshold is read as 0 (the same function, see `formats`).

The files hold no config. The kind and hooks come from the path, as SAELens's Gemma Scope
loaders read them: a path naming `transcoder` is a transcoder (`affine_skip_connection`
makes it a skip transcoder) reading `blocks.{L}.ln2.hook_normalized` and writing
`blocks.{L}.hook_mlp_out`; otherwise an SAE on `hook_resid_post` (`-res`, `resid_post`) or
`hook_mlp_out` (`-mlp`, `mlp_out`); `L` from `layer_{L}`. Attention-output SAEs (`-att`,
`attn_out`, read at `attn.hook_z`) are refused. `load_dictionary(in_hook=..., out_hook=...)`
sets hooks the path does not tell.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tcspec.dictionaries.coders import Coder
from tcspec.interop.tensors import (
    Tensors,
    build_coder,
    fold_pre_bias,
    make_cfg,
    one_line,
    read_safetensors,
    take_threshold,
    threshold_family,
)
from tcspec.models.hooks import TRANSCODER_IN, TRANSCODER_OUT, full_name

GEMMA_FILES = ("params.npz", "params.safetensors")
LAYER = re.compile(r"layer_(\d+)")


def gemma_file(path: Path) -> Path | None:
    """The Gemma Scope weights file at `path` (the file itself, or one in the folder)."""
    if path.is_file():
        return path if path.name in GEMMA_FILES else None
    found = [path / n for n in GEMMA_FILES if (path / n).is_file()]
    return found[0] if len(found) == 1 else None


def _read(file: Path) -> Tensors:
    if file.suffix == ".safetensors":
        t = read_safetensors(file)
    else:
        try:
            with np.load(file, allow_pickle=False) as data:
                raw = {k: torch.from_numpy(np.array(data[k], dtype=np.float32)) for k in data}
        except Exception as e:  # numpy raises many types for a damaged archive
            raise ValueError(f"{file}: unreadable npz file: {one_line(e)}") from e
        t = Tensors(file, raw)
    # Gemma Scope spells the matrices w_enc/w_dec or W_enc/W_dec
    for low in ("w_enc", "w_dec"):
        if t.has(low) and not t.has("W" + low[1:]):
            t.tensors["W" + low[1:]] = t.tensors.pop(low)
    return t


def _hooks(path: Path, transcoder: bool) -> tuple[int | None, str | None, str | None]:
    """(layer, in_hook, out_hook) as the path tells them."""
    text = str(path).lower()
    m = LAYER.search(text)
    layer = int(m.group(1)) if m else None
    if layer is None:
        return None, None, None
    if transcoder:
        return layer, full_name(layer, TRANSCODER_IN), full_name(layer, TRANSCODER_OUT)
    if "-att" in text or "attn_out" in text:
        raise ValueError(f"{path}: attention-output SAEs (read at attn.hook_z) are not supported")
    for marks, hook in (
        (("-res", "resid_post"), "hook_resid_post"),
        (("-mlp", "mlp_out"), "hook_mlp_out"),
    ):
        if any(mark in text for mark in marks):
            return layer, full_name(layer, hook), full_name(layer, hook)
    return layer, None, None


def load_gemma_scope(path: Path, layer: int | None) -> tuple[Coder, Path]:
    file = gemma_file(path)
    if file is None:
        raise ValueError(f"{path}: expected one of {GEMMA_FILES}")
    t = _read(file)
    d_in, d_sae = t.ndim2("W_enc")
    d_out = t.ndim2("W_dec")[1]
    skip = t.has("affine_skip_connection")
    transcoder = skip or "transcoder" in str(path).lower()
    at, in_hook, out_hook = _hooks(path, transcoder)
    kind = ("skip_transcoder" if skip else "transcoder") if transcoder else "sae"
    cfg = make_cfg(
        file,
        kind=kind,
        d_in=d_in,
        d_out=d_out,
        d_sae=d_sae,
        activation=threshold_family(),  # JumpReLU
        in_hook=in_hook,
        out_hook=out_hook,
        layer=at,
    )
    W_enc, b_enc = t.take("W_enc", (d_in, d_sae)), t.take("b_enc", (d_sae,))
    params = {"W_enc": W_enc, "W_dec": t.take("W_dec", (d_sae, d_out))}
    params["threshold"] = take_threshold(t, "threshold", d_sae)
    b_dec = t.take("b_dec", (d_out,))
    if transcoder:
        params |= {"b_dec": torch.zeros(d_in), "b_enc": b_enc, "b_dec_out": b_dec}
        if skip:
            params["W_skip"] = t.take("affine_skip_connection", (d_in, d_out))
    else:  # the tied b_dec is not applied to the input: fold it out of the pre-activations
        params |= {"b_dec": b_dec, "b_enc": fold_pre_bias(W_enc, b_enc, -b_dec)}
    t.done()
    return build_coder(cfg, file, **params), file
