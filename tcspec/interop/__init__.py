"""Interoperability: load dictionaries released by other tools, write ours in their formats.

The format names are `tcspec.vocab.FORMATS` (read) and `EXPORT_TARGETS` (written).

- `detect_format(path)`, `load_dictionary(path, format=None, *, layer, trust_pickle,
  expect_d_in, in_hook, out_hook) -> Coder` (`formats`; circuit-tracer sets in
  `circuit_tracer`, Gemma Scope files in `gemma_scope`)
- `export(coder, out, to, *, model_name, context_size, dataset, ...)` and
  `export_transcoder_set(coders_by_layer, out, *, model_name, ...)` (`export`)
- `write_feature_data(stats_dir, out_dir, *, layer, ...)`: circuit-tracer feature pages
  from the interp stage's statistics (`feature_data`)
- `load_checkpoint(path, trust=False)`: `torch.save` archives without running their code
  (`safe_pickle`)
"""

from tcspec.interop.export import export, export_transcoder_set
from tcspec.interop.feature_data import cantor_pair, write_feature_data
from tcspec.interop.formats import detect_format, load_dictionary
from tcspec.interop.safe_pickle import UnsafePickleError, load_checkpoint

__all__ = [
    "UnsafePickleError",
    "cantor_pair",
    "detect_format",
    "export",
    "export_transcoder_set",
    "load_checkpoint",
    "load_dictionary",
    "write_feature_data",
]
