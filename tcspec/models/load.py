"""Load any model folder into a processed TransformerLens ``HookedTransformer``.

A model folder holds ``model.json``, whose ``kind`` says where the weights live:

- ``toy``: ``weights.safetensors`` (the raw HookedTransformer state dict) and the tokenizer
  files beside it, written by ``tcspec.models.toy.train_toy_model``;
- ``pretrained``: a TransformerLens model name, read from the Hugging Face cache;
- ``checkpoint``: a local folder, either a Hugging Face model (``config.json``) or a
  TransformerLens one (``cfg.json`` with HookedTransformerConfig fields and
  ``weights.safetensors``), with its tokenizer files.

Every kind is returned with the paper's processing: LayerNorm folded, writing weights and
the unembedding centred, value biases folded. ``hook_mlp_in`` is switched on so every hook
in ``model.json``'s ``hook_names`` fires in a forward pass.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as loading

from tcspec.atomic import read_json, write_json
from tcspec.checksums import file_checksum
from tcspec.models.tokenizer import load_tokenizer
from tcspec.vocab import CFG_FILE, MODEL_JSON, WEIGHTS_FILE

CFG_KEYS = (
    "n_layers", "d_model", "d_mlp", "d_head", "n_heads", "d_vocab", "n_ctx", "act_fn",
    "normalization_type", "parallel_attn_mlp",
)  # fmt: skip
PROCESSING = dict(
    fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
)
NORM_CENTRES: dict[str | None, bool] = {"LNPre": True, "RMSPre": False, None: False}
"""Normalization type of a processed model (norms folded) -> whether it centres its input."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ----------------------------------------------------------------------------- small helpers


def centre(w: torch.Tensor) -> torch.Tensor:
    """Project out the all-ones direction: [..., d] -> [..., d] (LayerNorm's centring)."""
    return w - w.mean(-1, keepdim=True)


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / a ``torch.dtype`` -> the ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. 'float32' or 'bfloat16'")
    return resolved


def model_info(model: HookedTransformer) -> dict[str, Any]:
    """The model's dimensions under TransformerLens names (see ``CFG_KEYS``)."""
    cfg = model.cfg
    return {key: getattr(cfg, key) for key in CFG_KEYS} | {
        "parallel_attn_mlp": bool(cfg.parallel_attn_mlp)
    }


@torch.no_grad()
def fired_hook_names(model: HookedTransformer) -> list[str]:
    """Names of the hooks that fire in a forward pass of ``model`` (in first-firing order)."""
    names: dict[str, None] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        names[hook.name] = None

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, record)])
    return list(names)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define a model's numbers."""
    packages = ("torch", "transformer-lens", "transformers", "tokenizers", "safetensors")
    return {"python": platform.python_version()} | {
        name: importlib.metadata.version(name) for name in packages
    }


def read_model_json(model_dir: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder."""
    path = Path(model_dir) / MODEL_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model.json; prepare the model first")
    return read_json(path)


def _describe(model: HookedTransformer, normalization_type: str) -> dict[str, Any]:
    """The fields every ``model.json`` shares: dims, BOS id, hook names, versions.

    ``cfg.normalization_type`` is the architecture's (as stored, e.g. ``"LN"``), not the
    ``"LNPre"`` that folding leaves in the loaded model.
    """
    return {
        "cfg": model_info(model) | {"normalization_type": normalization_type},
        "bos_token_id": model.tokenizer.bos_token_id if model.tokenizer is not None else None,
        "hook_names": fired_hook_names(model),
        "versions": library_versions(),
    }


@contextlib.contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Silence TransformerLens 3's notice that HookedTransformer is deprecated (it remains the
    model class the paper's processing and hook names are defined on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*HookedTransformer.*deprecated")
        yield


def _finish(model: HookedTransformer, device: str) -> HookedTransformer:
    model.set_use_hook_mlp_in(True)
    model.to(device)
    model.eval()
    return model


# ----------------------------------------------------------------------------- per kind


def _build(cfg: HookedTransformerConfig, tokenizer, state_dict: dict, device: str):
    """HookedTransformer(cfg) with the tokenizer, loaded from a raw TransformerLens state
    dict with the paper's processing."""
    with quiet_deprecation():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        {k: v.to(cfg.dtype) for k, v in state_dict.items()}, **PROCESSING
    )
    return _finish(model, device)


