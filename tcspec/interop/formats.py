"""Recognise and load dictionaries written by other tools as `tcspec.dictionaries.coders.Coder`s.

Formats (the names `detect_format` returns and `load_dictionary` takes):

| format | on disk | tensors |
|---|---|---|
| `tcspec` | folder: `cfg.json` + `weights.safetensors` | `tcspec.dictionaries.coders` |
| `saelens` | folder: `cfg.json` + `sae_weights.safetensors` | W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec, W_skip [d_out, d_in] |
| `sparsify` | folder: `cfg.json` + `sae.safetensors` | encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_out], b_dec, W_skip [d_out, d_in] |
| `circuit-tracer` | folder: `config.yaml` + `layer_{i}.safetensors` | W_enc [d_sae, d_in], b_enc, W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] |
| `gemma-scope` | `params.npz` or `params.safetensors` (file or folder) | see `gemma_scope` |
| `transcoder-circuits` | `.pt` file: pickled `{cfg, state_dict}` | W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec [d_in], b_dec_out [d_out] |

Biases. A Coder computes `z = act((x - b_dec) W_enc + b_enc)`. Where a format has no input
pre-bias (transcoders in SAELens, sparsify and circuit-tracer; SAELens SAEs with
`apply_b_dec_to_input: false`) the Coder's b_dec is 0, or, for an SAE whose output bias is
tied to b_dec, b_dec is moved into the encoder bias: `b_enc' = b_enc + b_dec W_enc` gives the
same pre-activations. The formats' output bias `b_dec` becomes the Coder's `b_dec_out`.

JumpReLU. The formats compute `relu(pre) * [pre > threshold]`, a Coder `pre * [pre >
threshold]`: a negative threshold is read as 0 (the same function). SAELens `jumprelu*`
folders written by tcspec from a BatchTopK dictionary load back as BatchTopK (`k` kept in the
metadata); any other is a JumpReLU Coder. Gemma Scope files (`gemma-scope`, see
`gemma_scope`) are JumpReLU SAEs and transcoders.

What a Coder cannot hold is refused with a ValueError naming the file and the key: JumpReLU
log-thresholds (the training form), run-time input normalisation, attention-head (hook_z) reshaping, groupmax,
cross-layer transcoders, and any tensor a loader does not consume.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from tcspec.atomic import read_json
from tcspec.dictionaries import coders
from tcspec.dictionaries.coders import Coder, CoderConfig
from tcspec.dictionaries.families import FAMILIES
from tcspec.interop.circuit_tracer import CT_LAYER, load_circuit_tracer
from tcspec.interop.gemma_scope import GEMMA_FILES, load_gemma_scope
from tcspec.interop.safe_pickle import PickledRecord, load_checkpoint
from tcspec.interop.tensors import (
    NOT_REPRESENTABLE,
    Tensors,
    build_coder,
    fold_pre_bias,
    layer_of,
    make_cfg,
    one_line,
    read_as,
    read_int,
    read_safetensors,
    take_threshold,
    transcoder_biases,
)
from tcspec.vocab import CFG_FILE, CT_CONFIG, FORMATS, KINDS, WEIGHTS_FILE

# marker files of the folder formats (tcspec's own, and the names the other tools give them)
MARKERS: dict[str, tuple[str, str]] = {
    "tcspec": (CFG_FILE, WEIGHTS_FILE),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}
PT_SUFFIXES = (".pt", ".pth")


# ------------------------------------------------------------------------------ detection
def detect_format(path: str | Path) -> str:
    """The format of the dictionary at `path` (one of `FORMATS`), from the files present.

    Raises ValueError naming `path` when no format or more than one matches.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix in PT_SUFFIXES:
            return "transcoder-circuits"
        if CT_LAYER.match(path.name) and (path.parent / CT_CONFIG).is_file():
            return "circuit-tracer"
        if path.name in GEMMA_FILES:
            return "gemma-scope"
        raise ValueError(
            f"{path}: not a dictionary file (expected a `.pt` checkpoint, or a "
            f"`layer_<i>.safetensors` beside a circuit-tracer `{CT_CONFIG}`, or Gemma Scope "
            f"{' or '.join(GEMMA_FILES)}); "
            "for a folder format, give the folder"
        )
    found = [f for f, files in MARKERS.items() if all((path / n).is_file() for n in files)]
    if (path / CT_CONFIG).is_file():
        found.append("circuit-tracer")
    if any((path / n).is_file() for n in GEMMA_FILES):
        found.append("gemma-scope")
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{path}: ambiguous, it holds the files of {found}; pass the format")
    expected = "; ".join(f"{f}: {' + '.join(n)}" for f, n in MARKERS.items())
    raise ValueError(
        f"{path}: no known dictionary format ({expected}; circuit-tracer: {CT_CONFIG} + "
        f"layer_<i>.safetensors; gemma-scope: {' or '.join(GEMMA_FILES)}; "
        "transcoder-circuits: a .pt file)"
    )


