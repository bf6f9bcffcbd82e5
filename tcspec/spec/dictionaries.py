"""The spec's dictionaries: the tagged union of every kind (per-layer: `tcspec.spec.per_layer`;
imported: `tcspec.spec.imported`; cross-layer: `tcspec.spec.clt`; what every kind answers:
`tcspec.spec.dictionary_base`) and the hooks a dictionary reads and writes.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from tcspec.spec.clt import CLTSpec
from tcspec.spec.imported import PretrainedDictionarySpec
from tcspec.spec.per_layer import SAESpec, SkipTranscoderSpec, TranscoderSpec

DictionarySpec = Annotated[
    Union[TranscoderSpec, SkipTranscoderSpec, SAESpec, PretrainedDictionarySpec, CLTSpec],
    Field(discriminator="kind"),
]


def dictionary_hooks(d) -> tuple[str, str]:
    """(in_hook, out_hook) relative to the block; equal for an SAE (its one `hook`)."""
    hook = getattr(d, "hook", None)
    return (hook, hook) if hook is not None else (d.in_hook, d.out_hook)