def load_toy(model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A toy model folder: HookedTransformer(cfg) + processed raw weights."""
    from safetensors.torch import load_file

    meta = read_model_json(model_dir)
    cfg = HookedTransformerConfig(
        **{k: v for k, v in meta["cfg"].items() if k != "parallel_attn_mlp"},
        positional_embedding_type="standard",
        dtype=dtype,
        device=device,
        init_weights=False,
    )
    weights = Path(model_dir) / WEIGHTS_FILE
    if "weights_xxh3" in meta:
        if file_checksum(weights) != meta["weights_xxh3"]:
            raise ValueError(f"{weights}: checksum differs from model.json's; the file is damaged")
    state_dict = load_file(str(weights))
    return _build(cfg, load_tokenizer(Path(model_dir)), state_dict, device)


def load_pretrained(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A TransformerLens model name, from the Hugging Face cache (or the hub if online)."""
    with quiet_deprecation():
        model = HookedTransformer.from_pretrained(
            name, device=device, dtype=dtype, move_to_device=False, **PROCESSING
        )
    return _finish(model, device)


def _refuse_pickle(path: Path, trust_pickle: bool) -> None:
    has_safetensors = any(path.glob("*.safetensors"))
    pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled and not has_safetensors and not trust_pickle:
        raise ValueError(
            f"{path}: weights {pickled} are pickles, which execute code when loaded; "
            "convert them to safetensors or set trust_pickle: true"
        )


def load_checkpoint(
    path: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
) -> HookedTransformer:
    """A local model folder: Hugging Face (``config.json``) or TransformerLens (``cfg.json``
    + ``weights.safetensors``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder not found")
    if (path / "config.json").exists():
        _refuse_pickle(path, trust_pickle)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        cfg = loading.get_pretrained_model_config(
            str(path), hf_cfg=hf_model.config.to_dict(), fold_ln=True, device=device, dtype=dtype
        )
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
        return _build(cfg, tokenizer, state_dict, device)
    if (path / CFG_FILE).exists() and (path / WEIGHTS_FILE).exists():
        from safetensors.torch import load_file

        fields = read_json(path / CFG_FILE)
        cfg = HookedTransformerConfig(
            **fields | {"dtype": dtype, "device": device, "init_weights": False}
        )
        return _build(cfg, load_tokenizer(path), load_file(str(path / WEIGHTS_FILE)), device)
    raise ValueError(
        f"{path}: not a model folder; expected config.json (Hugging Face) or {CFG_FILE} + "
        f"{WEIGHTS_FILE} (TransformerLens)"
    )


# ----------------------------------------------------------------------------- entry points


def load_model(
    model_dir: Path, device: str = "cpu", dtype: str | torch.dtype = torch.float32
) -> HookedTransformer:
    """The processed HookedTransformer, tokenizer attached, of a prepared model folder.

    ``device`` may be ``"auto"``; ``dtype`` a ``torch.dtype`` or its name."""
    meta = read_model_json(Path(model_dir))
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    kind = meta["kind"]
    if kind == "toy":
        return load_toy(Path(model_dir), device, dtype)
    if kind == "pretrained":
        return load_pretrained(meta["name"], device, dtype)
    if kind == "checkpoint":
        return load_checkpoint(Path(meta["path"]), device, dtype, meta.get("trust_pickle", False))
    raise ValueError(f"{model_dir}/{MODEL_JSON}: unknown kind {kind!r}")


def prepare_pretrained(
    name: str, out_dir: Path, device: str = "cpu", dtype: str | torch.dtype = torch.float32
) -> dict[str, Any]:
    """Load ``name`` once (proving it is available) and write ``out_dir/model.json``."""
    model = load_pretrained(name, resolve_device(device), resolve_dtype(dtype))
    stored = loading.get_pretrained_model_config(name).normalization_type
    meta = {"kind": "pretrained", "name": name} | _describe(model, stored)
    write_json(Path(out_dir) / MODEL_JSON, meta)
    return meta


def prepare_checkpoint(
    path: Path,
    out_dir: Path,
    device: str = "cpu",
    dtype: str | torch.dtype = torch.float32,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Load the local folder ``path`` once and write ``out_dir/model.json`` pointing at it."""
    path = Path(path).resolve()
    model = load_checkpoint(path, resolve_device(device), resolve_dtype(dtype), trust_pickle)
    if (path / "config.json").exists():
        stored = loading.get_pretrained_model_config(str(path)).normalization_type
    else:
        stored = read_json(path / CFG_FILE).get("normalization_type", "LN")
    meta = {"kind": "checkpoint", "path": str(path), "trust_pickle": trust_pickle}
    meta |= _describe(model, stored)
    write_json(Path(out_dir) / MODEL_JSON, meta)
    return meta
