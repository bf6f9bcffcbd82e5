"""The feature-statistics folder of one dictionary (written by `save_stats`, read by
`load_stats`): ``stats.safetensors`` (arrays), ``examples.parquet`` (the page features'
examples with context), ``vocab.json`` (token strings) and ``features.json`` (scalars,
settings, page and study features, proxies). The statistics themselves: `tcspec.features.stats`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from safetensors.torch import load_file, save_file
from torch import Tensor

from tcspec.atomic import atomic_write as _atomic

if TYPE_CHECKING:
    from tcspec.features.stats import FeatureStats

STATS_FILE = "stats.safetensors"
EXAMPLES_FILE = "examples.parquet"
VOCAB_FILE = "vocab.json"
META_FILE = "features.json"
WRITE_NORMS = "write_norms"
"""A cross-layer transcoder layer's features only: the tensor [d_sae, n_out] of the norms of
each feature's decoders into the layers it writes, ..."""
WRITE_BLOCKS = "write_blocks"
"""...and the features.json key listing those layers' blocks (n_out of them)."""


def save_stats(stats: FeatureStats, out_dir: Path, vocab: list[str]) -> list[Path]:
    """Write the four files of the module docstring into `out_dir` (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in stats.tensors.items()}
    meta = stats.meta | {
        "n_tokens": stats.n_tokens,
        "context": stats.context,
        "d_sae": int(stats.tensors["count"].shape[0]),
        "config": asdict(stats.config),
        "pages": stats.pages,
        "r2": {str(f): v for f, v in stats.r2.items()},
    }
    frame = stats.examples.copy()
    frame["acts"] = [np.asarray(a, dtype=np.float32) for a in frame["acts"]]
    written = [
        out_dir / STATS_FILE,
        out_dir / EXAMPLES_FILE,
        out_dir / VOCAB_FILE,
        out_dir / META_FILE,
    ]
    _atomic(written[0], lambda p: save_file(tensors, str(p)))
    _atomic(written[1], lambda p: frame.to_parquet(p, index=False))
    _atomic(written[2], lambda p: p.write_text(json.dumps(vocab)))
    _atomic(written[3], lambda p: p.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n"))
    return written


@dataclass
class LoadedStats:
    """Statistics read back from a folder written by `save_stats`."""

    tensors: dict[str, Tensor]
    examples: pd.DataFrame
    vocab: list[str]
    meta: dict


def load_stats(folder: Path) -> LoadedStats:
    folder = Path(folder)
    missing = [
        n for n in (STATS_FILE, EXAMPLES_FILE, VOCAB_FILE, META_FILE) if not (folder / n).is_file()
    ]
    if missing:
        raise ValueError(
            f"{folder}: not a feature-statistics folder (missing {', '.join(missing)})"
        )
    return LoadedStats(
        load_file(str(folder / STATS_FILE)),
        pd.read_parquet(folder / EXAMPLES_FILE),
        json.loads((folder / VOCAB_FILE).read_text()),
        json.loads((folder / META_FILE).read_text()),
    )
