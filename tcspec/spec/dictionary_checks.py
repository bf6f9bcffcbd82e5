"""Semantic checks of each dictionary of a validated spec: a trained one's layers, hooks,
widths and training budget against the model; an imported one's layers and files.
"""

from __future__ import annotations

from pathlib import Path

from tcspec.models.hooks import hook_width
from tcspec.spec import Spec
from tcspec.spec.base import Found, as_list
from tcspec.spec.dictionaries import dictionary_hooks
from tcspec.vocab import TRANSPOSED_INITS, d_sae_of


def _check_pretrained(spec: Spec, name: str, d, dims: dict) -> Found:
    base = ("dictionaries", name)
    for i, layer in enumerate(d.layers or []):
        if layer >= dims["n_layers"]:
            yield (
                base + ("layers", i),
                f"layer {layer} does not exist: the model has {dims['n_layers']}",
            )
    if d.repo is None:
        for layer in d.layers if d.layers is not None else spec.layers:
            path = Path(d.path.replace("{layer}", str(layer)))
            if not path.exists():
                yield base + ("path",), f"not found: {path}"
                break


def check_dictionary(spec: Spec, name: str, d, dims: dict) -> Found:
    """A trained dictionary against the model (layers, hooks), its widths and its budget;
    an imported one's files (`_check_pretrained`)."""
    base = ("dictionaries", name)
    if d.kind == "pretrained":
        yield from _check_pretrained(spec, name, d, dims)
        return
    yield from _check_layers_and_hooks(base, d, dims)
    in_hook, out_hook = dictionary_hooks(d)
    yield from _check_widths(base, d, hook_width(in_hook, dims), hook_width(out_hook, dims))
    yield from _check_budget(spec, base, d)


def _check_layers_and_hooks(base: tuple, d, dims: dict) -> Found:
    """Its layers exist; its hooks exist in the model's blocks; a transcoder maps one hook
    to another."""
    for i, layer in enumerate(d.layers or []):
        if layer >= dims["n_layers"]:
            yield (
                base + ("layers", i),
                f"layer {layer} does not exist: the model has {dims['n_layers']}",
            )
    in_hook, out_hook = dictionary_hooks(d)
    for field, hook in (
        (("in_hook", in_hook), ("out_hook", out_hook)) if d.kind != "sae" else (("hook", in_hook),)
    ):
        if dims.get("parallel_attn_mlp") and hook in ("hook_resid_mid", "hook_mlp_in"):
            yield (
                base + (field,),
                (
                    f"the model has parallel attention and MLP blocks: it has no `{hook}`; "
                    "use `ln2.hook_normalized`"
                ),
            )
    if d.kind != "sae" and in_hook == out_hook:
        field = "out_hook" if "out_hook" in d.model_fields_set else "in_hook"
        yield (
            base + (field,),
            (
                f"a transcoder's in_hook and out_hook are both `{in_hook}`; "
                "use `kind: sae` to reconstruct one hook"
            ),
        )


def _check_widths(base: tuple, d, d_in: int, d_out: int) -> Found:
    """k and the Matryoshka prefixes fit in its narrowest width; options that need
    d_in == d_out have it."""
    widths = [d_sae_of(d_in, w, e) for w in as_list(d.d_sae) for e in as_list(d.expansion)]
    for k in as_list(d.k) if d.k is not None else []:
        if k > min(widths):
            yield base + ("k",), f"k {k} exceeds d_sae {min(widths)}"
    wide = [w for w in getattr(d, "matryoshka", None) or [] if w > min(widths)]
    if wide:
        yield (
            base + ("matryoshka",),
            (
                f"prefix width {wide[0]} exceeds d_sae {min(widths)}: a prefix is at most the "
                "dictionary's width (d_sae is the last prefix)"
            ),
        )
    if getattr(d, "ghost_residual", "output") == "input" and d_in != d_out:
        yield (
            base + ("ghost_residual",),
            f"`ghost_residual: input` fits x - y_hat, but d_in {d_in} != d_out {d_out}; "
            "use `output`",
        )
    if (init := getattr(d, "encoder_init", None)) in TRANSPOSED_INITS and d_in != d_out:
        yield (
            base + ("encoder_init",),
            f"`encoder_init: {init}` sets W_enc = {'s ' * (init != 'transpose')}W_dec^T, "
            f"but d_in {d_in} != d_out "
            f"{d_out}; use `kaiming`",
        )


def _check_budget(spec: Spec, base: tuple, d) -> Found:
    """Its training tokens are in the cache, and a batch fits in them."""
    tokens = d.train_tokens or spec.data.train_tokens
    if d.train_tokens and d.train_tokens > spec.data.train_tokens:
        yield (
            base + ("train_tokens",),
            (
                f"training budget {d.train_tokens} tokens exceeds the cache "
                f"(data.train_tokens {spec.data.train_tokens})"
            ),
        )
    if d.batch_size > tokens:
        yield (
            base + ("batch_size",),
            f"batch_size {d.batch_size} exceeds the {tokens} training tokens",
        )
