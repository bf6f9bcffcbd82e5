"""The published numbers of Dunefsky, Chlenski & Nanda (2024), "Transcoders Find Interpretable
LLM Feature Circuits" (arXiv 2406.11944): the one place they are written down.

Each `Reference` holds a table of plain values, a citation, and the model and layer(s) it
applies to; `Reference.frame()` gives a pandas view. `tcspec.tables` prints them beside an
experiment's own numbers (a spec's `tables.reference` names one of `REFERENCES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PAPER = "Dunefsky et al. 2024"


@dataclass(frozen=True)
class Reference:
    """One published table: columns, rows of plain values, and what they describe."""

    key: str
    """Name in `REFERENCES` (and in a spec's `tables.reference`)."""
    citation: str
    """Where in the paper, e.g. "Dunefsky et al. 2024, Fig. 3"."""
    model: str
    """The language model the numbers were measured on (TransformerLens name)."""
    layers: tuple[int, ...]
    """Layers whose MLP was replaced or studied."""
    description: str
    """One line on what the table shows."""
    columns: tuple[str, ...]
    """Column names of `rows`."""
    rows: tuple[tuple, ...]
    """The values, one tuple per row, in the order of `columns`."""
    notes: tuple[str, ...] = ()
    """Caveats a reader needs (units, how the sweep was run)."""

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with `columns`."""
        import pandas as pd

        return pd.DataFrame(list(self.rows), columns=list(self.columns))


PYTHIA_410M_FIG3 = Reference(
    key="pythia_410m_fig3",
    citation=f"{PAPER}, Fig. 3",
    model="pythia-410m",
    layers=(15,),
    description="Sparsity-fidelity sweep of transcoders and MLP-out SAEs, pythia-410m layer 15",
    columns=("dictionary", "kind", "lambda", "L0", "CE"),
    rows=(
        ("transcoder", "transcoder", 2.5e-5, 203.8, 3.3412),
        ("transcoder", "transcoder", 3e-5, 148.2, 3.3441),
        ("transcoder", "transcoder", 4e-5, 82.7, 3.3491),
        ("transcoder", "transcoder", 5.5e-5, 44.0, 3.3549),
        ("transcoder", "transcoder", 7e-5, 27.5, 3.3682),
        ("MLP-out SAE", "sae", 4e-5, 505.3, 3.3369),
        ("MLP-out SAE", "sae", 7e-5, 109.9, 3.3512),
        ("MLP-out SAE", "sae", 8.5e-5, 55.1, 3.3596),
        ("MLP-out SAE", "sae", 1e-4, 31.5, 3.3678),
    ),
    notes=(
        "L0: mean active features per token; CE: mean next-token loss (nats) with the MLP "
        "replaced by the transcoder, or its output by the SAE's reconstruction.",
        "lambda is the L1 coefficient of the public code's loss (MSE divided by ||y||_2); "
        "values do not transfer to other loss forms.",
    ),
)

TABLE1 = Reference(
    key="table1",
    citation=f"{PAPER}, Table 1",
    model="pythia-410m",
    layers=(15,),
    description="Blind interpretability ratings of 50 random live features per dictionary",
    columns=("class", "transcoder", "MLP-in SAE"),
    rows=(
        ("interpretable", 41, 38),
        ("maybe", 8, 8),
        ("uninterpretable", 1, 4),
        ("context-free (subset of interpretable)", 6, 16),
    ),
    notes=(
        "Transcoder: L0 44.0, CE 3.35; MLP-in SAE: L0 47.9, CE 3.36.",
        "The paper compared its transcoder with an MLP-in SAE (reconstructing the MLP's "
        "input, `ln2.hook_normalized`); an SAE on `hook_mlp_out` is an MLP-out SAE, a "
        "different dictionary.",
        "Counts of 50 features each; 'context-free' is a subset of 'interpretable'.",
    ),
)

GPT2_SMALL_SPLICE = Reference(
    key="gpt2_small_splice",
    citation=f"{PAPER}, gpt2-small transcoders spliced in together",
    model="gpt2",
    layers=tuple(range(11)),
    description="Next-token CE of gpt2-small with transcoders replacing MLPs 0-10 at once",
    columns=("quantity", "value"),
    rows=(
        ("CE, original model", 3.593),
        ("CE, transcoders spliced into layers 0-10", 4.234),
        ("CE, MLPs 0-10 zero-ablated", 10.941),
        ("KL(original || spliced)", 0.668),
    ),
    notes=("Measured on 1.6M tokens; CE in nats.",),
)

GREATER_THAN = Reference(
    key="greater_than",
    citation=f"{PAPER}, greater-than circuit",
    model="gpt2",
    layers=(10,),
    description="Greater-than metric of gpt2-small, original and with the layer-10 transcoder",
    columns=("model", "greater-than metric"),
    rows=(
        ("original", 0.8829),
        ("layer-10 transcoder spliced", 0.7978),
    ),
    notes=(
        "Metric: sum of p(y' > YY) minus sum of p(y' <= YY) over the 100 two-digit year "
        "tokens (softmax over those tokens only), averaged over YY.",
        "Keeping only the top-k layer-10 transcoder features (by variance over prompts) beats "
        "keeping the top-k MLP10 neurons for k < 24.",
    ),
)

REFERENCES: dict[str, Reference] = {
    r.key: r for r in (PYTHIA_410M_FIG3, GPT2_SMALL_SPLICE, TABLE1, GREATER_THAN)
}
"""Every published table, by key."""
