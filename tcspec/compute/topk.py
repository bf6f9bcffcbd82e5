"""The k largest entries of each row of a wide matrix, in two cheap passes instead of one
costly one: what TopK activations select from their pre-activations.

torch's CPU `topk` walks each row through a partial sort of (value, index) pairs; on a row
of 8,192 pre-activations that is most of its time. Split the row's columns into n strided
chunks of C (chunk c holds columns c, c + n, c + 2n, ...). Any k distinct chunks' maxima are
k distinct entries, so the k-th largest entry of the row is at least the k-th largest
chunk maximum, and every entry of the row's top k lies in one of the k chunks with the
largest maxima. Those k chunks, C k candidates, hold the row's top k: one vectorised max
over the chunks, a top-k over n maxima and one over C k candidates replace the full one.
The values are torch.topk's exactly; among tied values the indices may differ.

Measured at [4,096, 8,192], k 32, 2 threads (Intel Xeon with AMX): bfloat16 keys (as int16)
29 ms -> 18 ms, float32 41 ms -> 28 ms.
"""

from __future__ import annotations

from torch import Tensor

CHUNK_ROWS = 16
"""Entries a chunk holds (C); chunks per row n = S / C. 16 was the fastest of 4-64 at
S 8,192, k 32, in bfloat16 and float32."""


def top_k(t: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, long indices) [B, k] of the k largest entries of each row of t [B, S], in
    descending order, as `t.topk(k, dim=1)` (NaN counts as largest, as there)."""
    B, S = t.shape
    C = CHUNK_ROWS
    n = S // C
    if S % C or n < 2 * k:  # too narrow to split: the plain top-k
        return t.topk(k, dim=1)
    chunks = t.reshape(B, C, n)  # chunk c = column c of each of the C rows: t[:, c::n]
    _, best = chunks.amax(1).topk(k, dim=1, sorted=False)  # [B, k] chunks
    cand = chunks.gather(2, best.unsqueeze(1).expand(B, C, k))  # [B, C, k]
    vals, j = cand.view(B, C * k).topk(k, dim=1)  # [B, k]; candidate j = (row j // k, chunk j % k)
    return vals, (j // k) * n + best.gather(1, j % k)
