"""Sparse probing, as SAEBench's `sparse_probing` eval defines it.

For labelled texts: every text is run through the model (BOS prepended, at most
`max_tokens` tokens), the activations of one hook are mean-pooled over the text's counted
positions (`tcspec.data.positions`), and so are the dictionary's latents z = encode(x) at each
position. For each class c, a balanced one-vs-rest task (seeded draws of `n_train` and
`n_test` texts of each side); on it:

- the reference: a logistic probe on the raw pooled activations [d_model];
- for each k: the k latents with the largest |mean(z | c) - mean(z | not c)| on the training
  texts, and a logistic probe on those k alone.

Probes: L2-regularised logistic regression (weight `L2`) on standardised features (train
mean and std), fit to convergence by Newton's method in float64; the score is test accuracy.
Differences from SAEBench: probes are fit here in torch (SAEBench uses scikit-learn's
LogisticRegression) and the latents are ranked by the absolute mean difference.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tcspec.data.positions import keep_mask

L2 = 1e-3
"""Weight of the probes' L2 penalty (on the mean loss)."""


@dataclass(frozen=True)
class BinaryTask:
    """One class against the rest: indices of texts and their 0/1 labels."""

    label: str
    train: Tensor  # [2 n_train] long
    train_y: Tensor  # [2 n_train] float
    test: Tensor  # [2 n_test] long
    test_y: Tensor


def binary_tasks(labels: Sequence[str], classes: Sequence[str] | None, n_train: int,
                 n_test: int, seed: int) -> tuple[list[BinaryTask], list[str]]:  # fmt: skip
    """Balanced one-vs-rest tasks for `classes` (None: every label); returns the tasks and
    the classes left out for having fewer than n_train + n_test texts."""
    rng = random.Random(seed)
    names = sorted(set(labels)) if classes is None else list(classes)
    tasks, skipped = [], []
    for c in names:
        pos = [i for i, y in enumerate(labels) if y == c]
        neg = [i for i, y in enumerate(labels) if y != c]
        if min(len(pos), len(neg)) < n_train + n_test:
            skipped.append(c)
            continue
        pos, neg = rng.sample(pos, n_train + n_test), rng.sample(neg, n_train + n_test)
        train, test = pos[:n_train] + neg[:n_train], pos[n_train:] + neg[n_train:]
        ys = [1.0] * n_train + [0.0] * n_train, [1.0] * n_test + [0.0] * n_test
        tasks.append(BinaryTask(c, torch.tensor(train), torch.tensor(ys[0]),
                                torch.tensor(test), torch.tensor(ys[1])))  # fmt: skip
    return tasks, skipped


@torch.inference_mode()
def pooled(model, coder, texts: Sequence[str], hook: str, max_tokens: int,
           exclude: Sequence[int], batch: int = 16) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mean-pooled activations of `hook` [n, d] and of `coder`'s latents [n, d_sae] over
    each text's counted positions among its first `max_tokens` (at most the model's
    n_ctx) tokens (float64 on the CPU)."""
    from tcspec.models.hooks import split_name

    layer = split_name(hook)[0] if split_name(hook) else None
    max_tokens = min(max_tokens, model.cfg.n_ctx)
    raws, latents = [], []
    for start in range(0, len(texts), batch):
        ids = [model.tokenizer(t)["input_ids"][:max_tokens] for t in texts[start : start + batch]]
        width = max(len(i) for i in ids)
        tokens = torch.zeros(len(ids), width, dtype=torch.long)  # [b, T], 0-padded
        inside = torch.zeros(len(ids), width, dtype=torch.bool)
        for r, i in enumerate(ids):
            tokens[r, : len(i)], inside[r, : len(i)] = torch.tensor(i), True
        tokens = tokens.to(model.cfg.device)
        _, cache = model.run_with_cache(
            tokens, names_filter=[hook], stop_at_layer=None if layer is None else layer + 1
        )
        x = cache[hook]  # [b, T, d]
        keep = (keep_mask(tokens, exclude) & inside.to(tokens.device)).unsqueeze(-1)  # [b, T, 1]
        count = keep.sum(1).clamp_min(1)  # [b, 1]
        raws.append(((x * keep).sum(1) / count).double().cpu())
        latents.append(((coder.encode(x) * keep).sum(1) / count).double().cpu())
    return torch.cat(raws), torch.cat(latents)


def probe_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """Test accuracy of an L2 logistic probe fit on standardised training features."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    a = torch.cat([(x_train - mean) / std, torch.ones(len(x_train), 1, dtype=torch.float64)], 1)
    b = torch.cat([(x_test - mean) / std, torch.ones(len(x_test), 1, dtype=torch.float64)], 1)
    w = fit_logistic(a, y_train.double())
    return ((b @ w > 0).double() == y_test.double()).double().mean().item()


def fit_logistic(a: Tensor, y: Tensor, iters: int = 50) -> Tensor:
    """Weights w [f] (the last column of `a` [n, f] is the bias's, unpenalised) minimising
    mean BCE(a w, y) + L2 ||w||^2 by Newton's method (the loss is strictly convex)."""
    n, f = a.shape
    penalty = torch.full((f,), 2 * L2, dtype=torch.float64)
    penalty[-1] = 0.0
    w = torch.zeros(f, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(a @ w)  # [n]
        grad = a.T @ (p - y) / n + penalty * w  # [f]
        hess = (a.T * (p * (1 - p))) @ a / n + torch.diag(penalty + 1e-10)  # [f, f]
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if step.abs().max() < 1e-9:
            break
    return w


def top_latents(z_train: Tensor, y_train: Tensor, k: int) -> Tensor:
    """The k latents whose mean differs most between the two sides (absolute)."""
    diff = z_train[y_train > 0].mean(0) - z_train[y_train == 0].mean(0)  # [d_sae]
    return diff.abs().topk(min(k, len(diff))).indices


def sparse_probing(raw: Tensor, latents: Tensor, tasks: list[BinaryTask],
                   ks: Sequence[int]) -> list[dict]:  # fmt: skip
    """Rows {class, probe: "raw" | "sparse", k (None for raw), accuracy} of every task."""
    rows = []
    for t in tasks:
        acc = probe_accuracy(raw[t.train], t.train_y, raw[t.test], t.test_y)
        rows.append({"class": t.label, "probe": "raw", "k": None, "accuracy": acc})
        for k in ks:
            idx = top_latents(latents[t.train], t.train_y, k)
            z_tr, z_te = latents[t.train][:, idx], latents[t.test][:, idx]
            acc = probe_accuracy(z_tr, t.train_y, z_te, t.test_y)
            rows.append({"class": t.label, "probe": "sparse", "k": k, "accuracy": acc})
    return rows


def load_labelled(data) -> tuple[list[str], list[str]]:
    """(texts, labels) of a `ProbeDataSpec`, through `datasets.load_dataset` (integer
    ClassLabel values become their names)."""
    import datasets

    files = [str(f) for f in data.data_files] if data.data_files else None
    ds = datasets.load_dataset(data.path, name=data.config, split=data.split, data_files=files)
    for col in (data.text_column, data.label_column):
        if col not in ds.column_names:
            raise ValueError(f"dataset `{data.path}` has no column `{col}`: {ds.column_names}")
    feature = ds.features[data.label_column]
    names = getattr(feature, "names", None)
    labels = [names[v] if names else str(v) for v in ds[data.label_column]]
    return list(ds[data.text_column]), labels
