"""clt stage: train one cross-layer transcoder (one sweep point over all its layers) with
`tcspec.training.clt.train_clt`, its own loop, from the activation cache or from a stream of
model forwards (every layer's input and output hook from one pass, through the shuffle
buffer of `tcspec.data.stream.ActivationStream`); resumable from the task's checkpoint folder
(a stream's position and buffer provenance in the checkpoint). The task's folder holds the
CLT (`tcspec.dictionaries.clt_io.save`) and training.json."""

from __future__ import annotations

import shutil

from tcspec import atomic, layout
from tcspec.vocab import TRAINING_FILE

CHECKPOINT = "clt.ckpt"


def train_config(c):
    """The `tcspec.training.clt.CLTTrainConfig` of a CLT train task's config."""
    from tcspec.dictionaries.clt import CLTLoss
    from tcspec.training.clt import CLTTrainConfig

    o = c.opts
    loss = CLTLoss(
        penalty=o.penalty, coef=o.l1, tanh_scale=o.tanh_scale, pre_act_coef=o.pre_act_coef,
        bandwidth=o.jumprelu_bandwidth,
    )  # fmt: skip
    return CLTTrainConfig(
        steps=c.steps, batch_size=o.batch_size, lr=o.lr, lr_warmup_steps=o.lr_warmup_steps,
        lr_decay=o.lr_decay, lr_decay_start=o.lr_decay_start, adam_betas=o.adam_betas,
        loss=loss, coef_warmup_steps=o.l1_warmup_steps, seed=o.seed,
        init_threshold=o.jumprelu_init_threshold, init_b_dec_from_mean=o.init_bias_from_mean,
        checkpoint_every=o.checkpoint_every, precision=o.precision,
    )  # fmt: skip


def hooks(c) -> list[str]:
    """Every hook a CLT task with config `c` reads: each layer's input and output."""
    from tcspec.plan import clt_shape

    shape = clt_shape(c)
    return sorted(shape.in_names + shape.out_names)


def reads(task, results) -> dict:
    """What a CLT task reads of its activation cache: its layers' hooks only."""
    from tcspec.tasks import acts

    return {"acts": acts.read_by(hooks(task.config))} if "acts" in task.deps else {}


def run(ctx) -> dict:
    from tcspec.compute import resolve_precision
    from tcspec.data.cache import ActivationReader
    from tcspec.dictionaries import clt_io
    from tcspec.plan import clt_shape
    from tcspec.tasks.train import activation_stream
    from tcspec.training.clt import train_clt

    c = ctx.config
    shape, train = clt_shape(c), train_config(c)
    keys = hooks(c)
    if c.stream is not None:  # its state goes in the checkpoint
        source = activation_stream(ctx, c, keys)
    else:
        reader = ActivationReader(
            ctx.dep_dir("acts") / layout.CACHE, keys, batch_size=train.batch_size,
            seed=c.data_seed, device=ctx.device,
        )  # fmt: skip
        source = reader.iter_batches
    ctx.checkpoints.mkdir(parents=True, exist_ok=True)
    result = train_clt(shape, train, source, ctx.checkpoints / CHECKPOINT, ctx.device)
    last = result.curve[-1]
    training = {
        "steps": c.steps,
        "tokens": c.steps * train.batch_size,
        "tokens_per_s": result.tokens_per_s,
        "wall_s": result.wall_s,
        "fvu": last["fvu"],
        "l0": last["l0"],
        "precision": resolve_precision(train.precision, ctx.device),
        "curve": result.curve,
    }
    clt_io.save(result.clt, ctx.out)
    atomic.write_json(ctx.out / TRAINING_FILE, training)
    shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    return {k: v for k, v in training.items() if k != "curve"}