# -------------------------------------------------------------------------------- loading
def load_dictionary(
    path: str | Path,
    format: str | None = None,
    *,
    layer: int | None = None,
    trust_pickle: bool = False,
    expect_d_in: int | None = None,
    in_hook: str | None = None,
    out_hook: str | None = None,
) -> Coder:
    """Load the dictionary at `path` as a Coder (on the CPU, float32).

    format: one of `FORMATS`; detected from the files when None.
    layer: the block; picks the layer of a circuit-tracer set, and otherwise fills or must
        agree with the layer the files name.
    trust_pickle: let a `.pt` checkpoint load any Python global (runs code from the file).
    expect_d_in: the width of the model hook the dictionary reads; a different d_in fails.
    in_hook, out_hook: full TransformerLens hook names, for formats that do not store them
        (sparsify) or to override the stored ones.
    """
    path = Path(path)
    format = format or detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"{path}: unknown dictionary format `{format}`; one of {FORMATS}")
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    loader = {
        "tcspec": _load_tcspec,
        "saelens": _load_saelens,
        "sparsify": _load_sparsify,
        "circuit-tracer": load_circuit_tracer,
        "gemma-scope": load_gemma_scope,
        "transcoder-circuits": _load_transcoder_circuits,
    }[format]
    kwargs = {"trust_pickle": trust_pickle} if format == "transcoder-circuits" else {}
    try:
        coder, where = loader(path, layer, **kwargs)
    except ValueError as e:  # every message on one line, naming a file
        msg = one_line(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from e
    cfg = coder.cfg
    if layer is not None and cfg.layer is not None and cfg.layer != layer:
        raise ValueError(f"{where}: the dictionary belongs to layer {cfg.layer}, not {layer}")
    if cfg.kind == "sae" and out_hook is None:
        out_hook = in_hook  # an SAE writes where it reads
    overrides = {
        k: v
        for k, v in (("layer", layer), ("in_hook", in_hook), ("out_hook", out_hook))
        if v is not None
    }
    if overrides:
        coder.cfg = CoderConfig(**{**_fields(cfg), **overrides})
    if expect_d_in is not None and coder.cfg.d_in != expect_d_in:
        hook = f" (`{coder.cfg.in_hook}`)" if coder.cfg.in_hook else ""
        raise ValueError(
            f"{where}: d_in is {coder.cfg.d_in}, but the hook it reads{hook} has width "
            f"{expect_d_in}"
        )
    return coder


def _fields(cfg: CoderConfig) -> dict:
    return {f: getattr(cfg, f) for f in CoderConfig.__dataclass_fields__}


# ----------------------------------------------------------------------------- tcspec
def _load_tcspec(path: Path, layer: int | None) -> tuple[Coder, Path]:
    try:
        return coders.load(path), path
    except (TypeError, KeyError, RuntimeError, OverflowError, json.JSONDecodeError) as e:
        why = one_line(e)  # RecursionError is a RuntimeError: JSON nested too deep
        raise ValueError(f"{path / CFG_FILE}: not a tcspec dictionary config: {why}") from e
    except SafetensorError as e:
        raise ValueError(f"{path / WEIGHTS_FILE}: unreadable safetensors file: {e}") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {one_line(e)}") from e


# ---------------------------------------------------------------------------- SAELens
def _saelens_architectures() -> dict[str, tuple[str, str]]:
    """SAELens architecture -> (activation, kind) of what tcspec reads: each family read as
    itself (`reads_as`), as an SAE and, where SAELens has them, as each transcoder kind."""
    table = {}
    for f in FAMILIES.values():
        if f.reads_as is None:
            table[f.saelens] = (f.name, "sae")
            for kind in KINDS if f.saelens_transcoder else ():
                if kind != "sae":
                    table[f.saelens_transcoder.format(kind=kind)] = (f.name, kind)
    return table


SAELENS_ARCHITECTURES = _saelens_architectures()


def _load_saelens(path: Path, layer: int | None) -> tuple[Coder, Path]:
    """SAELens 6 configs (fields at the top, model/hook facts under `metadata`) and the
    flat pre-6.0 configs (`hook_point`, `activation_fn_str`, `activation_fn_kwargs`, ...)."""
    cfg_file, w_file = (path / name for name in MARKERS["saelens"])
    raw = read_json(cfg_file)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}

    def get(*keys):
        for k in keys:
            if k in raw and raw[k] is not None:
                return raw[k]
            if k in meta and meta[k] is not None:
                return meta[k]
        return None

    arch = raw.get("architecture", "standard")
    activation = get("activation_fn", "activation_fn_str") or "relu"
    k = raw.get("k")
    if "architecture" not in raw and activation == "topk":  # pre-6.0 TopK
        arch, k = "topk", (raw.get("activation_fn_kwargs") or {}).get("k")
    if not isinstance(arch, str) or arch not in SAELENS_ARCHITECTURES:
        raise ValueError(
            f"{cfg_file}: `architecture` {arch!r} is not representable; tcspec loads "
            f"{tuple(SAELENS_ARCHITECTURES)}"
        )
    name, kind = SAELENS_ARCHITECTURES[arch]
    if arch != "topk" and activation != "relu":
        raise ValueError(f"{cfg_file}: `activation_fn` {activation!r} is not supported (relu)")
    _refuse_run_time_transforms(raw, get, cfg_file)
    d_in, d_sae = read_int(raw, "d_in", cfg_file), read_int(raw, "d_sae", cfg_file)
    transcoder = kind != "sae"
    d_out = read_int(raw, "d_out", cfg_file) if transcoder else d_in
    apply_b_dec = raw.get("apply_b_dec_to_input", True)
    if transcoder and apply_b_dec:
        raise ValueError(
            f"{cfg_file}: `apply_b_dec_to_input: true` on a transcoder (its b_dec is the "
            "output bias; SAELens rejects this too)"
        )
    in_hook = get("hook_name", "hook_point")
    out_hook = get("hook_name_out", "out_hook_point") if transcoder else in_hook
    at = layer_of(in_hook)
    if at is None:
        at = get("hook_layer", "hook_point_layer")
    activation, k = name, k if FAMILIES[name].takes_k else None
    if FAMILIES[name].thresholded:
        activation, k = read_as(name, meta.get("tcspec_activation"), meta.get("tcspec_k"), d_sae)
    cfg = make_cfg(
        cfg_file,
        kind=kind,
        d_in=d_in,
        d_out=d_out,
        d_sae=d_sae,
        activation=activation,
        k=k,
        in_hook=in_hook,
        out_hook=out_hook,
        layer=at,
    )
    return build_coder(cfg, w_file, **_saelens_params(path, w_file, cfg, apply_b_dec)), cfg_file


