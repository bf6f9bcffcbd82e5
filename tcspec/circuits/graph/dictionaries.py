"""The dictionaries a replacement model is built from, seen the one way the graph reads them.

A source layer ``l`` has features read at its input hook; each writes into the MLP outputs of
a set of output layers: per-layer transcoders (`PerLayer`) write into their own layer only,
a cross-layer transcoder (`CrossLayer`) into its own and every later one of its layers. The
replacement MLP output of layer ``m`` is

    mlp_hat[m] = finish(m, sum_{l writing m} z[l] @ decoders(l)[m], x[m])
    finish(m, acc, x) = acc + b_out[m] (+ x @ W_skip[m])      (x: the live input of layer m)

`PerLayer` does each operation in the order `tcspec.dictionaries.coders.Coder.decode` does, so graphs
through per-layer transcoders are bit for bit what they were before CLTs. A feature of a
CLT is one graph node: its outgoing edge sums its decoders' contributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from tcspec.dictionaries.clt import CLT
from tcspec.dictionaries.clt_views import layer_coder, layer_index
from tcspec.dictionaries.coders import Coder
from tcspec.models.hooks import full_name, hooks_replacing_mlp, relative_name
from tcspec.vocab import TRANSCODER_KINDS

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class PerLayer:
    """One transcoder per layer (some layers may have none)."""

    def __init__(self, coders: dict[int, Coder]):
        self.coders = dict(sorted(coders.items()))
        self.layers = tuple(self.coders)  # source layers, increasing

    @property
    def dtype(self):
        return next(iter(self.coders.values())).W_enc.dtype

    def check_fits(self, model: HookedTransformer) -> None:
        """``ValueError`` (naming the layer) unless each is a transcoder standing in for its
        layer's MLP of `model`, reading and writing its width."""
        if not self.coders:
            raise ValueError("no transcoders given")
        for layer, coder in self.coders.items():
            _check_transcoder(model, layer, coder, f"layer {layer}")

    def layer_coder(self, li: int) -> Coder:
        """Layer li's features as a per-layer `Coder`: its transcoder."""
        return self.coders[li]

    def mlp0_coder(self) -> Coder | None:
        """The layer-0 transcoder, whose MLP0 output is an extended embedding; None without."""
        return self.coders.get(0)

    def in_hook(self, li: int) -> str:
        hook = self.coders[li].cfg.in_hook
        if hook is None:
            raise ValueError(f"layer {li}: the transcoder's config names no hooks")
        return full_name(li, relative_name(hook, li))

    def pre_acts(self, li: int, x: Tensor) -> Tensor:
        return self.coders[li].pre_acts(x)

    def activate(self, li: int, pre: Tensor) -> Tensor:
        return self.coders[li].activate(pre)

    def encoder(self, li: int) -> Tensor:
        """[d, F]: the read-out vectors of layer li's features."""
        return self.coders[li].W_enc

    def encoder_bias(self, li: int) -> Tensor:
        """[F]: b_enc, added after the encoder."""
        return self.coders[li].b_enc

    def input_bias(self, li: int) -> Tensor:
        """[d]: the pre-bias subtracted from the input before the encoder."""
        return self.coders[li].b_dec

    def decoders(self, li: int) -> dict[int, Tensor]:
        """Output layer -> [F, d]: what layer li's features write there."""
        return {li: self.coders[li].W_dec}

    def sources(self, m: int) -> tuple[int, ...]:
        """The source layers whose features write into layer m, increasing."""
        return (m,) if m in self.coders else ()

    def writes_to(self, m: int) -> bool:
        return m in self.coders

    def has_skip(self, m: int) -> bool:
        return m in self.coders and self.coders[m].cfg.skip

    def finish(self, m: int, acc: Tensor, x: Tensor | None) -> Tensor:
        """acc + b_out[m] (+ x @ W_skip[m] when x is given and layer m has a skip path)."""
        c = self.coders[m]
        y = acc + c.b_out
        return y + x @ c.W_skip if x is not None and c.cfg.skip else y

    def skip(self, m: int, x: Tensor) -> Tensor:
        return x @ self.coders[m].W_skip

    def out_bias(self, m: int) -> Tensor:
        """[d]: the output bias of layer m."""
        return self.coders[m].b_out

    def skip_weight(self, m: int) -> Tensor:
        """[d, d]: layer m's skip path is x @ skip_weight(m)."""
        return self.coders[m].W_skip


