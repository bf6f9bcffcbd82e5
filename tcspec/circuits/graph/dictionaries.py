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

from torch import Tensor

from tcspec.dictionaries.clt import CLT
from tcspec.dictionaries.coders import Coder
from tcspec.models.hooks import full_name, relative_name


class PerLayer:
    """One transcoder per layer (some layers may have none)."""

    def __init__(self, coders: dict[int, Coder]):
        self.coders = dict(sorted(coders.items()))
        self.layers = tuple(self.coders)  # source layers, increasing

    @property
    def dtype(self):
        return next(iter(self.coders.values())).W_enc.dtype

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
    if isinstance(x, CLT):
        return CrossLayer(x)
    return PerLayer(x)


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
