"""The spec's imported dictionaries: released ones read from disk or the HF hub."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ValidationInfo, model_validator

from tcspec.spec.base import HookName, NonNegInt
from tcspec.spec.dictionary_base import NO_LM, Kind
from tcspec.vocab import FORMATS


class PretrainedDictionarySpec(Kind):
    """A released dictionary imported from disk or the HF hub; evaluated, studied and
    tabulated exactly like a trained one."""

    LIMITS: ClassVar[Mapping[str, str]] = {"synthetic": NO_LM}

    kind: Literal["pretrained"]
    path: str
    """Folder or file; `{layer}` in it is replaced by each layer. Relative to the spec file's
    folder; with `repo`, a path inside the repository's snapshot."""
    repo: str | None = None
    """HF hub repository id holding the files (read from the local HF cache when offline)."""
    format: Literal[("auto", *FORMATS)] = "auto"  # type: ignore[valid-type]
    """File format; `auto` detects it when unambiguous."""
    layers: list[NonNegInt] | None = None
    """Layers to import; None uses the spec's `layers`."""
    in_hook: HookName | None = None
    """Input hook, relative to `blocks.{layer}`, when the files don't name it (sparsify)."""
    out_hook: HookName | None = None
    """Output hook, relative to `blocks.{layer}`, when the files don't name it."""
    trust_pickle: bool = False
    """Allow pickled (`.pt`) files to run arbitrary code when loaded. Without it only tensors
    and the paper's known config class are admitted."""

    @model_validator(mode="after")
    def _relative_to_the_spec(self, info: ValidationInfo):
        """A relative local `path` is relative to the spec file's folder (the loader's
        `base_dir`), like `data.paths`."""
        base = (info.context or {}).get("base_dir")
        if base is not None and self.repo is None and not Path(self.path).is_absolute():
            object.__setattr__(self, "path", str((Path(base) / self.path).resolve()))
        return self