def _refuse_run_time_transforms(raw: dict, get, cfg_file: Path) -> None:
    """What SAELens applies to activations at run time and a Coder cannot."""
    norm = raw.get("normalize_activations")
    if norm not in (None, False, "none"):
        raise ValueError(
            f"{cfg_file}: `normalize_activations` {norm!r} rescales inputs at run time, which "
            "tcspec dictionaries do not do; fold the scale into the weights (SAELens "
            "`fold_activation_norm_scaling_factor`) and save with `none`"
        )
    if get("reshape_activations") not in (None, "none") or get("hook_head_index") is not None:
        raise ValueError(f"{cfg_file}: attention-head (hook_z / head index) SAEs are not supported")
    if raw.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{cfg_file}: `rescale_acts_by_decoder_norm: true` is not supported")


def _saelens_params(path: Path, w_file: Path, cfg: CoderConfig, apply_b_dec: bool) -> dict:
    """The Coder parameters from `sae_weights.safetensors` (shapes checked against `cfg`)."""
    d_in, d_out, d_sae = cfg.d_in, cfg.d_out, cfg.d_sae
    t = read_safetensors(w_file)
    if t.has("scaling_factor") and torch.allclose(t.tensors["scaling_factor"], torch.tensor(1.0)):
        t.take("scaling_factor")  # all ones: a no-op SAELens itself drops
    W_enc, b_enc = t.take("W_enc", (d_in, d_sae)), t.take("b_enc", (d_sae,))
    W_dec, b_dec = t.take("W_dec", (d_sae, d_out)), t.take("b_dec", (d_out,))
    params = {"W_enc": W_enc, "W_dec": W_dec}
    if cfg.thresholded:
        params["threshold"] = take_threshold(t, "threshold", d_sae)
    if cfg.kind != "sae":
        params |= transcoder_biases(path, W_enc, b_enc) | {"b_dec_out": b_dec}
        if cfg.skip:
            params["W_skip"] = t.take("W_skip", (d_out, d_in)).T  # [d_in, d_out]
    else:  # SAE: b_dec is the tied output bias; as a pre-bias only when applied to the input
        params["b_dec"] = b_dec
        params["b_enc"] = b_enc if apply_b_dec else fold_pre_bias(W_enc, b_enc, -b_dec)
    t.done(NOT_REPRESENTABLE)
    return params


