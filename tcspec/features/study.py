"""The blind interpretability study: sampling, the rating packet, ratings, Table 1, proxies.

Sampling (the paper's): per dictionary, `n` random live features, seeded; feature 0 is
excluded, and so are features with fewer than `min_examples` activating eval tokens (the
paper resamples those, which draws from the same set). Live means a firing frequency above
the dictionary's `live_threshold` (`tcspec.vocab.is_live`). `feature_order` returns all
eligible features in a seeded random order: its first `n` are the study's, and a longer
prefix gets dashboard pages, so every study feature has one.

The packet (`build_study`): the sampled features of every dictionary shuffled together
under anonymous ids F01, F02, ...; ``packet/packet.html`` shows each feature's top 5 examples
and its examples across the activation bands, with token shading (relative within the
feature) but no activation values, feature indices or dictionary names (and no logit or
de-embedding tables, which would tell a transcoder from an SAE);
``packet/ratings.csv`` is the template raters fill: ``id, rating (yes|maybe|no),
context_free (0|1), note``. The private ``key.json`` maps ids to (dictionary, feature);
``proxies.csv`` holds the automatic proxies per id.

Table 1: counts per class and dictionary. "interpretable" = rating yes; "context-free" counts
features rated yes with context_free = 1 (a subset of interpretable, as in the paper). The
difference in interpretable fractions of two dictionaries is tested with the pooled
two-proportion z-test:

    p_i = x_i / n_i,  p = (x_1 + x_2) / (n_1 + n_2),
    z = (p_1 - p_2) / sqrt(p (1 - p) (1/n_1 + 1/n_2)),   two-sided P = erfc(|z| / sqrt 2).

Automatic proxies, per sampled feature:
  - token concentration of its top-activating examples: the number of distinct tokens at
    the activating positions, and the entropy (bits) of their distribution;
  - context-free: the out-of-fold R^2 of predicting the feature's activation at every eval
    token from that token id's mean activation (`tcspec.features.stats.token_r2`); the proxy calls
    a feature context-free when R^2 > CONTEXT_FREE_R2 = 0.8.
With ratings, `proxy_summary` reports their agreement with the raters.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tcspec.atomic import write_bytes, write_text
from tcspec.vocab import is_live

RATINGS = ("yes", "maybe", "no")
COLUMNS = ("id", "rating", "context_free", "note")
CONTEXT_FREE_R2 = 0.8
CLASSES = ("interpretable", "maybe", "uninterpretable", "context-free (subset of interpretable)")
PACKET_DIR = "packet"
KEY_FILE = "key.json"
PROXIES_FILE = "proxies.csv"
TOP_EXAMPLES_SHOWN = 5  # top examples shown in the packet, before the banded ones


# ------------------------------------------------------------------------------ sampling
def eligible_features(count, n_tokens: int, live_threshold: float, min_examples: int) -> np.ndarray:
    """Indices of features that may be sampled: live, not feature 0, >= min_examples tokens."""
    count = np.asarray(count)
    ok = is_live(count / max(n_tokens, 1), live_threshold) & (count >= min_examples)
    ok[0] = False
    return np.flatnonzero(ok)


def feature_order(
    count,
    n_tokens: int,
    *,
    n: int,
    seed: int,
    label: str,
    live_threshold: float,
    min_examples: int,
) -> list[int]:
    """Every eligible feature in a random order seeded by (seed, label); raises ValueError
    when fewer than `n` are eligible."""
    eligible = eligible_features(count, n_tokens, live_threshold, min_examples)
    if len(eligible) < n:
        live = int(is_live(np.asarray(count) / max(n_tokens, 1), live_threshold).sum())
        raise ValueError(
            f"interp.features asks for {n} random live features of `{label}`, but only "
            f"{len(eligible)} qualify ({live} live: firing frequency > {live_threshold:g} on "
            f"{n_tokens} eval tokens; feature 0 and features with fewer than {min_examples} "
            f"activating tokens excluded); lower interp.features to at most {len(eligible)}, "
            f"or use more eval tokens or a wider or less sparse dictionary"
        )
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    return [int(f) for f in rng.permutation(eligible)]


# ------------------------------------------------------------------------------- proxies
def token_concentration(token_ids: Sequence[int]) -> tuple[int, float]:
    """(distinct tokens, entropy in bits of their distribution) of a list of token ids."""
    counts = np.array(list(Counter(token_ids).values()), dtype=float)
    if counts.size == 0:
        return 0, math.nan
    p = counts / counts.sum()
    return len(counts), float(-(p * np.log2(p)).sum() + 0.0)


def feature_proxies(examples: pd.DataFrame, r2: dict[int, float], features: Sequence[int]) -> dict:
    """Proxies of `features` from their top examples (columns feature, section, tokens,
    center) and their context-free R^2: {feature: {distinct_tokens, token_entropy_bits,
    context_free_r2, context_free_proxy}}."""
    top = examples[examples["section"] == "top"]
    out = {}
    for f in features:
        rows = top[top["feature"] == f]
        ids = [int(t[c]) for t, c in zip(rows["tokens"], rows["center"])]
        distinct, entropy = token_concentration(ids)
        r = r2.get(f, math.nan)
        out[int(f)] = {
            "distinct_tokens": distinct,
            "token_entropy_bits": entropy,
            "context_free_r2": r,
            "context_free_proxy": bool(r > CONTEXT_FREE_R2),
        }
    return out


# -------------------------------------------------------------------------------- packet
def build_study(feature_dirs: Sequence[Path], out_dir: Path, n: int, seed: int) -> dict:
    """Write the blind packet, the key and the proxies of the features tasks in
    `feature_dirs` (folders written by `tcspec.features.files.save_stats` with a `study` list in
    their features.json) into `out_dir`. Returns a summary."""
    from tcspec.features.examples import example_rows
    from tcspec.features.files import load_stats
    from tcspec.features.packet import PacketItem, render_packet

    entries, dictionaries = [], {}
    for folder in feature_dirs:
        stats = load_stats(folder)
        meta = stats.meta
        label = meta["label"]
        if label in dictionaries:
            raise ValueError(f"two features folders describe the same dictionary `{label}`")
        study = meta["study"][:n]
        if len(study) < n:
            raise ValueError(f"{folder}: holds {len(study)} study features, the study needs {n}")
        dictionaries[label] = {k: meta.get(k) for k in ("dictionary", "kind", "layer", "member")}
        dictionaries[label]["folder"] = str(folder)
        for f in study:
            entries.append((label, int(f), stats))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(entries))
    width = max(2, len(str(len(entries))))
    key, items, proxies = {}, [], []
    for i, j in enumerate(order, start=1):
        label, f, stats = entries[j]
        fid = f"F{i:0{width}d}"
        key[fid] = {"dictionary": label, "feature": f}
        ex = stats.examples[stats.examples["feature"] == f]
        top = ex[ex["section"] == "top"].head(TOP_EXAMPLES_SHOWN)
        shown = pd.concat([top, ex[ex["section"] == "band"]]).drop_duplicates(["row", "col"])
        items.append(PacketItem(fid, example_rows(shown, stats.vocab)))
        proxies.append(
            {"id": fid, "dictionary": label, "feature": f} | stats.meta["proxies"][str(f)]
        )
    out_dir = Path(out_dir)
    packet = out_dir / PACKET_DIR
    packet.mkdir(parents=True, exist_ok=True)
    write_text(packet / "packet.html", render_packet(items))
    write_text(packet / "ratings.csv", ratings_template(list(key)))
    record = {"seed": seed, "features_per_dictionary": n, "dictionaries": dictionaries, "ids": key}
    write_text(out_dir / KEY_FILE, json.dumps(record, indent=1) + "\n")
    write_text(out_dir / PROXIES_FILE, pd.DataFrame(proxies).to_csv(index=False))
    return {"features": len(key), "dictionaries": list(dictionaries)}


def ratings_template(ids: Sequence[str]) -> str:
    """The CSV raters fill in: one row per id, rating empty, context_free 0."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for fid in ids:
        w.writerow([fid, "", "0", ""])
    return buf.getvalue()


