"""Dimensions of common TransformerLens models, known offline so a spec checks without a hub.

Values are TransformerLens's config fields for each model (``get_pretrained_model_config``).
"""

from __future__ import annotations

# name -> dims; aliases map onto these names
CATALOG: dict[str, dict] = {
    "gpt2": dict(
        n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, d_vocab=50257, n_ctx=1024
    ),
    "gpt2-medium": dict(
        n_layers=24, d_model=1024, d_mlp=4096, n_heads=16, d_head=64, d_vocab=50257, n_ctx=1024
    ),
    "gpt2-large": dict(
        n_layers=36, d_model=1280, d_mlp=5120, n_heads=20, d_head=64, d_vocab=50257, n_ctx=1024
    ),
    "gpt2-xl": dict(
        n_layers=48, d_model=1600, d_mlp=6400, n_heads=25, d_head=64, d_vocab=50257, n_ctx=1024
    ),
    "pythia-70m": dict(
        n_layers=6, d_model=512, d_mlp=2048, n_heads=8, d_head=64, d_vocab=50304, n_ctx=2048
    ),
    "pythia-160m": dict(
        n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, d_vocab=50304, n_ctx=2048
    ),
    "pythia-410m": dict(
        n_layers=24, d_model=1024, d_mlp=4096, n_heads=16, d_head=64, d_vocab=50304, n_ctx=2048
    ),
    "pythia-1b": dict(
        n_layers=16, d_model=2048, d_mlp=8192, n_heads=8, d_head=256, d_vocab=50304, n_ctx=2048
    ),
    "pythia-1.4b": dict(
        n_layers=24, d_model=2048, d_mlp=8192, n_heads=16, d_head=128, d_vocab=50304, n_ctx=2048
    ),
    "pythia-2.8b": dict(
        n_layers=32, d_model=2560, d_mlp=10240, n_heads=32, d_head=80, d_vocab=50304, n_ctx=2048
    ),
    "gelu-1l": dict(
        n_layers=1, d_model=512, d_mlp=2048, n_heads=8, d_head=64, d_vocab=48262, n_ctx=1024
    ),
    "gelu-2l": dict(
        n_layers=2, d_model=512, d_mlp=2048, n_heads=8, d_head=64, d_vocab=48262, n_ctx=1024
    ),
    "gemma-2-2b": dict(
        n_layers=26, d_model=2304, d_mlp=9216, n_heads=8, d_head=256, d_vocab=256000, n_ctx=8192
    ),
}
for _name, _dims in CATALOG.items():
    _dims["parallel_attn_mlp"] = _name.startswith("pythia")

ALIASES: dict[str, str] = (
    {"gpt2-small": "gpt2"}
    | {f"EleutherAI/{n}": n for n in CATALOG if n.startswith("pythia")}
    | {f"openai-community/{n}": n for n in CATALOG if n.startswith("gpt2")}
    | {"google/gemma-2-2b": "gemma-2-2b"}
)


def lookup(name: str) -> dict | None:
    """Dims of a TransformerLens model name or alias, or None when not in the catalog."""
    return CATALOG.get(ALIASES.get(name, name))


def hub_ids(name: str) -> list[str]:
    """The Hugging Face repository ids a TransformerLens name may be cached under: the name
    itself, then the organisation-qualified aliases of its catalog entry."""
    canonical = ALIASES.get(name, name)
    qualified = [a for a, n in ALIASES.items() if n == canonical and "/" in a]
    return list(dict.fromkeys([name, canonical, *qualified]))


def known_names() -> list[str]:
    return sorted(CATALOG) + sorted(ALIASES)
