"""Activations streamed from the model through a seeded shuffle buffer (no cache on disk).

``ActivationStream(model, tokens, StreamConfig(...))`` runs the model over token rows
[n_contexts, context] (as ``tcspec.data.tokens.load_tokens`` returns them), under ``no_grad`` and
only as deep as the deepest hook needs (``stop_at_layer``), one forward batch of
``batch_contexts`` contexts at a time. Every hook's activations at the counted positions
(those whose token is not in ``exclude_tokens``, as the cache does) go into a buffer on the
model's device, in
the dtype the hook gives (the model's; TransformerLens keeps LayerNorm outputs in float32),
``buffer_tokens`` rows per hook (plus room for one forward batch).
``iter_batches(start_step)`` yields ``{hook: float32 [batch_size, width]}`` on that device,
endlessly, with the contract of ``ActivationReader.iter_batches``.

The buffer (as in SAELens): fill it to ``buffer_tokens`` rows, order its rows (a seeded
random permutation, or token order with ``shuffle=False``), hand out batches in that order
until fewer than half the rows would remain, then refill the freed slots and reorder all
rows held. The token rows are read in order, epoch after epoch; forward batches lie on a
fixed grid (contexts ``[b * batch_contexts, (b + 1) * batch_contexts)``), so the
activations of a forward batch are the same whenever it runs.

Resume without storing activations: ``state_dict()`` holds the step, the next forward
batch, the torch generator's state, and for every row still in the buffer its slot and its
provenance (forward batch and row in it: 16 bytes a row). ``load_state_dict`` reruns the
forward batches those rows came from and puts each row back in its slot, so the buffer is
bitwise the one the saved run held, and ``iter_batches(step)`` continues exactly as the
uninterrupted run (on the same machine and device). Without a loaded state,
``iter_batches(s)`` replays the first ``s`` batches (forward passes, no copies) instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xxhash
from torch import Tensor

from tcspec.data.cache import _check_hooks, _stop_layer
from tcspec.data.positions import counted, keep_mask

STREAM_FORMAT = "tcspec.stream/1"


@dataclass(frozen=True)
class StreamConfig:
    """What a stream reads and how it shuffles (the model and tokens are passed beside it)."""

    hooks: tuple[str, ...]
    """Full TransformerLens hook names to capture, e.g. ``blocks.8.ln2.hook_normalized``."""
    batch_size: int
    """Rows (token positions) per training batch."""
    buffer_tokens: int
    """Rows per hook the shuffle buffer holds when full; at least two batches."""
    batch_contexts: int = 32
    """Contexts per model forward pass."""
    seed: int = 0
    """Seeds the buffer's permutations."""
    shuffle: bool = True
    """False: rows come out in token order (the buffer is then a queue)."""
    exclude_tokens: tuple[int, ...] = ()
    """Token ids whose positions are skipped (the BOS id under ``data.bos: exclude``), as
    the activation cache skips them."""

    def __post_init__(self):
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"hooks must be distinct and not empty, got {self.hooks}")
        for f in ("batch_size", "buffer_tokens", "batch_contexts"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise ValueError(f"{f} must be a positive int, got {getattr(self, f)!r}")
        if self.buffer_tokens < 2 * self.batch_size:
            raise ValueError(
                f"buffer_tokens ({self.buffer_tokens}) must hold at least two batches of "
                f"{self.batch_size} rows"
            )


class ActivationStream:
    """Shuffled float32 batches of hook activations computed on the fly (see module doc).

    One iterator at a time: ``iter_batches`` advances the stream's own state, which
    ``state_dict`` reports after the last batch handed out.
    """

    def __init__(self, model: Any, tokens: np.ndarray, config: StreamConfig):
        hooks = list(config.hooks)
        _check_hooks(model, hooks)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [n_contexts, context], got shape {tokens.shape}")
        n_contexts, context = tokens.shape
        if context > model.cfg.n_ctx:
            raise ValueError(
                f"context {context} is longer than the model's n_ctx {model.cfg.n_ctx}"
            )
        if n_contexts == 0 or counted(tokens, config.exclude_tokens) == 0:
            raise ValueError("no token positions to stream")
        self.model, self.tokens, self.config = model, tokens, config
        self.device = torch.device(model.cfg.device)
        self.stop = _stop_layer(hooks)
        self.batches_per_epoch = -(-n_contexts // config.batch_contexts)
        self.rows_per_forward = config.batch_contexts * context  # the most a forward gives
        probe = self._forward_rows(0)  # {hook: [rows, d]}: the widths and dtypes
        self.widths = {h: int(a.shape[1]) for h, a in probe.items()}
        self.dtypes = {h: a.dtype for h, a in probe.items()}  # LayerNorm hooks may be fp32
        slots = config.buffer_tokens + self.rows_per_forward
        self.buffer = {
            h: torch.empty((slots, d), dtype=self.dtypes[h], device=self.device)
            for h, d in self.widths.items()
        }  # [slots, d] each
        self.origin = torch.zeros(slots, dtype=torch.long)  # provenance of each slot's row
        self._tokens_digest: str | None = None
        self._reset()

    # ---------------------------------------------------------------------- the forward
    @torch.no_grad()
    def _forward_rows(self, batch: int) -> dict[str, Tensor]:
        """Activations of forward batch ``batch`` (of the grid, 0 <= batch < per epoch):
        {hook: [rows, d]}, the counted positions in token order."""
        bc = self.config.batch_contexts
        chunk = np.asarray(self.tokens[batch * bc : (batch + 1) * bc])  # [<=bc, ctx]
        ids = torch.as_tensor(chunk, dtype=torch.long, device=self.device)
        store: dict[str, Tensor] = {}

        def save(act: Tensor, hook: Any) -> None:
            store[hook.name] = act

        with self.model.hooks(fwd_hooks=[(h, save) for h in self.config.hooks]):
            self.model(ids, return_type=None, stop_at_layer=self.stop)
        keep = keep_mask(ids, self.config.exclude_tokens)  # [b, ctx]
        return {h: store[h][keep] for h in self.config.hooks}  # [counted, d]

    # ---------------------------------------------------------------------- the buffer
    def _reset(self) -> None:
        self.step = 0  # batches handed out
        self.next_forward = 0  # forward batches run, over all epochs
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.order = torch.zeros(0, dtype=torch.long)  # slots in hand-out order (CPU)
        self.order_dev = self.order.to(self.device)
        self.cursor = 0  # next position in `order`

    def _pending(self) -> Tensor:
        return self.order[self.cursor :]

    def _refill(self) -> None:
        """Run forward batches into the free slots until ``buffer_tokens`` rows are held,
        then order every held row afresh."""
        pending = self._pending()
        free = torch.ones(len(self.origin), dtype=torch.bool)
        free[pending] = False
        free_slots = free.nonzero().squeeze(1)  # ascending
        added, need = 0, self.config.buffer_tokens - len(pending)
        while added < need:
            g = self.next_forward
            rows = self._forward_rows(g % self.batches_per_epoch)
            n = len(next(iter(rows.values())))
            slots = free_slots[added : added + n]
            slots_dev = slots.to(self.device)
            for h, a in rows.items():
                self.buffer[h].index_copy_(0, slots_dev, a)
            self.origin[slots] = g * self.rows_per_forward + torch.arange(n)
            added += n
            self.next_forward += 1
        held = torch.cat([pending, free_slots[:added]])
        if self.config.shuffle:
            held = held[torch.randperm(len(held), generator=self.gen)]
        self.order, self.cursor = held, 0
        self.order_dev = held.to(self.device)

    def _take(self, copy: bool = True) -> dict[str, Tensor] | None:
        """The next batch {hook: float32 [batch_size, d]} (None when ``copy`` is False)."""
        B = self.config.batch_size
        if len(self._pending()) - B < self.config.buffer_tokens // 2:
            self._refill()
        idx = self.order_dev[self.cursor : self.cursor + B]
        out = None
        if copy:
            out = {h: buf.index_select(0, idx).float() for h, buf in self.buffer.items()}
        self.cursor += B
        self.step += 1
        return out

    def iter_batches(self, start_step: int = 0) -> Iterator[dict[str, Tensor]]:
        """Endless batches {hook: float32 [batch_size, d]} from step ``start_step`` on, on
        the model's device. From a loaded state at ``start_step`` it continues directly;
        otherwise it replays from step 0 to ``start_step`` (forward passes only)."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if start_step < self.step:
            self._reset()
        while self.step < start_step:
            self._take(copy=False)
        while True:
            yield self._take()

    # ---------------------------------------------------------------------- resume
    def _identity(self) -> dict:
        """What a saved state must match: the config, the tokens (their xxh3-128, computed
        once) and the hooks' dtypes."""
        if self._tokens_digest is None:
            self._tokens_digest = xxhash.xxh3_128_hexdigest(np.ascontiguousarray(self.tokens))
        return dataclasses.asdict(self.config) | {
            "hooks": list(self.config.hooks),
            "tokens_shape": list(self.tokens.shape),
            "tokens_xxh3": self._tokens_digest,
            "dtypes": {h: str(t) for h, t in self.dtypes.items()},
        }

    def state_dict(self) -> dict:
        """What rebuilds the stream after the last batch handed out (no activations)."""
        pending = self._pending().clone()
        return {
            "format": STREAM_FORMAT,
            "identity": self._identity(),
            "step": self.step,
            "next_forward": self.next_forward,
            "generator": self.gen.get_state(),
            "slots": pending,  # long [held]
            "origin": self.origin[pending].clone(),  # long [held]
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``: rerun the forward batches the held rows came from."""
        if state.get("format") != STREAM_FORMAT:
            raise ValueError(f"not a stream state: format {state.get('format')!r}")
        if state["identity"] != self._identity():
            raise ValueError(
                f"the stream state was saved for {state['identity']}, not {self._identity()}"
            )
        slots, origin = state["slots"].long(), state["origin"].long()
        forward = origin // self.rows_per_forward  # [held] global forward batch
        for g in torch.unique(forward % self.batches_per_epoch).tolist():
            mask = forward % self.batches_per_epoch == g
            rows = self._forward_rows(g)
            at = (origin[mask] % self.rows_per_forward).to(self.device)
            dst = slots[mask].to(self.device)
            for h, a in rows.items():
                self.buffer[h].index_copy_(0, dst, a.index_select(0, at))
        self.origin[slots] = origin
        self.step, self.next_forward = int(state["step"]), int(state["next_forward"])
        self.gen.set_state(state["generator"])
        self.order, self.cursor = slots.clone(), 0
        self.order_dev = self.order.to(self.device)