class CrossLayer:
    """A cross-layer transcoder: its layer l's features write into every layer m >= l."""

    def __init__(self, clt: CLT):
        self.clt = clt
        self.layers = tuple(clt.cfg.blocks)
        self._index = {b: i for i, b in enumerate(self.layers)}

    @property
    def dtype(self):
        return self.clt.b_enc.dtype

    def check_fits(self, model: HookedTransformer) -> None:
        """``ValueError`` unless the CLT spans blocks of `model`, reading and writing its width."""
        cfg = self.clt.cfg
        if max(cfg.blocks) >= model.cfg.n_layers:
            raise ValueError(
                f"the CLT spans blocks {list(cfg.blocks)}; the model has {model.cfg.n_layers}"
            )
        if model.cfg.parallel_attn_mlp and cfg.in_hook == "hook_resid_mid":
            raise ValueError("the CLT reads hook_resid_mid, which a parallel block does not have")
        if cfg.d_model != model.cfg.d_model:
            raise ValueError(f"the CLT's d_model {cfg.d_model} != the model's {model.cfg.d_model}")

    def layer_coder(self, li: int) -> Coder:
        """Layer li's features as a per-layer `Coder` (its encoder exactly; the decoder summed
        over the layers it writes: `tcspec.dictionaries.clt_views.layer_coder`)."""
        return layer_coder(self.clt, layer_index(self.clt, li))

    def mlp0_coder(self) -> Coder | None:
        raise ValueError(
            "mlp0_deembeddings needs a per-layer transcoder at layer 0; a cross-layer "
            "transcoder's layer-0 features write every later MLP"
        )

    def in_hook(self, li: int) -> str:
        return self.clt.cfg.in_names[self._index[li]]

    def pre_acts(self, li: int, x: Tensor) -> Tensor:
        return self.clt.pre_acts(x, self._index[li])

    def activate(self, li: int, pre: Tensor) -> Tensor:
        return self.clt.activate(pre, self._index[li])

    def encoder(self, li: int) -> Tensor:
        return self.clt.W_enc[self._index[li]]

    def encoder_bias(self, li: int) -> Tensor:
        return self.clt.b_enc[self._index[li]]

    def input_bias(self, li: int) -> Tensor:
        """A CLT has no pre-bias: zeros [d]."""
        return self.clt.b_dec.new_zeros(self.clt.cfg.d_model)

    def decoders(self, li: int) -> dict[int, Tensor]:
        W = self.clt.W_dec[self._index[li]]  # [F, L - i, d]
        return {m: W[:, j] for j, m in enumerate(self.layers[self._index[li] :])}

    def sources(self, m: int) -> tuple[int, ...]:
        return self.layers[: self._index[m] + 1] if m in self._index else ()

    def writes_to(self, m: int) -> bool:
        return m in self._index

    def has_skip(self, m: int) -> bool:
        return m in self._index and self.clt.cfg.skip

    def finish(self, m: int, acc: Tensor, x: Tensor | None) -> Tensor:
        y = acc + self.clt.b_dec[self._index[m]]
        return y + self.skip(m, x) if x is not None and self.clt.cfg.skip else y

    def skip(self, m: int, x: Tensor) -> Tensor:
        return x @ self.clt.W_skip[self._index[m]]

    def out_bias(self, m: int) -> Tensor:
        return self.clt.b_dec[self._index[m]]

    def skip_weight(self, m: int) -> Tensor:
        return self.clt.W_skip[self._index[m]]


Dictionaries = PerLayer | CrossLayer


def as_dictionaries(x: dict[int, Coder] | CLT | Dictionaries) -> Dictionaries:
    """Per-layer transcoders by layer, a CLT, or either already wrapped."""
    if isinstance(x, (PerLayer, CrossLayer)):
        return x
    return PerLayer(x) if isinstance(x, dict) else CrossLayer(x)


def write_into(d: Dictionaries, z: dict[int, Tensor], m: int) -> Tensor:
    """sum over the source layers l writing layer m, in order, of z[l] @ decoders(l)[m]:
    z [..., F] each -> [..., d]."""
    out = None
    for li in d.sources(m):
        W = d.decoders(li)[m]
        out = z[li] @ W if out is None else out + z[li] @ W
    return out


def visible_decoder(d: Dictionaries, li: int, below: int) -> Tensor:
    """[F, d]: what layer li's features write into the MLP outputs of the layers m < below
    (a reader before MLP `below` sees those), summed in layer order."""
    out = None
    for m, W in d.decoders(li).items():
        if m < below:
            out = W if out is None else out + W
    if out is None:
        raise ValueError(f"layer {li}'s features write no layer before {below}")
    return out


def _check_transcoder(model: HookedTransformer, layer: int, coder: Coder, where: str) -> None:
    """``ValueError`` starting with `where` unless `coder` replaces layer `layer`'s MLP."""
    cfg = coder.cfg
    if cfg.kind not in TRANSCODER_KINDS:
        raise ValueError(f"{where}: a {cfg.kind} is not a transcoder; circuits need transcoders")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"{where}: the model has layers 0..{model.cfg.n_layers - 1}")
    if cfg.layer is not None and cfg.layer != layer:
        raise ValueError(f"{where}: the transcoder was trained for layer {cfg.layer}")
    if cfg.in_hook is None or cfg.out_hook is None:
        raise ValueError(f"{where}: the transcoder's config names no hooks")
    try:
        in_hook, out_hook = relative_name(cfg.in_hook, layer), relative_name(cfg.out_hook, layer)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if not hooks_replacing_mlp(in_hook, out_hook):
        raise ValueError(
            f"{where}: a transcoder from {cfg.in_hook} to {cfg.out_hook} does not replace the MLP"
        )
    if model.cfg.parallel_attn_mlp and in_hook == "hook_resid_mid":
        raise ValueError(
            f"{where}: a parallel block has no hook_resid_mid; use ln2.hook_normalized"
        )
    if in_hook == "hook_mlp_in" and not model.cfg.use_hook_mlp_in:
        raise ValueError(f"{where}: reads hook_mlp_in; call model.set_use_hook_mlp_in(True)")
    if cfg.d_in != model.cfg.d_model or cfg.d_out != model.cfg.d_model:
        raise ValueError(
            f"{where}: d_in/d_out {cfg.d_in}/{cfg.d_out} != d_model {model.cfg.d_model}"
        )
