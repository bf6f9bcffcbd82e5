"""Train a tiny TransformerLens language model from scratch on the offline toy corpus.

A recipe names a corpus mix; ``train_toy_model`` trains a tokenizer and a
``HookedTransformer`` (LayerNorm, GELU, learned positions initialised to sine/cosine codes)
on it, deterministically from the seed, measures what makes the model worth studying, and
writes a model folder:

    model.json            kind "toy", recipe, seed, cfg, bos_token_id, hook_names, metrics,
                          task_layer, versions
    weights.safetensors   the raw (unprocessed) HookedTransformer state dict
    tokenizer.json, tokenizer_config.json

Two choices make the small budget enough. The learned position embedding starts as
sine/cosine codes, so heads that look a fixed distance back are quick to learn. The
embeddings of the 100 year tokens ``"00"``..``"99"`` are sine/cosine codes of their value in a
random rotation, kept fixed through training (``number_codes="fixed"``; ``"init"`` only
starts them there, ``"none"`` leaves them random). A web-scale model learns the order of
numbers from its data; this one cannot in a million tokens, and then its greater-than
computation does not carry over to the held-out start years (prob diff about 0.4-0.65 on
held-out against 0.65-0.9 on training start years; with fixed codes both about 0.87).

Metrics (``model.json["metrics"]``):

- ``greater_than_prob_diff``: the paper's metric on start years held out of training;
- ``text_loss`` / ``unigram_text_loss``: next-token loss (nats) on held-out pydoc text, and
  the loss of the training text's add-one unigram distribution on the same tokens;
- ``greater_than_prob_diff_train_yy`` / ``_all_yy``: the same on training start years and
  on all of 02..98;
- ``mlp_ablation``: per layer, the text-loss increase and the greater-than metrics with
  that layer's MLP output zeroed. ``task_layer`` is the layer whose ablation lowers the
  greater-than metric over all start years most.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from tcspec.atomic import atomic_write, write_bytes, write_json
from tcspec.checksums import file_checksum
from tcspec.models.corpus import (
    held_out_yy,
    iter_documents,
    toy_documents,
    train_yy,
)
from tcspec.models.greater_than import PAPER_YY, greater_than_score, year_token_ids
from tcspec.models.hooks import full_name
from tcspec.models.load import (
    fired_hook_names,
    library_versions,
    quiet_deprecation,
)
from tcspec.models.recipes import RECIPES, ToyRecipe, ToyTraining, get_recipe  # noqa: F401
from tcspec.models.tokenizer import recipe_tokenizer, save_tokenizer
from tcspec.vocab import MODEL_JSON, WEIGHTS_FILE

# ----------------------------------------------------------------------------- data


def pack_contexts(
    tokenizer: PreTrainedTokenizerFast, docs: Iterator[str], n_contexts: int, n_ctx: int
) -> Tensor:
    """Pack documents into ``n_contexts`` rows of ``n_ctx`` tokens: LongTensor[n, n_ctx].

    Documents are joined with BOS between them; every row starts with BOS, so a document
    cut at a row boundary continues after a fresh BOS (as in the paper's data).
    """
    bos = tokenizer.bos_token_id
    need = n_contexts * (n_ctx - 1)
    stream: list[int] = []
    while len(stream) < need:
        batch = [doc for _, doc in zip(range(256), docs, strict=False)]
        if not batch:
            break
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids + [bos])
    n = min(n_contexts, len(stream) // (n_ctx - 1))
    body = torch.tensor(stream[: n * (n_ctx - 1)], dtype=torch.long).view(n, n_ctx - 1)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), body], dim=1)  # [n, n_ctx]


def unigram_log_probs(contexts: Tensor, d_vocab: int) -> Tensor:
    """Add-one smoothed log unigram distribution of the targets of ``contexts``: [d_vocab]."""
    counts = torch.bincount(contexts[:, 1:].flatten(), minlength=d_vocab).double() + 1.0
    return (counts / counts.sum()).log().float()


# ----------------------------------------------------------------------------- metrics


@torch.no_grad()
def mean_loss(model: HookedTransformer, contexts: Tensor, fwd_hooks=(), batch: int = 32) -> float:
    """Mean next-token loss (nats) of ``model`` over ``contexts`` [n, n_ctx]."""
    total, count = 0.0, 0
    for i in range(0, len(contexts), batch):
        tokens = contexts[i : i + batch].to(model.cfg.device)
        loss = model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=list(fwd_hooks)
        )  # [b, n_ctx - 1]
        total, count = total + float(loss.sum()), count + loss.numel()
    return total / count


def _zero(act: Tensor, hook: Any) -> Tensor:
    return torch.zeros_like(act)


@torch.no_grad()
def toy_metrics(
    model: HookedTransformer, eval_contexts: Tensor, unigram: Tensor
) -> tuple[dict[str, Any], int]:
    """The metrics of ``model.json`` and the task layer (see the module docstring)."""
    text_loss = mean_loss(model, eval_contexts)
    metrics: dict[str, Any] = {
        "greater_than_prob_diff": greater_than_score(model, held_out_yy()),
        "greater_than_prob_diff_train_yy": greater_than_score(model, train_yy()),
        "greater_than_prob_diff_all_yy": greater_than_score(model, PAPER_YY),
        "greater_than_yy": held_out_yy(),
        "text_loss": text_loss,
        "unigram_text_loss": float(-unigram[eval_contexts[:, 1:]].mean()),
        "eval_text_tokens": int(eval_contexts[:, 1:].numel()),
        "mlp_ablation": {},
    }
    for layer in range(model.cfg.n_layers):
        hooks = [(full_name(layer, "hook_mlp_out"), _zero)]
        metrics["mlp_ablation"][str(layer)] = {
            "text_loss_increase": mean_loss(model, eval_contexts, hooks) - text_loss,
            "greater_than_prob_diff": greater_than_score(model, held_out_yy(), fwd_hooks=hooks),
            "greater_than_prob_diff_all_yy": greater_than_score(model, PAPER_YY, fwd_hooks=hooks),
        }
    # the task layer: its MLP's ablation lowers the metric over all start years (02..98) most
    task_layer = min(
        range(model.cfg.n_layers),
        key=lambda layer: metrics["mlp_ablation"][str(layer)]["greater_than_prob_diff_all_yy"],
    )
    return metrics, task_layer


# ----------------------------------------------------------------------------- training


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def sinusoidal_positions(n_ctx: int, d_model: int) -> Tensor:
    """Sine/cosine position codes [n_ctx, d_model] (geometric wavelengths up to 10,000).

    Used to initialise the learned position embedding ``W_pos``: relative offsets are then
    linear maps of the codes, so heads that attend a fixed distance back are quick to learn.
    """
    if d_model % 2:
        raise ValueError(f"sine/cosine codes need an even d_model, got {d_model}")
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]  # [n_ctx, 1]
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # [d/2]
    codes = torch.zeros(n_ctx, d_model)
    codes[:, 0::2] = torch.sin(pos * freq)
    codes[:, 1::2] = torch.cos(pos * freq)
    return codes


def _write_atomic(out_dir: Path, model: HookedTransformer, tokenizer, meta: dict) -> None:
    """Weights and tokenizer first, then ``model.json`` last (each file atomically)."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    meta["weights_xxh3"] = file_checksum(out_dir / WEIGHTS_FILE)  # checked on every load
    with tempfile.TemporaryDirectory() as tmp:
        for path in save_tokenizer(tokenizer, Path(tmp)):
            write_bytes(out_dir / path.name, path.read_bytes())
    write_json(out_dir / MODEL_JSON, meta)


@dataclass(frozen=True)
class _Corpus:
    train: Tensor  # [steps * batch, n_ctx] training contexts
    eval_contexts: Tensor  # [n, n_ctx] held-out pydoc text
    unigram: Tensor  # [d_vocab] add-one log unigram of the training text


def _corpus(tokenizer, rec: ToyRecipe, seed: int, n_train: int, n_ctx: int) -> _Corpus:
    mix = dict(task_fraction=rec.task_fraction, family_weights=rec.family_weights)
    train = pack_contexts(tokenizer, iter_documents(seed, **mix), n_train, n_ctx)
    if len(train) < n_train:
        raise ValueError(f"corpus too small for {n_train} contexts")
    text_docs = iter(toy_documents(seed, split="train", task_fraction=0.0))
    unigram = unigram_log_probs(pack_contexts(tokenizer, text_docs, 10**9, n_ctx), len(tokenizer))
    eval_docs = iter(toy_documents(seed, split="eval", task_fraction=0.0))
    return _Corpus(train, pack_contexts(tokenizer, eval_docs, 10**9, n_ctx), unigram)


def _init_model(
    arch: dict, seed: int, tokenizer, sinusoidal_init: bool, number_codes: str
) -> tuple[HookedTransformer, Tensor | None]:
    """The untrained model, and the fixed year-token codes (None with ``number_codes="none"``);
    draws from torch's global generator, seeded here, in a fixed order."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        **arch, positional_embedding_type="standard", seed=seed, init_weights=True, device="cpu"
    )
    with quiet_deprecation():
        model = HookedTransformer(cfg, tokenizer=tokenizer)
    n_ctx, d_model = arch["n_ctx"], arch["d_model"]
    if sinusoidal_init:
        with torch.no_grad():
            codes = sinusoidal_positions(n_ctx, d_model)  # [n_ctx, d_model]
            model.W_pos.copy_(codes * model.W_E.std() / codes.std())
    if number_codes == "none":
        return model, None
    with torch.no_grad():
        rotation = torch.linalg.qr(torch.randn(d_model, d_model))[0]  # [d_model, d_model]
        codes = sinusoidal_positions(100, d_model) @ rotation  # [100, d_model]
        year_codes = codes * model.W_E.std() / codes.std()
        model.W_E[year_token_ids(tokenizer)] = year_codes
    return model, year_codes


def _train(
    model: HookedTransformer,
    train: Tensor,
    opt_cfg: ToyTraining,
    fixed: tuple[Tensor, Tensor] | None,
    bar: tqdm,
) -> float:
    """Optimise ``model`` on ``train`` [steps * batch, n_ctx]; ``fixed`` = (year token ids,
    their codes) to hold in place after every step. Returns the last step's loss.

    Runs with torch's deterministic algorithms: on more than one CPU thread a default
    kernel of this loop accumulates in an order that varies from run to run (measured: two
    2-thread runs of 60 steps gave different weights; with them, the same bytes, and 150
    steps took 37.7 s against 35.8 s)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_steps(model, train, opt_cfg, fixed, bar)
    finally:
        torch.use_deterministic_algorithms(was)


def _train_steps(model, train: Tensor, opt_cfg: ToyTraining, fixed, bar: tqdm) -> float:
    steps, batch = opt_cfg.steps, opt_cfg.batch
    opt = torch.optim.AdamW(
        model.parameters(), lr=opt_cfg.lr, betas=(0.9, 0.98), weight_decay=opt_cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, opt_cfg.warmup))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in bar:
        tokens = train[step * batch : (step + 1) * batch]  # [batch, n_ctx]
        loss = model(tokens, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if fixed is not None:
            with torch.no_grad():
                model.W_E[fixed[0]] = fixed[1]
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return loss.item()


def train_toy_model(
    out_dir: Path,
    *,
    recipe: str = "greater_than_mix",
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    d_mlp: int = 512,
    n_ctx: int = 128,
    steps: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    weight_decay: float | None = None,
    sinusoidal_init: bool = True,
    number_codes: Literal["none", "init", "fixed"] = "fixed",
    progress: bool = True,
) -> dict[str, Any]:
    """Train a toy model and write its folder; returns the ``model.json`` contents.

    Deterministic in ``seed`` for a fixed machine and thread count. ``steps * batch``
    contexts of ``n_ctx`` tokens are drawn fresh from the recipe's corpus stream (the pydoc
    text repeats; task sentences do not). The optimiser settings default to the recipe's
    ``training`` (``ToyTraining``); gradients are clipped to norm 1. ``sinusoidal_init`` and
    ``number_codes``: see the module docstring. ``bench/toy_model.py`` times it.
    """
    rec = get_recipe(recipe)
    given = dict(steps=steps, batch=batch, lr=lr, warmup=warmup, weight_decay=weight_decay)
    opt_cfg = replace(rec.training, **{k: v for k, v in given.items() if v is not None})
    start = time.perf_counter()
    tokenizer = recipe_tokenizer(recipe, seed)
    data = _corpus(tokenizer, rec, seed, opt_cfg.steps * opt_cfg.batch, n_ctx)
    arch = dict(
        n_layers=n_layers, d_model=d_model, d_mlp=d_mlp, d_head=d_model // n_heads,
        n_heads=n_heads, d_vocab=len(tokenizer), n_ctx=n_ctx, act_fn="gelu",
        normalization_type="LN",
    )  # fmt: skip
    model, year_codes = _init_model(arch, seed, tokenizer, sinusoidal_init, number_codes)
    fixed = (year_token_ids(tokenizer), year_codes) if number_codes == "fixed" else None
    setup_seconds = time.perf_counter() - start
    bar = tqdm(range(opt_cfg.steps), desc=f"toy {recipe}", disable=not progress)
    final_loss = _train(model, data.train, opt_cfg, fixed, bar)
    train_seconds = time.perf_counter() - start - setup_seconds

    head = {"kind": "toy", "recipe": recipe, "seed": seed}
    head["cfg"] = arch | {"parallel_attn_mlp": False}
    training = (
        asdict(opt_cfg)
        | dict(sinusoidal_init=sinusoidal_init, number_codes=number_codes)
        | {"tokens": opt_cfg.steps * opt_cfg.batch * n_ctx}
    )
    seconds = {"setup_seconds": setup_seconds, "train_seconds": train_seconds}
    meta = _model_json(model, tokenizer, data, final_loss, head, training, seconds, start)
    _write_atomic(Path(out_dir), model, tokenizer, meta)
    return meta


def _model_json(
    model: HookedTransformer,
    tokenizer,
    data: _Corpus,
    final_loss: float,
    head: dict,
    training: dict,
    seconds: dict,
    start: float,
) -> dict[str, Any]:
    """``model.json``'s contents for the trained ``model``: ``head`` (kind, recipe, seed,
    cfg), the hooks that fire, the ``training`` settings, the metrics measured now on the
    held-out ``data``, and the ``seconds`` of setup and training with the total since
    ``start``. Turns the model's ``hook_mlp_in`` on (so that it fires) after measuring."""
    metrics, task_layer = toy_metrics(model, data.eval_contexts, data.unigram)
    metrics["train_loss_final"] = final_loss
    model.set_use_hook_mlp_in(True)
    return head | {
        "bos_token_id": tokenizer.bos_token_id,
        "hook_names": fired_hook_names(model),
        "training": training,
        "metrics": metrics,
        "task_layer": task_layer,
        "timing": seconds | {"total_seconds": time.perf_counter() - start},
        "versions": library_versions(),
    }