# ------------------------------------------------------------------------------- ratings
def validate_ratings(path: Path, ids: Sequence[str]) -> pd.DataFrame:
    """Parse a ratings CSV against the packet's `ids`; returns a frame with columns id,
    rating, context_free (int), note in file order. Raises one ValueError listing every
    problem as ``FILE:LINE: column: message``."""
    path = Path(path)
    name = str(path)
    reader, header = _ratings_reader(path)
    col = {c: header.index(c) for c in header}
    known, errors, rows = set(ids), [], []
    seen: dict[str, int] = {}  # id -> the line that rated it
    line = 1
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            errors.append(f"{name}:{line}: row: {len(fields)} fields, the header has {len(header)}")
            continue
        fid = fields[col["id"]].strip()
        raw_rating, cf = fields[col["rating"]].strip(), fields[col["context_free"]].strip()
        rating = raw_rating.lower()
        note = fields[col["note"]] if "note" in col else ""
        id_problem = _id_problem(fid, ids, known, seen)
        if id_problem is None:
            seen[fid] = line
        problems = ([id_problem] if id_problem else []) + _answer_problems(raw_rating, cf)
        errors += [f"{name}:{line}: {p}" for p in problems]
        if not problems:
            rows.append((fid, rating, int(cf), note))
    absent = [i for i in ids if i not in seen]
    if absent:
        errors.append(
            f"{name}:{line + 1}: id: no row for {len(absent)} packet id(s): {', '.join(absent)}"
        )
    if errors:
        raise ValueError(
            f"{name} does not match the study packet ({len(errors)} problem(s)); nothing was "
            "ingested:\n" + "\n".join(errors)
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _ratings_reader(path: Path) -> tuple[Any, list[str]]:
    """A ``csv.reader`` past the ratings file's header, and the header (lower case); ValueError
    for a file that cannot be read or a header other than COLUMNS (note optional)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the ratings file: {e}") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in COLUMNS[:3] if c not in header]
    unknown = [h for h in header if h not in COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise ValueError(
            f"{path}:1: header: expected the columns {', '.join(COLUMNS)}; got "
            f"{', '.join(header) or 'nothing'}"
        )
    return reader, header


def _id_problem(fid: str, ids: Sequence[str], known: set[str], seen: dict[str, int]) -> str | None:
    """What is wrong with a row's id (empty, not in the packet, rated before), or None."""
    if not fid:
        return "id: empty"
    if fid not in known:
        return f"id: `{fid}` is not in the packet ({_id_range(ids)})"
    if fid in seen:
        return f"id: `{fid}` repeats line {seen[fid]}"
    return None


def _answer_problems(raw_rating: str, cf: str) -> list[str]:
    """What is wrong with a row's rating (as typed) and context_free, each `column: message`."""
    rating = raw_rating.lower()
    problems = []
    if rating not in RATINGS:
        shown = f"`{raw_rating}`" if rating else "empty"
        problems.append(f"rating: {shown}; expected one of {', '.join(RATINGS)}")
    if cf not in ("0", "1"):
        problems.append(f"context_free: {f'`{cf}`' if cf else 'empty'}; expected 0 or 1")
    elif cf == "1" and rating != "yes":
        problems.append(
            f"context_free: 1 on rating `{rating}`; a context-free feature is an interpretable "
            "one (rating yes)"
        )
    return problems


def _id_range(ids: Sequence[str]) -> str:
    return f"{ids[0]}..{ids[-1]}" if ids else "no ids"


def ingest(study: Path, ratings_csv: Path, target: Path, target_key: Path) -> Path:
    """Validate `ratings_csv` against the study packet in the folder `study` and copy it to
    `target` (with the packet's key beside it as `target_key`). Raises ValueError, writing
    nothing, when the packet is missing or the file does not match it. Returns `target`."""
    study = Path(study)
    key_file = study / KEY_FILE
    if not key_file.is_file():
        raise ValueError(f"{key_file} not found: run the interp stage (its study) first")
    key = json.loads(key_file.read_text())
    validate_ratings(Path(ratings_csv), list(key["ids"]))
    write_text(target_key, json.dumps(key | {"study": str(study)}, indent=1) + "\n")
    write_bytes(target, Path(ratings_csv).read_bytes())
    return Path(target)


# ------------------------------------------------------------------------------- Table 1
def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 vs x2/n2: (z, two-sided p) (module docstring)."""
    if min(n1, n2) <= 0:
        raise ValueError("both groups need at least one feature")
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def count_classes(ratings: pd.DataFrame, key: dict) -> pd.DataFrame:
    """Table 1 counts: rows CLASSES + total, one column per dictionary (in key order)."""
    ids = key["ids"]
    labels = list(key["dictionaries"])
    table = pd.DataFrame(0, index=[*CLASSES, "total"], columns=labels)
    for fid, rating, cf in ratings[["id", "rating", "context_free"]].itertuples(index=False):
        d = ids[fid]["dictionary"]
        cls = {"yes": "interpretable", "maybe": "maybe", "no": "uninterpretable"}[rating]
        table.loc[cls, d] += 1
        table.loc[CLASSES[3], d] += int(rating == "yes" and cf == 1)
        table.loc["total", d] += 1
    return table


def table1(ratings_csv: Path, key_file: Path) -> pd.DataFrame | None:
    """Table 1 from ingested ratings and their packet key (None when there are no ratings):
    the counts per class and dictionary, the paper's counts beside them (columns "paper:
    ..."). `attrs["z_tests"]` holds the interpretable-fraction test of each pair."""
    if not Path(ratings_csv).is_file():
        return None
    key = json.loads(key_file.read_text())
    ratings = validate_ratings(ratings_csv, list(key["ids"]))
    counts = count_classes(ratings, key)
    table = counts.copy()
    try:
        from tcspec.tables.paper import REFERENCES

        ref = REFERENCES["table1"].frame().set_index("class")
        for c in ref.columns:
            table[f"paper: {c}"] = [*ref[c].reindex(CLASSES).astype(int), 50]
    except (ImportError, KeyError):
        pass
    tests = []
    labels = list(counts.columns)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            na, nb = int(counts.loc["total", a]), int(counts.loc["total", b])
            xa, xb = int(counts.loc["interpretable", a]), int(counts.loc["interpretable", b])
            z, p = two_proportion_z(xa, na, xb, nb)
            tests.append({"a": a, "b": b, "p_a": xa / na, "p_b": xb / nb, "z": z, "p_value": p})
    table.index.name = "class"
    table = table.reset_index()
    table.attrs["z_tests"] = tests
    table.attrs["notes"] = [
        "interpretable = rated yes; context-free counts features rated yes and context-free.",
        "z-test: pooled two-proportion test of the interpretable fractions, two-sided.",
    ]
    return table


# ------------------------------------------------------------------------------- proxies
def proxy_summary(study: Path, ratings_csv: Path | None = None) -> pd.DataFrame:
    """Per dictionary (and "all"): the proxies of the sampled features, and with a ratings
    file their agreement with the raters.

    Columns: dictionary, features, median_distinct_tokens, mean_token_entropy_bits,
    mean_context_free_r2, context_free_proxy_fraction; with ratings also
    interpretable_fraction, context_free_fraction (raters, all features),
    context_free_agreement (fraction of features where the proxy's call equals the raters'),
    context_free_kappa (Cohen's kappa of the same), entropy_auc (probability that a feature
    rated yes has a lower token entropy than one rated maybe/no; ties count 1/2)."""
    study = Path(study)
    proxies = pd.read_csv(study / PROXIES_FILE)
    if ratings_csv is not None:
        key = json.loads((study / KEY_FILE).read_text())
        ratings = validate_ratings(Path(ratings_csv), list(key["ids"]))
        proxies = proxies.merge(ratings[["id", "rating", "context_free"]], on="id", how="left")
    rows = []
    groups = [(d, g) for d, g in proxies.groupby("dictionary", sort=False)] + [("all", proxies)]
    for d, g in groups:
        row = {
            "dictionary": d,
            "features": len(g),
            "median_distinct_tokens": float(g["distinct_tokens"].median()),
            "mean_token_entropy_bits": float(g["token_entropy_bits"].mean()),
            "mean_context_free_r2": float(g["context_free_r2"].mean()),
            "context_free_proxy_fraction": float(g["context_free_proxy"].astype(bool).mean()),
        }
        if ratings_csv is not None:
            proxy = g["context_free_proxy"].astype(bool).to_numpy()
            human = g["context_free"].to_numpy() == 1
            yes = g["rating"].to_numpy() == "yes"
            row |= {
                "interpretable_fraction": float(yes.mean()),
                "context_free_fraction": float(human.mean()),
                "context_free_agreement": float((proxy == human).mean()),
                "context_free_kappa": cohen_kappa(proxy, human),
                "entropy_auc": _auc_lower(g["token_entropy_bits"].to_numpy(), yes),
            }
        rows.append(row)
    return pd.DataFrame(rows)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two boolean ratings of the same items (NaN when chance is 1)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    po = float((a == b).mean())
    pe = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    return math.nan if pe >= 1 else float((po - pe) / (1 - pe))


def _auc_lower(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive < score of a negative), ties 1/2; NaN without both groups."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff < 0) + 0.5 * (diff == 0)).mean())
