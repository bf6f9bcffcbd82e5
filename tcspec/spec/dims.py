"""Model dimensions known offline, for the checks and the plan: the toy recipe's, a local
checkpoint's, a pretrained model's config.json in the local Hugging Face cache, else
tcspec's catalog (a cached config that disagrees with the catalog is an error: the cached
model is what runs).
"""

from __future__ import annotations

from pathlib import Path

from tcspec.atomic import read_json
from tcspec.models import catalog
from tcspec.spec.base import path_exists
from tcspec.vocab import MODEL_JSON


class DimsUnknown(ValueError):
    pass


def model_dims(model) -> dict:
    """Model dims (n_layers, d_model, d_mlp, n_ctx, parallel_attn_mlp, ...) known offline."""
    if model.kind == "toy":
        return dict(
            n_layers=model.n_layers,
            d_model=model.d_model,
            d_mlp=model.d_mlp,
            n_heads=model.n_heads,
            d_head=model.d_model // model.n_heads,
            n_ctx=model.n_ctx,
            parallel_attn_mlp=False,
        )
    if model.kind == "synthetic":
        # one block whose MLP hooks hold x and y (`tcspec.models.synthetic`); no tokens
        return dict(
            n_layers=1, d_model=model.d_model, d_mlp=model.d_model, n_heads=1,
            d_head=model.d_model, n_ctx=None, d_vocab=0, parallel_attn_mlp=False,
        )  # fmt: skip
    if model.kind == "pretrained":
        return pretrained_dims(model.name)
    return checkpoint_dims(model.path)


def pretrained_dims(name: str) -> dict:
    """Dims of a pretrained model: its cached config.json's, checked against the catalog's."""
    known, (cached, file) = catalog.lookup(name), cached_config(name)
    if cached is not None:
        dims = hf_config_dims(cached, file)
        differ = [k for k in DIMS_COMPARED if known and k in dims and dims[k] != known[k]]
        if differ:
            have = ", ".join(f"{k} {dims[k]}" for k in differ)
            want = ", ".join(f"{k} {known[k]}" for k in differ)
            raise DimsUnknown(
                f"the local Hugging Face cache's `{name}` ({file}) has {have}, but `{name}` "
                f"has {want} (tcspec's catalog): the cached model is what would run; use it as "
                f"`kind: checkpoint, path: {file.parent}`, or replace the cached copy"
            )
        return (dict(known) if known else {}) | dims
    if known is None:
        import difflib

        close = difflib.get_close_matches(name, catalog.known_names(), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise DimsUnknown(
            f"model `{name}` is neither in the local Hugging Face cache nor in tcspec's "
            f"offline catalog; {hint}use `kind: checkpoint` with a local folder for other models"
        )
    return dict(known)


DIMS_COMPARED = ("n_layers", "d_model", "d_mlp", "n_heads")
"""The dims a cached config and the catalog must agree on."""


def cached_config(name: str) -> tuple[dict | None, Path | None]:
    """The config.json of a pretrained model in the local Hugging Face cache (read only,
    never downloaded), and its path; (None, None) when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    for repo in catalog.hub_ids(name):
        try:
            found = try_to_load_from_cache(repo, "config.json")
        except ValueError:  # not a valid repository id
            continue
        if isinstance(found, str):
            return _model_settings(Path(found)), Path(found)
    return None, None


def checkpoint_dims(path: Path) -> dict:
    """Dims from a local folder: our model.json, or an HF config.json."""
    if not path_exists(path) or not path.is_dir():
        raise DimsUnknown(f"checkpoint folder not found: {path}")
    if (path / MODEL_JSON).exists():
        return _model_settings(path / MODEL_JSON)["cfg"]
    if not (path / "config.json").exists():
        raise DimsUnknown(f"no model.json or config.json in {path}")
    return hf_config_dims(_model_settings(path / "config.json"), path / "config.json")


def hf_config_dims(cfg: dict, file: Path) -> dict:
    """Dims from a Hugging Face config.json (GPT-2, GPT-NeoX and Llama-style names)."""

    def first(*keys, default=None):
        return next((cfg[k] for k in keys if k in cfg), default)

    d_model = first("n_embd", "hidden_size", "d_model")
    n_layers = first("n_layer", "num_hidden_layers")
    if not _count(d_model) or not _count(n_layers):
        raise DimsUnknown(f"{file} gives no n_layer/num_hidden_layers or n_embd/hidden_size")
    dims = dict(
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=first("n_inner", "intermediate_size") or 4 * d_model,
        n_heads=first("n_head", "num_attention_heads"),
        d_vocab=first("vocab_size"),
        n_ctx=first("n_positions", "max_position_embeddings"),
        parallel_attn_mlp=bool(first("use_parallel_residual", default=False)),
    )
    return {k: v for k, v in dims.items() if v is not None}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _model_settings(path: Path) -> dict:
    """A model.json or config.json of model settings; `DimsUnknown` when unreadable."""
    try:
        cfg = read_json(path)
    except ValueError as exc:
        raise DimsUnknown(str(exc)) from None
    if "cfg" in cfg and not isinstance(cfg["cfg"], dict):
        raise DimsUnknown(f"{path} is not a JSON object of model settings")
    return cfg
