"""A small byte-level BPE tokenizer for the toy model, with every two-digit number one token.

The greater-than metric reads the probabilities of the 100 tokens ``"00"``..``"99"`` after a
prompt ending in ``" 17"``, so numbers are pre-split into pairs of digits from the left
(``" 1732"`` -> ``" 17"``, ``"32"``) and the merges that build every ``"dd"`` and ``" dd"``
are placed first, whatever the training text holds. The rest is learned by the ``tokenizers``
BPE trainer. ``<|endoftext|>`` (id 0) is both BOS and EOS, and the wrapped tokenizer
prepends it, as TransformerLens expects of GPT-2-like tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tcspec.models.corpus import toy_documents
from tcspec.models.recipes import get_recipe

BOS = "<|endoftext|>"
DIGIT_PAIRS = tuple(f"{i:02d}" for i in range(100))

# GPT-2's split, except that digits go in runs of at most two
PRETOKENIZE_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}{1,2}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_SPACE = "Ġ"  # how the byte-level alphabet writes " "


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _with_digit_merges(trained: Tokenizer, vocab_size: int) -> Tokenizer:
    """Rebuild a trained BPE so that the merges of all ``dd`` and ``Ġdd`` come first.

    Ids: the special token and the byte alphabet keep theirs; merged tokens follow in merge
    order. Trained merges are kept in order until the vocabulary reaches ``vocab_size``.
    """
    spec = json.loads(trained.to_str())
    old_vocab: dict[str, int] = spec["model"]["vocab"]
    old_merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in spec["model"]["merges"]]  # fmt: skip
    merged = {a + b for a, b in old_merges}
    base = sorted((t for t in old_vocab if t not in merged), key=old_vocab.__getitem__)

    forced = [(p[0], p[1]) for p in DIGIT_PAIRS] + [(_SPACE, p) for p in DIGIT_PAIRS]
    vocab = {t: i for i, t in enumerate(base)}
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, (a, b) in enumerate(forced + old_merges):
        if (a, b) in seen:
            continue
        if i >= len(forced) and a + b not in vocab and len(vocab) >= vocab_size:
            break
        seen.add((a, b))
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens([BOS])
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    return tok


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The ``transformers`` view of a ``tokenizers`` BPE, prepending BOS on encode."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        add_bos_token=True,
        name_or_path="tcspec-toy",
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train the toy BPE on ``texts``; deterministic for the same texts and size."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(texts, trainer)
    tokenizer = wrap_tokenizer(_with_digit_merges(trained, vocab_size))
    check_year_tokens(tokenizer)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> list[Path]:
    """Write the files ``load_tokenizer`` reads (``tokenizer.json``, ``tokenizer_config.json``)."""
    return [Path(p) for p in tokenizer.save_pretrained(str(out_dir))]


def load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by ``save_tokenizer`` (BOS prepended on encode)."""
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder), add_bos_token=True)
    if tok.bos_token is None:
        tok.bos_token = BOS
    return tok


def check_year_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise ``ValueError`` unless every ``dd`` is one token and a greater-than prompt ends
    in the century token ``" 17"`` with the start year one token."""
    for pair in DIGIT_PAIRS:
        if len(tokenizer.encode(pair, add_special_tokens=False)) != 1:
            raise ValueError(f"two-digit string {pair!r} is not a single token")
    ids = tokenizer.encode(
        "The war lasted from the year 1732 to the year 17", add_special_tokens=False
    )
    pieces = tokenizer.convert_ids_to_tokens(ids)
    pairs = list(zip(pieces, pieces[1:], strict=False))
    if pieces[-1] != _SPACE + "17" or (_SPACE + "17", "32") not in pairs:
        raise ValueError(f"greater-than prompt tokenizes unexpectedly: {pieces}")


def target_token_id(tokenizer, text: str) -> int:
    """The id of ``text`` as exactly one token of any model's ``tokenizer`` (no special
    tokens): an attribution target's token. A ValueError saying how it splits otherwise."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = " + ".join(repr(tokenizer.decode([t])) for t in ids)
        raise ValueError(
            f"{text!r} is {len(ids)} tokens for the model's tokenizer ({pieces or 'none'}); "
            "a target must be exactly one token"
        )
    return ids[0]


def recipe_tokenizer(recipe: str, seed: int) -> PreTrainedTokenizerFast:
    """The tokenizer of a toy model of ``recipe`` trained with ``seed`` (deterministic: the
    same BPE is trained on the same documents)."""
    rec = get_recipe(recipe)
    mix = dict(task_fraction=rec.task_fraction, family_weights=rec.family_weights)
    return train_tokenizer(toy_documents(seed, **mix), rec.vocab_size)
