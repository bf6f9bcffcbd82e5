"""The greater-than task: prompts, year tokens and the probability difference."""

from __future__ import annotations

import math

import pytest
import torch

from tcspec.models.greater_than import (
    greater_than_prob_diffs,
    greater_than_prompts,
    greater_than_score,
    prob_diff,
    year_token_ids,
)
from tcspec.models.load import load_model

D_VOCAB = 130
YEAR_IDS = torch.arange(20, 120)  # token 20 + y is the year y


def _logits(year_logits: torch.Tensor, other: float = 0.0) -> torch.Tensor:
    """[n, 100] year logits -> [n, D_VOCAB] logits with ``other`` on every other token."""
    logits = torch.full((len(year_logits), D_VOCAB), other)
    logits[:, YEAR_IDS] = year_logits
    return logits


def test_prob_diff_uniform():
    # p = 0.01 each: YY=49 -> 50 later, 50 not; YY=0 -> 99 later; YY=99 -> none later
    out = prob_diff(_logits(torch.zeros(3, 100)), torch.tensor([49, 0, 99]), YEAR_IDS)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.98, -1.0]))


def test_prob_diff_point_mass_counts_equal_year_as_not_greater():
    year_logits = torch.full((3, 100), -1e4)
    year_logits[:, 60] = 0.0
    out = prob_diff(_logits(year_logits), torch.tensor([30, 60, 59]), YEAR_IDS)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 1.0]))


def test_prob_diff_two_years_and_renormalisation():
    # p(20) = 1 / (1 + e), p(80) = e / (1 + e); a huge non-year logit must not matter
    year_logits = torch.full((2, 100), -1e4)
    year_logits[:, 20], year_logits[:, 80] = 0.0, 1.0
    p80 = math.e / (1 + math.e)
    out = prob_diff(_logits(year_logits, other=50.0), torch.tensor([50, 10]), YEAR_IDS)
    torch.testing.assert_close(out, torch.tensor([p80 - (1 - p80), 1.0]))


def test_year_token_ids(toy_tokenizer):
    ids = year_token_ids(toy_tokenizer)
    assert ids.shape == (100,) and ids.dtype == torch.long
    assert toy_tokenizer.decode([int(ids[32])]) == "32"
    assert len(set(ids.tolist())) == 100


def test_year_token_ids_rejects_split_years():
    class SplitDigits:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    with pytest.raises(ValueError, match="not a single token"):
        year_token_ids(SplitDigits())


def test_greater_than_prompts(toy_tokenizer):
    tokens, kept = greater_than_prompts(toy_tokenizer, [5, 32, 95], noun="treaty", century=14)
    assert kept == [5, 32, 95] and tokens.shape[0] == 3
    assert (tokens[:, 0] == toy_tokenizer.bos_token_id).all()
    assert (
        toy_tokenizer.decode(tokens[1, 1:]) == "The treaty lasted from the year 1432 to the year 14"
    )
    ids = year_token_ids(toy_tokenizer)
    for row, yy in zip(tokens, kept, strict=True):
        assert int(ids[yy]) in row.tolist()


def test_greater_than_score_on_a_model(toy_model_dir):
    model = load_model(toy_model_dir)
    diffs, kept = greater_than_prob_diffs(model, [10, 50, 90])
    assert diffs.shape == (3,) and kept == [10, 50, 90]
    assert ((diffs >= -1) & (diffs <= 1)).all()
    score = greater_than_score(model, [10, 50, 90])
    assert score == pytest.approx(float(diffs.mean()), abs=1e-6)


def test_a_template_fills_one_slot(toy_tokenizer):
    from tcspec.models.greater_than import prompt_text

    sentence = "The war lasted from the year 17YY to the year 17"
    assert prompt_text(sentence, 7) == "The war lasted from the year 1707 to the year 17"
    ours, kept = greater_than_prompts(toy_tokenizer, [5, 32, 95], template=sentence)
    default, _ = greater_than_prompts(toy_tokenizer, [5, 32, 95])
    assert kept == [5, 32, 95] and torch.equal(ours, default)
    short, _ = greater_than_prompts(toy_tokenizer, [32], template="The war lasted from 17YY to 17")
    assert toy_tokenizer.decode(short[0, 1:]) == "The war lasted from 1732 to 17"
    for bad in ("no slot", "YY and YY"):
        with pytest.raises(ValueError, match="exactly one `YY`"):
            prompt_text(bad, 1)
