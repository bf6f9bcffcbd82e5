"""The offline toy corpus: Python's own documentation mixed with procedural task sentences.

Everything here comes from what Python ships (the ``pydoc_data.topics`` help text) and from
seeded random sentence templates, so the corpus exists on any machine without a download.

Documents come in two kinds:

- **text**: paragraphs of the pydoc help topics, grouped into documents of a few hundred
  characters. A fixed tenth of them (chosen by a checksum of their text) is the ``eval``
  split and never appears in ``train``.
- **task**: three to ten sentences drawn from the families in ``FAMILIES``; the main one is
  the greater-than template of the paper, ``The war lasted from the year 1732 to the year
  1756.`` (15 nouns, centuries 11-19, the end year 1 to 30 years after the start), helped by
  runs of consecutive years (``The years 1741, 1742 and 1743.``), capitals, day/month/number
  sequences and small sums.

Held-out rule for the greater-than task: a start year ``YY`` with ``is_held_out_yy(YY)``
(``YY % 5 == 0``) never starts a greater-than sentence of the ``train`` split; the ``eval``
split uses only those start years. The rule is about start years only: held-out values
still occur as end years and in runs of years, so every two-digit token is trained. The toy
model's evaluation and the circuits stage both use ``held_out_yy()`` to score generalisation
to unseen start years.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from itertools import islice
from typing import Literal

Split = Literal["train", "eval"]

# ----------------------------------------------------------------------------- held-out rule

HELD_OUT_MODULUS = 5


def is_held_out_yy(yy: int) -> bool:
    """True for start years reserved for evaluation (``YY % 5 == 0``)."""
    return yy % HELD_OUT_MODULUS == 0


def held_out_yy() -> list[int]:
    """Held-out start years usable in a prompt: ``[5, 10, ..., 95]``.

    A usable start year has at least one later and one earlier-or-equal two-digit year,
    which every ``YY`` in 1..98 has; 0 is held out too but not used in prompts.
    """
    return [yy for yy in range(1, 99) if is_held_out_yy(yy)]


def train_yy() -> list[int]:
    """Start years that greater-than sentences of the train split draw from (1..98)."""
    return [yy for yy in range(1, 99) if not is_held_out_yy(yy)]


# ----------------------------------------------------------------------------- task sentences

GT_NOUNS = (
    "war", "treaty", "reign", "expedition", "siege", "famine", "drought", "voyage",
    "dynasty", "truce", "rebellion", "plague", "journey", "occupation", "festival",
)  # fmt: skip
GT_CENTURIES = tuple(range(11, 20))

CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Egypt", "Cairo"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("India", "Delhi"), ("Russia", "Moscow"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
    ("Ireland", "Dublin"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"),
    ("Cuba", "Havana"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Nepal", "Kathmandu"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Romania", "Bucharest"),
    ("Argentina", "Buenos Aires"), ("Colombia", "Bogota"), ("Morocco", "Rabat"),
    ("Ghana", "Accra"), ("Australia", "Canberra"),
)  # fmt: skip

SEQUENCES = (
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    ("January", "February", "March", "April", "May", "June", "July", "August",
     "September", "October", "November", "December"),
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
     "eleven", "twelve"),
    ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
     "tenth"),
    ("spring", "summer", "autumn", "winter"),
)  # fmt: skip


def greater_than_sentence(yy: int, zz: int, noun: str = "war", century: int = 17) -> str:
    """The paper's template: ``The war lasted from the year 1732 to the year 1788.``"""
    return f"The {noun} lasted from the year {century}{yy:02d} to the year {century}{zz:02d}."


def greater_than_prompt(yy: int, noun: str = "war", century: int = 17) -> str:
    """The template cut before the end year: ``... to the year 17``."""
    return f"The {noun} lasted from the year {century}{yy:02d} to the year {century}"


GT_MAX_DURATION = 30  # ZZ - YY is uniform in 1..min(GT_MAX_DURATION, 99 - YY)


def _greater_than(rng: random.Random, split: Split) -> str:
    yy = rng.choice(held_out_yy() if split == "eval" else train_yy())
    zz = yy + rng.randint(1, min(GT_MAX_DURATION, 99 - yy))
    return greater_than_sentence(yy, zz, rng.choice(GT_NOUNS), rng.choice(GT_CENTURIES))


def _year_count(rng: random.Random, split: Split) -> str:
    """Consecutive years, e.g. ``The years 1741, 1742, 1743 and 1744.``: teaches the order of
    the two-digit tokens (held-out ``YY`` included: the rule is about start years only)."""
    n = rng.randint(3, 6)
    first, century = rng.randint(0, 100 - n), rng.choice(GT_CENTURIES)
    years = [f"{century}{yy:02d}" for yy in range(first, first + n)]
    return f"The years {', '.join(years[:-1])} and {years[-1]}."


def _capital(rng: random.Random, split: Split) -> str:
    country, city = rng.choice(CAPITALS)
    return rng.choice(
        (f"The capital of {country} is {city}.", f"{city} is the capital of {country}.")
    )