# ---------------------------------------------------------------------------- sparsify
def _sparsify_family(takes_k: bool) -> str:
    """sparsify is TopK: with k < d_sae the unthresholded family with `k` (TopK), with
    k >= d_sae (every ReLU'd pre-activation kept) the one without (ReLU)."""
    return next(
        f.name
        for f in FAMILIES.values()
        if f.reads_as is None and not f.thresholded and f.takes_k == takes_k
    )


def _load_sparsify(path: Path, layer: int | None) -> tuple[Coder, Path]:
    """EleutherAI sparsify: TopK on ReLU'd pre-activations (`k >= d_sae` is plain ReLU);
    a transcoder (`transcode: true`) has no input pre-bias. Hook names are not stored by
    sparsify (the folder is named after a Hugging Face module); tcspec exports add them under
    the `tcspec` key, which sparsify ignores."""
    cfg_file, w_file = (path / name for name in MARKERS["sparsify"])
    raw = read_json(cfg_file)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{cfg_file}: `activation` {raw['activation']!r} is not supported (topk)")
    d_in = read_int(raw, "d_in", cfg_file)
    transcode, skip = bool(raw.get("transcode", False)), bool(raw.get("skip_connection", False))
    if skip and not transcode:
        raise ValueError(f"{cfg_file}: an SAE with a skip connection is not representable")
    t = read_safetensors(w_file)
    d_sae, enc_in = t.ndim2("encoder.weight")
    if enc_in != d_in:
        raise ValueError(f"{w_file}: `encoder.weight` reads width {enc_in}, cfg.json says {d_in}")
    if raw.get("num_latents") and raw["num_latents"] != d_sae:
        raise ValueError(f"{cfg_file}: `num_latents` {raw['num_latents']} but {d_sae} latents")
    d_out = t.ndim2("W_dec")[1]
    k = read_int(raw, "k", cfg_file, default=32)
    ours = raw.get("tcspec") if isinstance(raw.get("tcspec"), dict) else {}
    at = ours.get("layer")
    if at is None:
        m = re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)", path.name)
        at = int(m.group(1)) if m else None
    cfg = make_cfg(
        cfg_file,
        kind=("skip_transcoder" if skip else "transcoder") if transcode else "sae",
        d_in=d_in,
        d_out=d_out,
        d_sae=d_sae,
        activation=_sparsify_family(k < d_sae),
        k=k if k < d_sae else None,
        in_hook=ours.get("in_hook"),
        out_hook=ours.get("out_hook"),
        layer=at,
    )
    W_enc = t.take("encoder.weight", (d_sae, d_in)).T  # [d_in, d_sae]
    params = {"W_enc": W_enc, "b_enc": t.take("encoder.bias", (d_sae,))}
    params["W_dec"] = t.take("W_dec", (d_sae, d_out))
    if transcode:
        params |= transcoder_biases(path, W_enc, params["b_enc"])
        params["b_dec_out"] = t.take("b_dec", (d_out,))
        if skip:
            params["W_skip"] = t.take("W_skip", (d_out, d_in)).T  # [d_in, d_out]
    else:
        params["b_dec"] = t.take("b_dec", (d_in,))
    t.done(NOT_REPRESENTABLE)
    return build_coder(cfg, w_file, **params), cfg_file


