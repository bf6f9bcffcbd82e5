"""The two-pass top-k against torch.topk: the same values in the same order, indices that
point at them, on float32 and on bfloat16 bits (many ties), with NaNs, and at widths too
narrow to split."""

import pytest
import torch

from tcspec.compute.topk import CHUNK_ROWS, top_k


def check(t: torch.Tensor, k: int) -> None:
    want = t.topk(k, dim=1)
    vals, idx = top_k(t, k)
    assert vals.dtype == t.dtype and idx.dtype == torch.long and idx.shape == (t.shape[0], k)
    torch.testing.assert_close(vals, want.values, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(t.gather(1, idx), vals, rtol=0, atol=0, equal_nan=True)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()  # k distinct entries a row


@pytest.mark.parametrize("k", [1, 8, 32])
@pytest.mark.parametrize("S", [1024, 4096])
def test_float32_rows(S, k):
    g = torch.Generator().manual_seed(S + k)
    check(torch.randn(64, S, generator=g), k)


def test_bfloat16_bits_with_ties():
    """bfloat16 pre-activations read as int16 (TopK's selection): ties everywhere."""
    g = torch.Generator().manual_seed(0)
    pre = (torch.randn(128, 2048, generator=g) * 0.1).bfloat16()
    assert pre.unique().numel() < pre.numel() // 20  # ties abound
    check(pre.view(torch.int16), 32)


def test_clustered_maxima():
    """The top k all in one chunk, and rows of one repeated value."""
    t = torch.zeros(4, 1024)
    n = 1024 // CHUNK_ROWS
    t[0, torch.arange(CHUNK_ROWS) * n] = torch.arange(1.0, CHUNK_ROWS + 1)  # chunk 0 holds all
    t[1] = 3.0
    t[2, 5::n] = 7.0
    check(t, 16)


def test_nan_counts_as_largest():
    t = torch.randn(8, 1024, generator=torch.Generator().manual_seed(1))
    t[0, 3] = t[1, 700] = t[1, 701] = float("nan")
    check(t, 4)


@pytest.mark.parametrize("S", [100, 8 * CHUNK_ROWS, 1000])  # not a multiple, or too narrow
def test_narrow_or_ragged_rows_take_the_plain_top_k(S):
    check(torch.randn(5, S, generator=torch.Generator().manual_seed(S)), 8)