def _sequence(rng: random.Random, split: Split) -> str:
    items = rng.choice(SEQUENCES)
    start, length = rng.randrange(len(items)), rng.randint(3, 6)
    return ", ".join(items[(start + i) % len(items)] for i in range(length)) + "."


def _addition(rng: random.Random, split: Split) -> str:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"{a} plus {b} is {a + b}."


FAMILIES: dict[str, Callable[[random.Random, Split], str]] = {
    "greater_than": _greater_than,
    "year_count": _year_count,
    "capital": _capital,
    "sequence": _sequence,
    "addition": _addition,
}

# the mix of the greater_than_mix recipe: family -> weight
DEFAULT_FAMILY_WEIGHTS: dict[str, float] = {
    "greater_than": 0.6,
    "year_count": 0.25,
    "capital": 0.05,
    "sequence": 0.05,
    "addition": 0.05,
}


def task_document(
    rng: random.Random, split: Split, weights: dict[str, float] = DEFAULT_FAMILY_WEIGHTS
) -> str:
    """Three to ten task sentences (about as many tokens as a text document), each from a
    family drawn with the given weights."""
    names, w = list(weights), list(weights.values())
    n = rng.randint(3, 10)
    return " ".join(FAMILIES[name](rng, split) for name in rng.choices(names, w, k=n))


# ----------------------------------------------------------------------------- pydoc text

EVAL_EVERY = 10  # one text document in ten (by checksum) is held out
MIN_DOC_CHARS = 300


@cache
def text_documents(split: Split) -> tuple[str, ...]:
    """Paragraphs of the pydoc help topics, grouped to >= MIN_DOC_CHARS, for one split.

    Whitespace inside a paragraph is collapsed; headings (underlines of ``*`` or ``=``) are
    dropped. The split of a document depends only on its text (a CRC32 checksum).
    """
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        chunk: list[str] = []
        for para in re.split(r"\n\s*\n", topics[key]):
            para = re.sub(r"^[*=\-]{3,}$", "", para, flags=re.MULTILINE)
            para = " ".join(para.split())
            if not para:
                continue
            chunk.append(para)
            if sum(len(p) for p in chunk) >= MIN_DOC_CHARS:
                docs.append("\n".join(chunk))
                chunk = []
        if chunk:
            docs.append("\n".join(chunk))
    is_eval = [zlib.crc32(d.encode()) % EVAL_EVERY == 0 for d in docs]
    return tuple(d for d, e in zip(docs, is_eval, strict=True) if e == (split == "eval"))


# ----------------------------------------------------------------------------- the mix


def iter_documents(
    seed: int,
    *,
    split: Split = "train",
    task_fraction: float = 0.5,
    family_weights: dict[str, float] = DEFAULT_FAMILY_WEIGHTS,
) -> Iterator[str]:
    """An endless, seeded stream of documents: task documents with probability
    ``task_fraction``, else the next pydoc document (a fresh shuffle each pass)."""
    rng = random.Random(f"tcspec-toy-corpus-{seed}-{split}")
    text = list(text_documents(split))
    order: list[str] = []
    while True:
        if rng.random() < task_fraction:
            yield task_document(rng, split, family_weights)
            continue
        if not order:
            order = text.copy()
            rng.shuffle(order)
        yield order.pop()


def toy_documents(
    seed: int,
    n_docs: int | None = None,
    *,
    split: Split = "train",
    task_fraction: float = 0.5,
    family_weights: dict[str, float] = DEFAULT_FAMILY_WEIGHTS,
) -> list[str]:
    """The first ``n_docs`` documents of ``iter_documents`` (deterministic in ``seed``).

    With ``n_docs=None``: as many documents as make one pass over the split's pydoc text
    with the requested share of task documents (about 2,000 for train, 200 for eval).
    """
    if not 0.0 <= task_fraction < 1.0 and n_docs is None:
        raise ValueError("task_fraction must be in [0, 1) when n_docs is None")
    if n_docs is None:
        n_docs = round(len(text_documents(split)) / (1.0 - task_fraction))
    stream = iter_documents(
        seed, split=split, task_fraction=task_fraction, family_weights=family_weights
    )
    return list(islice(stream, n_docs))


TEXT_FAMILY = "text"
"""The label of a pydoc document among the task families (`family_documents`)."""


def family_documents(seed: int, per_family: int, split: Split = "eval") -> list[tuple[str, str]]:
    """Labelled documents for probing: (text, family) pairs, `per_family` of each of
    ``FAMILIES`` (three to ten sentences of that family alone) and of ``TEXT_FAMILY`` (pydoc
    documents, as many as the split has if fewer), shuffled; deterministic in `seed`."""
    rng = random.Random(f"tcspec-toy-families-{seed}-{split}")
    out = []
    for name in FAMILIES:
        for _ in range(per_family):
            n = rng.randint(3, 10)
            out.append((" ".join(FAMILIES[name](rng, split) for _ in range(n)), name))
    text = list(text_documents(split))
    rng.shuffle(text)
    out += [(doc, TEXT_FAMILY) for doc in text[:per_family]]
    rng.shuffle(out)
    return out