# ------------------------------------------------------------------ transcoder-circuits
def _load_transcoder_circuits(
    path: Path, layer: int | None, trust_pickle: bool = False
) -> tuple[Coder, Path]:
    """The transcoder paper's `.pt` checkpoints: `{cfg, state_dict}`, cfg a pickled
    `LanguageModelSAERunnerConfig` (read as a plain record, see `safe_pickle`)."""
    if not path.is_file():
        raise ValueError(f"{path}: expected a .pt file")
    obj = load_checkpoint(path, trust=trust_pickle)
    if not isinstance(obj, dict) or "state_dict" not in obj or "cfg" not in obj:
        raise ValueError(f"{path}: expected a dict with `cfg` and `state_dict`")
    raw = obj["cfg"]
    fields = raw.fields if isinstance(raw, PickledRecord) else getattr(raw, "__dict__", raw)
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: `cfg` is a {type(raw).__name__}, not a config")
    t = Tensors(path, obj["state_dict"])
    d_in, d_sae = t.ndim2("W_enc")
    d_out = t.ndim2("W_dec")[1]
    transcoder = t.has("b_dec_out")
    if bool(fields.get("is_transcoder", transcoder)) != transcoder:
        raise ValueError(f"{path}: `cfg.is_transcoder` disagrees with `b_dec_out` in state_dict")
    for key, have in (("d_in", d_in), ("d_sae", d_sae)):
        if key in fields and fields[key] != have:
            raise ValueError(f"{path}: `cfg.{key}` is {fields[key]}, the weights give {have}")
    in_hook = fields.get("hook_point")
    out_hook = fields.get("out_hook_point") if transcoder else in_hook
    at = layer_of(in_hook)
    if at is None:
        at = fields.get("hook_point_layer")
    cfg = make_cfg(
        path,
        kind="transcoder" if transcoder else "sae",
        d_in=d_in,
        d_out=d_out,
        d_sae=d_sae,
        in_hook=in_hook,
        out_hook=out_hook,
        layer=at,
    )
    params = {
        "W_enc": t.take("W_enc", (d_in, d_sae)),
        "b_enc": t.take("b_enc", (d_sae,)),
        "W_dec": t.take("W_dec", (d_sae, d_out)),
        "b_dec": t.take("b_dec", (d_in,)),
    }
    if transcoder:
        params["b_dec_out"] = t.take("b_dec_out", (d_out,))
    t.done(NOT_REPRESENTABLE)
    return build_coder(cfg, path, **params), path
