"""The greater-than task of the paper: prompts, year tokens and the probability difference
(a behaviour of a model: the toy model's metrics and the circuit studies both measure it).

A prompt is a template with ``YY`` in place of the two-digit start year. The default is the
sentence the toy corpus teaches, ``The war lasted from the year 17YY to the year 17``; the
paper's gpt2-small notebook uses ``The war lasted from 17YY to 17`` (``NOTEBOOK_TEMPLATE``)
with start years 01..98 (``NOTEBOOK_YY``), and ranks keep-top-k components over the prompts
of every start year 00..99 (``NOTEBOOK_RANK_YY``). The model's next-token distribution,
restricted to the 100 two-digit tokens ``"00"``..``"99"`` and renormalised, gives the metric
for one prompt:

    prob_diff = sum_{y' > YY} p(y') - sum_{y' <= YY} p(y')

averaged over prompts (start years ``YY``). gpt2-small scores 0.8829 in the paper.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from tcspec.models.corpus import greater_than_prompt
from tcspec.vocab import YY_SLOT

PAPER_YY = tuple(range(2, 99))
"""The default start years of a model other than the toy one: 02..98 (the paper's notebook
scores 01..98: `NOTEBOOK_YY`)."""
NOTEBOOK_TEMPLATE = "The war lasted from 17YY to 17"
NOTEBOOK_YY = tuple(range(1, 99))
NOTEBOOK_RANK_YY = tuple(range(100))


def prompt_text(template: str, yy: int) -> str:
    """``template`` with its ``YY`` slot filled: ``("from 17YY to 17", 5) -> "from 1705 to 17"``.

    ``ValueError`` unless the template has exactly one slot."""
    if template.count(YY_SLOT) != 1:
        raise ValueError(f"a greater-than template needs exactly one `{YY_SLOT}`: {template!r}")
    return template.replace(YY_SLOT, f"{yy:02d}")


def year_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.LongTensor:
    """Ids of the tokens ``"00"``..``"99"`` in order: LongTensor[100].

    Raises ``ValueError`` when a two-digit string is not a single token.
    """
    ids = []
    for yy in range(100):
        tok = tokenizer.encode(f"{yy:02d}", add_special_tokens=False)
        if len(tok) != 1:
            raise ValueError(f"year {yy:02d} is not a single token: {tok}")
        ids.append(tok[0])
    return torch.tensor(ids, dtype=torch.long)


def greater_than_prompts(
    tokenizer: PreTrainedTokenizerBase,
    yy_values: Sequence[int],
    noun: str = "war",
    century: int = 17,
    template: str | None = None,
) -> tuple[torch.LongTensor, list[int]]:
    """Tokenized prompts, BOS first, for the start years whose year is one token.

    The text is ``template`` with its ``YY`` filled (`prompt_text`), or without a template
    the toy corpus's sentence for ``noun`` and ``century``. Prompts whose start year ``YY``
    does not tokenize as the single token ``"YY"``, or whose length differs from the most
    common length, are dropped (as in the paper, the tokens must line up across prompts).
    Returns ``(tokens [n, seq], kept yy list)``.
    """
    year_ids = year_token_ids(tokenizer)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def text(yy: int) -> str:
        if template is None:
            return greater_than_prompt(yy, noun, century)
        return prompt_text(template, yy)

    encoded = {yy: bos + tokenizer.encode(text(yy), add_special_tokens=False) for yy in yy_values}
    if not encoded:
        raise ValueError("no start years given")
    length = Counter(len(ids) for ids in encoded.values()).most_common(1)[0][0]
    kept = [yy for yy, ids in encoded.items() if len(ids) == length and int(year_ids[yy]) in ids]
    if not kept:
        raise ValueError(f"no greater-than prompt tokenizes cleanly for noun={noun!r}")
    tokens = torch.tensor([encoded[yy] for yy in kept], dtype=torch.long)  # [n, seq]
    return tokens, kept


def prob_diff(logits_last: Tensor, yy: Tensor, year_ids: Tensor) -> Tensor:
    """Per-prompt probability difference.

    logits_last: [n, d_vocab] logits at the last prompt position; yy: LongTensor[n] start
    years; year_ids: LongTensor[100] from ``year_token_ids``. Returns Tensor[n].
    """
    probs = logits_last[:, year_ids].float().softmax(dim=-1)  # [n, 100]
    years = torch.arange(100, device=probs.device)  # [100]
    later = years[None, :] > yy.to(probs.device)[:, None]  # [n, 100]
    return (probs * later).sum(-1) - (probs * ~later).sum(-1)  # [n]


@torch.no_grad()
def greater_than_prob_diffs(
    model: HookedTransformer,
    yy_values: Sequence[int] = PAPER_YY,
    noun: str = "war",
    century: int = 17,
    fwd_hooks: Sequence[tuple] = (),
    template: str | None = None,
) -> tuple[Tensor, list[int]]:
    """Per-prompt probability differences of ``model`` (optionally run with ``fwd_hooks``,
    TransformerLens ``(hook name, function)`` pairs). Returns ``(Tensor[n], kept yy)``."""
    tokens, kept = greater_than_prompts(model.tokenizer, yy_values, noun, century, template)
    tokens = tokens.to(model.cfg.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))  # [n, seq, d_vocab]
    year_ids = year_token_ids(model.tokenizer).to(logits.device)
    yy = torch.tensor(kept, device=logits.device)
    return prob_diff(logits[:, -1], yy, year_ids), kept


def greater_than_score(
    model: HookedTransformer,
    yy_values: Sequence[int] = PAPER_YY,
    noun: str = "war",
    century: int = 17,
    fwd_hooks: Sequence[tuple] = (),
    template: str | None = None,
) -> float:
    """Mean probability difference over the start years ``yy_values``."""
    diffs, _ = greater_than_prob_diffs(model, yy_values, noun, century, fwd_hooks, template)
    return float(diffs.mean())


def greater_than_root_weights(yy: Tensor, year_ids: Tensor, d_vocab: int) -> Tensor:
    """Weights over the vocabulary of a linear stand-in for the probability difference: for
    each prompt the mean one-hot of the years after ``YY`` minus that of the years up to
    ``YY`` (so ``W_U w`` is a logit-difference direction ``W_U (e_a - e_b)``).

    yy: LongTensor[n]; year_ids: LongTensor[100]. Returns [n, d_vocab].
    """
    years = torch.arange(100)  # [100]
    later = years[None, :] > yy.cpu()[:, None]  # [n, 100]
    n_later = later.sum(-1, keepdim=True).clamp(min=1)
    n_earlier = (~later).sum(-1, keepdim=True).clamp(min=1)
    w = later / n_later - ~later / n_earlier  # [n, 100]
    out = torch.zeros(len(yy), d_vocab)
    out[:, year_ids.cpu()] = w
    return out


def spread_yy(candidates: Sequence[int], n: int) -> list[int]:
    """At most ``n`` start years from ``candidates``, evenly spread and in order."""
    candidates = sorted(candidates)
    if n >= len(candidates):
        return candidates
    step = len(candidates) / n
    return [candidates[int(i * step)] for i in range(n)]


def two_digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.LongTensor:
    """Ids of every single token spelling a two-digit number: ``"00".."99"`` and, where the
    vocabulary has them, ``" 00".." 99"`` (what a de-embedding counts as a year token)."""
    ids = set(year_token_ids(tokenizer).tolist())
    for yy in range(100):
        tok = tokenizer.encode(f" {yy:02d}", add_special_tokens=False)
        if len(tok) == 1:
            ids.add(tok[0])
    return torch.tensor(sorted(ids), dtype=torch.long)
