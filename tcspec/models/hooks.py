"""Hook names and their widths: the one home of TransformerLens hook vocabulary in tcspec.

A spec names hooks relative to a block (``ln2.hook_normalized``); the full TransformerLens
name is ``blocks.{layer}.{hook}``. Each hook's width is one of the model's dimensions.
"""

from __future__ import annotations

# hook (relative to blocks.{L}) -> the model dimension that is its width
BLOCK_HOOKS: dict[str, str] = {
    "hook_resid_pre": "d_model",
    "hook_resid_mid": "d_model",
    "hook_resid_post": "d_model",
    "hook_attn_out": "d_model",
    "hook_mlp_in": "d_model",
    "hook_mlp_out": "d_model",
    "ln1.hook_normalized": "d_model",
    "ln2.hook_normalized": "d_model",
    "mlp.hook_pre": "d_mlp",
    "mlp.hook_post": "d_mlp",
}

# The paper's transcoder reads the MLP's normalized input and predicts the MLP's output.
TRANSCODER_IN = "ln2.hook_normalized"
TRANSCODER_OUT = "hook_mlp_out"
# A synthetic source (`tcspec.models.synthetic`) is one block whose MLP hooks hold its
# input features' activations x (in) and their image under the known map y (out).
SYNTHETIC_HOOKS = (TRANSCODER_IN, TRANSCODER_OUT)


def full_name(layer: int, hook: str) -> str:
    """``(8, "hook_mlp_out") -> "blocks.8.hook_mlp_out"``."""
    return f"blocks.{layer}.{hook}"


def split_name(name: str) -> tuple[int, str] | None:
    """``"blocks.8.hook_mlp_out" -> (8, "hook_mlp_out")``; None for a name outside a block."""
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def relative_name(name: str, layer: int | None = None) -> str:
    """The block-relative form of a hook name: ``"blocks.8.hook_mlp_out" -> "hook_mlp_out"``.

    A name outside a block (``hook_embed``, or one already relative) comes back as given.
    With ``layer``, a full name of another block is a ``ValueError``.
    """
    split = split_name(name)
    if split is None:
        return name
    at, hook = split
    if layer is not None and at != layer:
        raise ValueError(f"`{name}` is a hook of block {at}, not of block {layer}")
    return hook


def block_name(layer: int, name: str) -> str:
    """The full name of ``name`` at ``layer``: a relative name gets ``blocks.{layer}.``, a full
    ``blocks.L....`` name stays as given, a ``{layer}`` template is filled in."""
    if "{layer}" in name:
        return name.format(layer=layer)
    if split_name(name) is not None:
        return name
    return full_name(layer, name)


def hook_width(hook: str, dims: dict[str, int]) -> int:
    """Width of a block hook given the model's dims (``d_model``, ``d_mlp``)."""
    return dims[BLOCK_HOOKS[hook]]


def hooks_replacing_mlp(in_hook: str, out_hook: str) -> bool:
    """True when a dictionary reading ``in_hook`` and writing ``out_hook`` can stand in for
    the block's MLP (the input is what the MLP sees, the output is what the MLP writes)."""
    return in_hook in ("ln2.hook_normalized", "hook_resid_mid", "hook_mlp_in") and out_hook in (
        "hook_mlp_out",
    )
