"""circuit-tracer transcoder sets: `config.yaml` (`model_kind: transcoder_set`, hooks
relative to a block) + `layer_{i}.safetensors`, read as Coders (see `formats` for the bias
rules). A layer file with `activation_function.threshold` [d_sae] is a JumpReLU transcoder
(BatchTopK when tcspec wrote it from one: `tcspec.activation` in the config); a config with
`activation: topk` and `k` (circuit-tracer 0.5.0) a TopK set. circuit-tracer's TopK keeps the
k largest pre-activations as they are, tcspec's ReLUs them: the two agree wherever a token
has at least k positive pre-activations (always for a TopK dictionary trained to use them)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families import FAMILIES
from tcspec.interop.tensors import (
    NOT_REPRESENTABLE,
    build_coder,
    make_cfg,
    one_line,
    read_as,
    read_safetensors,
    take_threshold,
    threshold_family,
    transcoder_biases,
)
from tcspec.models.hooks import block_name
from tcspec.vocab import CT_CONFIG

CT_LAYER = re.compile(r"^layer_(\d+)\.safetensors$")


def ct_family(word) -> str:
    """The family of a set whose config.yaml says `activation: word` (None: says none) and
    whose layers hold no threshold: the family written with that word (TopK), else the one
    written with none (ReLU; circuit-tracer's default)."""
    own = [f for f in FAMILIES.values() if f.reads_as is None and not f.thresholded]
    named = [f.name for f in own if word is not None and f.circuit_tracer == word]
    return named[0] if named else next(f.name for f in own if f.circuit_tracer is None)


def read_ct_config(folder: Path) -> dict:
    """A circuit-tracer `config.yaml` (safe YAML), checked to describe a transcoder set."""
    file = folder / CT_CONFIG
    try:
        raw = yaml.safe_load(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{file}: unreadable YAML: {one_line(e)}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a mapping")
    kind = raw.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise ValueError(
            f"{file}: `model_kind` {kind!r} is not supported (transcoder_set; cross-layer "
            "transcoders have no single-layer Coder)"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"{file}: missing `{key}`")
    return raw


def ct_layer_files(folder: Path, config: dict) -> dict[int, Path]:
    """layer -> weights file of a circuit-tracer set: `layer_{i}.safetensors` in the folder,
    or else the local paths listed under `transcoders` (relative ones from the folder)."""
    files = {
        int(m.group(1)): p
        for p in folder.iterdir()
        if (m := CT_LAYER.match(p.name)) and p.is_file()
    }
    if files or "transcoders" not in config:
        return files
    for i, ref in enumerate(config["transcoders"] or []):
        if str(ref).startswith("hf://"):
            raise ValueError(
                f"{folder / CT_CONFIG}: `transcoders[{i}]` is a hub reference ({ref}); "
                "download the set first"
            )
        p = Path(ref)
        files[i] = p if p.is_absolute() else folder / p
    return files


def _ct_hook(folder: Path, config: dict, key: str, layer: int) -> str:
    try:
        return block_name(layer, config[key])
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{folder / CT_CONFIG}: `{key}` {config[key]!r} is neither a hook name nor a "
            f"`{{layer}}` template ({one_line(e)})"
        ) from e


def load_circuit_tracer(path: Path, layer: int | None) -> tuple[Coder, Path]:
    folder = path.parent if path.is_file() else path
    config = read_ct_config(folder)
    files = ct_layer_files(folder, config)
    if path.is_file():
        m = CT_LAYER.match(path.name)
        chosen = int(m.group(1)) if m else None
        if layer is not None and chosen != layer:
            raise ValueError(f"{path}: this file is layer {chosen}, not {layer}")
        layer = chosen
    if layer is None:
        if len(files) != 1:
            raise ValueError(
                f"{folder}: a transcoder set of layers {sorted(files)}; pass the layer to load"
            )
        layer = next(iter(files))
    if layer not in files:
        raise ValueError(f"{folder}: no transcoder for layer {layer} (has {sorted(files)})")
    w_file = files[layer]
    if w_file.suffix != ".safetensors":
        raise ValueError(f"{w_file}: only .safetensors transcoders are read")
    t = read_safetensors(w_file)
    d_sae, d_in = t.ndim2("W_enc")
    d_out = t.ndim2("W_dec")[1]
    skip = t.has("W_skip")
    activation, k = ct_family(config.get("activation")), None
    if FAMILIES[activation].takes_k:
        k = config.get("k")
        if not isinstance(k, int) or not 0 < k <= d_sae:
            raise ValueError(
                f"{folder / CT_CONFIG}: `k` must be an integer in 1..{d_sae}, got {k!r}"
            )
    elif t.has("activation_function.threshold"):
        ours = config.get("tcspec") if isinstance(config.get("tcspec"), dict) else {}
        activation, k = read_as(threshold_family(), ours.get("activation"), ours.get("k"), d_sae)
    # Hook names are kept as given. circuit-tracer's own sets read `mlp.hook_in` of a model
    # loaded without LayerNorm folding (LN weight and bias applied), which is not the folded
    # model's `ln2.hook_normalized`; such a set needs the model's ln2 folded into W_enc.
    cfg = make_cfg(
        w_file,
        kind="skip_transcoder" if skip else "transcoder",
        d_in=d_in,
        d_out=d_out,
        d_sae=d_sae,
        activation=activation,
        k=k,
        in_hook=_ct_hook(folder, config, "feature_input_hook", layer),
        out_hook=_ct_hook(folder, config, "feature_output_hook", layer),
        layer=layer,
    )
    W_enc = t.take("W_enc", (d_sae, d_in)).T  # [d_in, d_sae]
    params = transcoder_biases(folder, W_enc, t.take("b_enc", (d_sae,)), f"layer_{layer}.")
    params |= {"W_enc": W_enc, "W_dec": t.take("W_dec", (d_sae, d_out))}
    params["b_dec_out"] = t.take("b_dec", (d_out,))
    if skip:
        params["W_skip"] = t.take("W_skip", (d_out, d_in)).T  # [d_in, d_out]
    if cfg.thresholded:
        params["threshold"] = take_threshold(t, "activation_function.threshold", d_sae)
    t.done(NOT_REPRESENTABLE)
    return build_coder(cfg, w_file, **params), w_file
