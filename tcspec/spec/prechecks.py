"""What later stages would refuse, asked of the validated spec before anything runs.

- exports: each selected dictionary against its format's limits, as the exporters state
  them (`interop.export.refusal`, `set_refusal`): an SAE to circuit-tracer, a TopK
  transcoder to SAELens, a set without every layer 0..n-1, ...
- attribution targets: `correct` and `incorrect` must each be one token of the model's
  tokenizer: the toy tokenizer is rebuilt from its recipe (deterministic; once per
  process), a pretrained or checkpoint one read from local files only (none cached: the
  check is left to the circuits job, and `tcspec check` says so).

Each check yields ``(path, message)`` like `checks`.
"""

from __future__ import annotations

import functools

from tcspec.models.hooks import hook_width
from tcspec.spec import DictionaryRef, Spec
from tcspec.spec.base import Found
from tcspec.spec.dictionaries import dictionary_hooks


# ----------------------------------------------------------------------------- exports
def check_exports(spec: Spec, dims: dict) -> Found:
    """Every dictionary an export selects can be written in its format."""
    if not spec.export:
        return
    from tcspec.interop.export import refusal, set_refusal

    for i, e in enumerate(spec.export):
        named = [(("export", i, "dictionaries", j), r) for j, r in enumerate(e.dictionaries)]
        every = [(("export", i, "to"), DictionaryRef(name=n)) for n in spec.dictionaries]
        for loc, ref in named or every:
            d = spec.dictionaries.get(ref.name)
            if d is None or d.kind == "pretrained":  # an import's files say what it is
                continue
            activation = getattr(d, "activation", "relu")
            in_hook, out_hook = dictionary_hooks(d)
            d_in, d_out = hook_width(in_hook, dims), hook_width(out_hook, dims)
            why = refusal(e.to, d.kind, activation, d_in, d_out)
            hint = (
                ""
                if named or why is None
                else "; name the dictionaries to export (`dictionaries:`)"
            )
            if why is None and e.to == "circuit-tracer":
                layers = d.layers if d.layers is not None else spec.layers
                why = set_refusal(sorted(layers) if ref.layer is None else [ref.layer])
            if why:
                what = f"`{ref.name}` ({d.kind}, {activation})"
                yield loc, f"cannot export {what} to {e.to}: {why}{hint}"


# ------------------------------------------------------------------------------ targets
def check_targets(spec: Spec) -> Found:
    """Every attribution target's texts are one token each of the model's tokenizer."""
    entries = target_entries(spec)
    tokenizer = model_tokenizer(spec) if entries else None
    if tokenizer is None:  # `checks.sanity_warnings` says the check waits for the job
        return
    from tcspec.models.tokenizer import target_token_id

    for i, c in entries:
        for field in ("correct", "incorrect"):
            try:
                target_token_id(tokenizer, getattr(c.target, field))
            except ValueError as e:
                yield ("circuits", i, "target", field), str(e)


def target_entries(spec: Spec) -> list[tuple[int, object]]:
    """(index, entry) of the circuits entries with a logit-difference target."""
    return [(i, c) for i, c in enumerate(spec.circuits) if getattr(c, "target", None)]


def model_tokenizer(spec: Spec):
    """The tokenizer of the spec's model from what is on this machine, or None when it is
    not here (a pretrained model not in the local Hugging Face cache; no language model)."""
    model = spec.model
    if model.kind == "toy":
        return toy_tokenizer(model.recipe, spec.seed)
    if model.kind not in ("pretrained", "checkpoint"):
        return None
    from transformers import AutoTokenizer

    from tcspec.models import catalog

    sources = [str(model.path)] if model.kind == "checkpoint" else catalog.hub_ids(model.name)
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            continue
    return None


@functools.lru_cache(maxsize=4)
def toy_tokenizer(recipe: str, seed: int):
    """The toy model's tokenizer, trained as the model task trains it (deterministic)."""
    from tcspec.models.tokenizer import recipe_tokenizer

    return recipe_tokenizer(recipe, seed)
