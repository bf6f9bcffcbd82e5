"""Write Coders in other tools' formats (see `formats` for the layouts and the bias rules).

- `saelens`: a folder SAELens 6 loads with `SAE.load_from_disk` (`cfg.json` with the model
  and hook facts under `metadata`, `sae_weights.safetensors`). Architectures `standard`,
  `topk`, `transcoder`, `skip_transcoder`, and `jumprelu`, `jumprelu_transcoder`,
  `jumprelu_skip_transcoder` for JumpReLU and BatchTopK dictionaries; SAELens has no TopK
  transcoder.
- `sparsify`: a folder `SparseCoder.load_from_disk` loads (`cfg.json` + `sae.safetensors`).
  sparsify is TopK only: a ReLU dictionary is written with `k = d_sae`, which keeps every
  ReLU'd pre-activation, i.e. is the same function. sparsify needs d_out == d_in and has no
  thresholds (no JumpReLU or BatchTopK).
- `circuit-tracer`: a transcoder set, `config.yaml` + `layer_{i}.safetensors` for every
  layer 0..n-1 (its loaders require all of them), ReLU, TopK or threshold (JumpReLU,
  BatchTopK) transcoders with d_in == d_out; a threshold is `activation_function.threshold`
  [d_sae], a TopK set's `activation: topk` and `k` are in config.yaml (circuit-tracer 0.5.0).

A BatchTopK dictionary infers in the threshold form, so it is written as a JumpReLU one with
its scalar threshold broadcast to [d_sae] (as SAELens saves its BatchTopK SAEs); `k` and the
activation travel under tcspec's own keys, which the other tools ignore. SAELens and
circuit-tracer compute `relu(pre) * [pre > threshold]`, tcspec `pre * [pre > threshold]`:
the same function while every threshold is >= 0, which the export checks.

Transcoders' input pre-bias is folded into the encoder bias (`b_enc - b_dec W_enc`), since
none of these formats has one for transcoders; an SAE's tied b_dec maps as is. The unfolded
biases go beside them in `tensors.PRE_BIAS_FILE`, which other tools ignore and tcspec's
loader uses, so that an export read back by tcspec is the same dictionary bit for bit.

The weights act on the activations of the model tcspec trained on: TransformerLens with its
default processing (LayerNorm folded, writing weights centred). SAELens loads models the same
way. circuit-tracer loads them unprocessed: `ln2.hook_normalized` is the same tensor there
(TransformerLens hooks it before the LN weights), but its `hook_mlp_out` is not centred, so
the mean over d_model of the MLP output lands in circuit-tracer's error nodes (the next
LayerNorm removes it). sparsify hooks Hugging Face modules, whose outputs are unprocessed;
the TransformerLens hook names travel in `cfg.json` under `tcspec`.
Each file is written to a temporary name and renamed, weights before configs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from tcspec import __version__
from tcspec.atomic import atomic_write as _atomic
from tcspec.atomic import write_json
from tcspec.dictionaries.coders import Coder
from tcspec.dictionaries.families import family, names
from tcspec.interop.formats import MARKERS
from tcspec.interop.tensors import PRE_BIAS_FILE, fold_pre_bias, pre_bias_tensors
from tcspec.models.hooks import split_name
from tcspec.vocab import CT_CONFIG, EXPORT_TARGETS, WRITTEN_ONLY_TO, ExportTarget

# The SAELens config layout written here: version 6 (fields at the top, model and hook facts
# under `metadata`). SAELens reads `metadata.sae_lens_version` to choose how to parse a config.
SAELENS_FORMAT_VERSION = "6.0.0"


def export(
    coder: Coder,
    out: str | Path,
    to: ExportTarget,
    *,
    model_name: str,
    context_size: int,
    dataset: str | None = None,
    prepend_bos: bool = True,
    scan: str | None = None,
) -> list[Path]:
    """Write `coder` into the folder `out` in the format `to`; returns the files written.

    model_name: the TransformerLens model name the dictionary was trained on.
    context_size, dataset, prepend_bos: how its training activations were made (SAELens
        metadata; kept under `tcspec` in the others).
    scan: circuit-tracer's feature-data id (see `export_transcoder_set`).
    circuit-tracer takes complete sets only: a lone coder must be layer 0 (otherwise call
    `export_transcoder_set` with every layer).
    """
    if to not in EXPORT_TARGETS:
        raise ValueError(f"unknown export format `{to}`; one of {EXPORT_TARGETS}")
    out = Path(out)
    facts = {"model_name": model_name, "context_size": context_size, "dataset": dataset}
    if to == "saelens":
        return _export_saelens(coder, out, prepend_bos=prepend_bos, **facts)
    if to == "sparsify":
        return _export_sparsify(coder, out, **facts)
    layer = coder.cfg.layer if coder.cfg.layer is not None else 0
    return export_transcoder_set({layer: coder}, out, scan=scan, **facts)


# ---------------------------------------------------------------------------- helpers


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> Path:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    return _atomic(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def _enc_bias_without_pre_bias(coder: Coder) -> Tensor:
    """b_enc with the input pre-bias folded in (for formats without one)."""
    return fold_pre_bias(coder.W_enc.detach(), coder.b_enc.detach(), coder.b_dec.detach())


def refusal(to: str, kind: str, activation: str, d_in: int, d_out: int) -> str | None:
    """Why the format `to` cannot hold a dictionary of this kind (a `KINDS` one or a CLT),
    activation and widths; None when it can. The one statement of each format's limits:
    the exporters refuse by it, and `tcspec check` asks it before anything is trained."""
    fam = family(activation)
    only, called = WRITTEN_ONLY_TO.get(kind, (to, kind))
    if to != only:
        return f"{called} is written in {only}'s format only"
    if to == "saelens" and kind != "sae" and fam.saelens_transcoder is None:
        return f"SAELens has no {fam.title} transcoder architecture"
    if to == "sparsify" and fam.thresholded:
        thresholded = ", ".join(family(n).title for n in names(lambda f: f.thresholded))
        return f"sparsify has no thresholds ({thresholded})"
    if to == "circuit-tracer" and kind == "sae":
        return "circuit-tracer takes transcoders only"
    if to != "saelens" and d_in != d_out:
        return f"{to} needs d_out == d_in, got {d_out} != {d_in}"
    return None


def set_refusal(layers: list[int]) -> str | None:
    """Why circuit-tracer cannot load a set (or a CLT) at these layers; None when it can."""
    if not layers or list(layers) != list(range(len(layers))):
        return f"circuit-tracer needs every layer 0..n-1, got layers {list(layers)}"
    return None


def refuse(coder: Coder, to: str, why: str | None) -> None:
    """A ValueError naming the dictionary and the format when there is a reason `why`."""
    if why:
        name = f"{coder.cfg.kind} ({coder.cfg.activation})"
        raise ValueError(f"cannot export a {name} to {to}: {why}")


def _refuse_unfit(coder: Coder, to: str, where: str | None = None) -> None:
    cfg = coder.cfg
    refuse(coder, where or to, refusal(to, cfg.kind, cfg.activation, cfg.d_in, cfg.d_out))


def _thresholds(coder: Coder, to: str) -> dict[str, Tensor]:
    """{"threshold": [d_sae]} of a threshold dictionary (empty for the others); refused when a
    threshold is negative (the other tools ReLU first, so there it is not the same function)."""
    if not coder.cfg.thresholded:
        return {}
    th = coder.threshold.detach()
    if bool((th < 0).any()):
        refuse(coder, to, f"{int((th < 0).sum())} thresholds are negative")
    return {"threshold": th}


def _tcspec_activation(coder: Coder) -> dict:
    """The activation and k under tcspec keys (a BatchTopK file reads as JumpReLU elsewhere)."""
    return {"tcspec_activation": coder.cfg.activation, "tcspec_k": coder.cfg.k}


def _relative(hook: str | None, layer: int, what: str) -> str:
    split = split_name(hook) if hook else None
    if split is None or split[0] != layer:
        raise ValueError(f"layer {layer}: {what} {hook!r} is not a hook of block {layer}")
    return split[1]


# ---------------------------------------------------------------------------- SAELens
def _export_saelens(
    coder: Coder,
    out: Path,
    *,
    model_name: str,
    context_size: int,
    dataset: str | None,
    prepend_bos: bool,
) -> list[Path]:
    cfg = coder.cfg
    _refuse_unfit(coder, "saelens")
    if not cfg.in_hook or (cfg.kind != "sae" and not cfg.out_hook):
        refuse(coder, "saelens", "SAELens needs the hook names (in_hook/out_hook)")
    fam = cfg.family
    arch = fam.saelens if cfg.kind == "sae" else fam.saelens_transcoder.format(kind=cfg.kind)
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "model_name": model_name,
        "model_class_name": "HookedTransformer",
        "hook_name": cfg.in_hook,
        "hook_head_index": None,
        "context_size": context_size,
        "dataset_path": dataset,
        "prepend_bos": prepend_bos,
        "tcspec_version": __version__,
        **_tcspec_activation(coder),
    }
    sae_cfg: dict = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.kind == "sae",
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if arch == "topk":
        sae_cfg |= {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    tensors = {"W_enc": coder.W_enc, "W_dec": coder.W_dec} | _thresholds(coder, "saelens")
    if cfg.kind == "sae":
        tensors |= {"b_enc": coder.b_enc, "b_dec": coder.b_dec}
    else:
        sae_cfg["d_out"] = cfg.d_out
        metadata["hook_name_out"] = cfg.out_hook
        tensors |= {"b_enc": _enc_bias_without_pre_bias(coder), "b_dec": coder.b_dec_out}
        if cfg.skip:
            tensors["W_skip"] = coder.W_skip.T  # [d_out, d_in]
    sae_cfg["metadata"] = metadata
    out.mkdir(parents=True, exist_ok=True)
    cfg_file, weights_file = MARKERS["saelens"]
    written = [_save_tensors(out / weights_file, tensors)]
    if cfg.kind != "sae":
        written.append(_save_tensors(out / PRE_BIAS_FILE, pre_bias_tensors(coder)))
    return [*written, write_json(out / cfg_file, sae_cfg)]


# ---------------------------------------------------------------------------- sparsify
def _export_sparsify(
    coder: Coder, out: Path, *, model_name: str, context_size: int, dataset: str | None
) -> list[Path]:
    cfg = coder.cfg
    _refuse_unfit(coder, "sparsify")
    k = cfg.k if cfg.family.takes_k else cfg.d_sae  # k = d_sae: plain ReLU
    sp_cfg = {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
        "normalize_decoder": False,
        "num_latents": cfg.d_sae,
        "k": k,
        "multi_topk": False,
        "skip_connection": cfg.skip,
        "transcode": cfg.kind != "sae",
        "d_in": cfg.d_in,
        "tcspec": {
            "version": __version__,
            "kind": cfg.kind,
            "activation": cfg.activation,
            "in_hook": cfg.in_hook,
            "out_hook": cfg.out_hook,
            "layer": cfg.layer,
            "model_name": model_name,
            "context_size": context_size,
            "dataset": dataset,
        },
    }
    tensors = {"encoder.weight": coder.W_enc.T, "W_dec": coder.W_dec}  # [d_sae, d_in]
    if cfg.kind == "sae":
        tensors |= {"encoder.bias": coder.b_enc, "b_dec": coder.b_dec}
    else:
        tensors |= {"encoder.bias": _enc_bias_without_pre_bias(coder), "b_dec": coder.b_dec_out}
        if cfg.skip:
            tensors["W_skip"] = coder.W_skip.T  # [d_out, d_in]
    out.mkdir(parents=True, exist_ok=True)
    cfg_file, weights_file = MARKERS["sparsify"]
    written = [_save_tensors(out / weights_file, tensors)]
    if cfg.kind != "sae":
        written.append(_save_tensors(out / PRE_BIAS_FILE, pre_bias_tensors(coder)))
    return [*written, write_json(out / cfg_file, sp_cfg)]


# ---------------------------------------------------------------------- circuit-tracer
def _set_hooks(coders_by_layer: dict[int, Coder], layers: list[int]) -> tuple[str, str]:
    """The (in, out) hooks, relative to a block, of a set circuit-tracer can load; a
    ValueError naming the layer for anything it cannot."""
    why = set_refusal(layers)
    if why:
        raise ValueError(why)
    first = coders_by_layer[0].cfg
    hooks = set()
    for layer in layers:
        coder = coders_by_layer[layer]
        cfg = coder.cfg
        where = f"circuit-tracer, layer {layer}"
        _refuse_unfit(coder, "circuit-tracer", where)
        if cfg.layer is not None and cfg.layer != layer:
            raise ValueError(f"{where}: the dictionary belongs to layer {cfg.layer}")
        same = ("skip", "d_sae", "activation", "k")
        if any(getattr(cfg, f) != getattr(first, f) for f in same):
            raise ValueError(
                f"{where}: every layer needs the same width and skip connection (and activation) "
                f"as layer 0 ({same}: {[getattr(first, f) for f in same]}), got "
                f"{[getattr(cfg, f) for f in same]}"
            )
        hooks.add(
            (_relative(cfg.in_hook, layer, "in_hook"), _relative(cfg.out_hook, layer, "out_hook"))
        )
    if len(hooks) != 1:
        raise ValueError(f"circuit-tracer needs the same hooks in every layer, got {sorted(hooks)}")
    return hooks.pop()


def _ct_activation(coder: Coder) -> dict:
    """The set's activation in circuit-tracer's config (v0.5.0, `load_transcoder_set`'s
    `activation`/`k`): `topk` with its `k` for a TopK set; for the others its loader reads
    the threshold tensor (JumpReLU) or defaults to ReLU, so nothing is written."""
    ct = coder.cfg.family.circuit_tracer
    return {"activation": ct, "k": coder.cfg.k} if ct else {}


def export_transcoder_set(
    coders_by_layer: dict[int, Coder],
    out: str | Path,
    *,
    model_name: str,
    scan: str | None = None,
    context_size: int | None = None,
    dataset: str | None = None,
) -> list[Path]:
    """Write a circuit-tracer transcoder set: `layer_{i}.safetensors` for layers 0..n-1 and a
    `config.yaml` (`model_kind: transcoder_set`, the hooks relative to a block, `scan`).

    circuit-tracer loads it with `load_transcoder_set({i: path}, scan, feature_input_hook,
    feature_output_hook)` or as a cache folder. `scan` names the feature data its frontend
    shows (see `feature_data`); default `./data/features/<out folder name>`, i.e. feature
    files written to `<graph data dir>/features/<out folder name>/`.
    """
    out = Path(out)
    layers = sorted(coders_by_layer)
    in_hook, out_hook = _set_hooks(coders_by_layer, layers)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in layers:
        coder = coders_by_layer[layer]
        tensors = {
            "W_enc": coder.W_enc.T,  # [d_sae, d_in]
            "W_dec": coder.W_dec,  # [d_sae, d_out]
            "b_enc": _enc_bias_without_pre_bias(coder),
            "b_dec": coder.b_dec_out,
        }
        if coder.cfg.skip:
            tensors["W_skip"] = coder.W_skip.T  # [d_out, d_in]
        if coder.cfg.thresholded:
            th = _thresholds(coder, f"circuit-tracer, layer {layer}")["threshold"]
            tensors["activation_function.threshold"] = th  # [d_sae]
        written.append(_save_tensors(out / f"layer_{layer}.safetensors", tensors))
    pre_bias = {}
    for layer in layers:
        pre_bias |= pre_bias_tensors(coders_by_layer[layer], f"layer_{layer}.")
    written.append(_save_tensors(out / PRE_BIAS_FILE, pre_bias))
    config = {
        "model_name": model_name,
        "model_kind": "transcoder_set",
        "feature_input_hook": in_hook,
        "feature_output_hook": out_hook,
        "scan": scan or f"./data/features/{out.name}",
        **_ct_activation(coders_by_layer[0]),
        "tcspec": {
            "version": __version__,
            "context_size": context_size,
            "dataset": dataset,
            "activation": coders_by_layer[0].cfg.activation,
            "k": coders_by_layer[0].cfg.k,
        },
    }
    text = yaml.safe_dump(config, sort_keys=False)
    written.append(_atomic(out / CT_CONFIG, lambda p: p.write_text(text)))
    return written
