"""The scheduler's resources of every task and pass: sizes from the plan's configs, costs
from `tcspec.plan.estimates`, rates from the machine side's `tcspec.compute.throughput.Rates`.

Every task's resources hold ``mem_mb`` and ``runtime`` (minutes: what Snakemake asks the
scheduler for, margins included), ``seconds`` (the estimate), ``gpu`` and ``threads``; a
train or CLT task's also ``flops`` (its training FLOPs) and ``params``, a coder task's its
``shape`` (d_in, d_out, d_sae, for the jobs that encode with it), a cache's and a stream
pass's ``disk_mb``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tcspec.compute.throughput import Rates
from tcspec.plan import budget, estimates
from tcspec.plan.configs import CLTMemberConfig, TrainedMemberConfig
from tcspec.plan.estimates import MB, Cost, ModelSize
from tcspec.plan.task import THREADS

IMPORTED_EXPANSION = 64
"""Features per model dimension an imported dictionary is sized as (its files are not read
when planning)."""
SMALL_BYTES = 1000 * estimates.MB
"""Memory of a job that runs no model: tables, the study, an export."""


@dataclass(frozen=True)
class Sizer:
    """What sizes a plan's jobs besides their own configs."""

    size: ModelSize
    rates: Rates
    gpu: int
    """GPUs of a job that runs the model (0 for the toy pipeline or ``device: cpu``)."""
    train_tokens: int
    """The spec's training tokens (an activation cache holds them)."""
    cache_bytes: int = 4
    """Bytes of a cached activation value (``acts.dtype``)."""
    stream_shape: budget.StreamShape | None = None
    """The buffer and forward of a stream pass (None for a cache spec)."""

    def request(self, stage: str, cost: Cost, gpu: int, precision: str = "fp32", **extra) -> dict:
        """``gpu``, ``threads`` (the stage's), the requests and estimate of ``cost`` (its
        dictionary work in ``precision``), and ``extra``."""
        threads = THREADS.get(stage, 1)
        req = estimates.request(cost, self.size, self.rates, gpu, threads, precision)
        return {"gpu": gpu, "threads": threads, **req, **extra}

    def task_resources(self, plan, task) -> dict:
        """The resources of one task of ``plan``."""
        c, stage, m = task.config, task.stage, self.size
        if stage == "model":
            if c.model.kind == "toy":
                return self.request(stage, estimates.toy_model_cost(m, *toy_steps(c.model)), 0)
            return self.request(stage, estimates.load_model_cost(m), 0)
        if stage == "tokens":
            return self.request(stage, estimates.tokens_cost(_tokens(c.data)), 0)
        if stage == "acts":
            disk = self.train_tokens * sum(c.hooks.values()) * self.cache_bytes
            blocks = 1 + max(int(h.split(".")[1]) for h in c.hooks)
            cost = estimates.acts_cost(m, self.train_tokens, blocks, disk, c.acts.batch_contexts)
            return self.request(stage, cost, self.gpu, disk_mb=disk // MB + 1)
        if stage in ("train", "clt", "import"):
            return self.coder_resources(stage, c)
        if stage == "evaluate":
            return self.request(stage, self.evaluate_cost(plan, [c]), self.gpu)
        if stage == "interp":
            shape = coder_shape(plan.get(c.coder.stage, c.coder.id).config, m.d_model)
            return self.request(stage, estimates.interp_cost(m, c.eval_tokens, *shape), self.gpu)
        if stage == "circuits":
            shapes = [coder_shape(plan.get(r.stage, r.id).config, m.d_model) for r in c.coders]
            held = sum(4 * f * (i + o) for i, o, f in shapes)
            cost = estimates.circuit_cost(m, _prompts(c.circuit), held)
            return self.request(stage, cost, self.gpu)
        return self.request(stage, estimates.small_cost(SMALL_BYTES), 0)  # study, export, tables

    def coder_resources(self, stage: str, c) -> dict:
        """A train task (as a pass of one), a CLT or an import."""
        shape = coder_shape(c, self.size.d_model)
        if stage == "import":
            return self.request(stage, estimates.small_cost(4000 * MB), 0, shape=shape)
        if stage == "train":
            cost, params = self.train_pass([c]), budget.n_params(c.coder())
        else:
            cost, params = self.clt_cost(c)
        return self.request(stage, cost, self.gpu, c.opts.precision, flops=cost.dict_flops,
                            params=params, shape=shape)  # fmt: skip

    # ---- training
    def train_pass(self, configs: list) -> Cost:
        """A training pass of ``configs`` (TrainedMemberConfigs): over the cache, the
        members' memory and the cache read once; from a stream, the stream job's memory
        (``budget.estimate_memory``) and the model's forward over the tokens."""
        coders = [c.coder() for c in configs]
        c0 = configs[0]
        B, tokens = c0.opts.batch_size, c0.steps * c0.opts.batch_size
        flops = sum(estimates.train_flops(tokens, c.d_in, c.d_out, c.d_sae) for c in configs)
        widths = {h: w for c in coders for h, w in ((c.in_hook, c.d_in), (c.out_hook, c.d_out))}
        if c0.stream is not None and self.stream_shape is not None:
            memory = budget.estimate_memory(
                coders, widths, replace(self.stream_shape, batch_size=B)
            )
            forward = self.size.forward_flops(tokens, max(c.layer for c in configs) + 1)
            return Cost(mem_bytes=memory.total, model_flops=forward, dict_flops=flops)
        # the cache reader holds a few batches ahead: 4, as buffer rows
        shape = budget.StreamShape(batch_size=B, buffer_tokens=4 * B, rows_per_forward=0)
        memory = budget.estimate_memory(coders, widths, shape)
        read = tokens * (c0.d_in + c0.d_out) * self.cache_bytes  # one hook pair a pass
        return Cost(mem_bytes=memory.total, dict_flops=flops, io_bytes=read)

    def train_pass_resources(self, configs: list) -> dict:
        """A training pass's resources; a stream pass's disk holds its checkpoint (weights
        and Adam's moments) and the weights."""
        extra = {}
        if configs[0].stream is not None:
            params = sum(budget.n_params(c.coder()) for c in configs)
            extra["disk_mb"] = params * 16 // MB + 1
        slowest = min({c.opts.precision for c in configs},
                      key=lambda p: self.rates.flops_per_s(self.gpu, p))  # fmt: skip
        return self.request("train", self.train_pass(configs), self.gpu, slowest, **extra)

    def clt_cost(self, c: CLTMemberConfig) -> tuple[Cost, int]:
        """A CLT's training (``tcspec.plan.clt_cost``) and, from a stream, the model's forward
        and its buffer of the CLT's 2 L hooks; and its parameters."""
        from tcspec.plan import clt_shape
        from tcspec.plan.clt_cost import clt_cost

        cost = clt_cost(clt_shape(c), c.opts.batch_size, c.steps, c.opts.precision)
        tokens, L = c.steps * c.opts.batch_size, len(c.layers)
        if c.stream is None:
            read = tokens * 2 * L * c.d_model * self.cache_bytes
            return Cost(cost.train_bytes, dict_flops=cost.flops, io_bytes=read), cost.params
        rows = c.stream.buffer_tokens + c.stream.batch_contexts * self.size.context
        held = cost.train_bytes + self.size.weight_bytes + rows * 2 * L * c.d_model * 4
        forward = self.size.forward_flops(tokens, max(c.layers) + 1)
        return Cost(held, model_flops=forward, dict_flops=cost.flops), cost.params

    # ---- evaluation
    def evaluate_cost(self, plan, configs: list) -> Cost:
        """An evaluation pass of ``configs`` (EvaluateConfigs), each coder sized by the
        train, CLT or import task it names."""
        shapes = [
            coder_shape(plan.get(r.stage, r.id).config, self.size.d_model)
            for c in configs
            for r in c.coders
        ]
        c0 = configs[0]
        return estimates.evaluate_cost(self.size, c0.eval_tokens, c0.batch_contexts, shapes)

    def evaluate_pass_resources(self, plan, configs: list) -> dict:
        return self.request("evaluate", self.evaluate_cost(plan, configs), self.gpu)


def coder_shape(config, d_model: int) -> tuple[int, int, int]:
    """(d_in, d_out, d_sae) of what a train, CLT or import task holds, as its encode and
    decode cost: a CLT of L layers and P = L (L + 1) / 2 decoder blocks counts as
    (d_model, d_model P / L, L d_sae)."""
    if isinstance(config, TrainedMemberConfig):
        return config.d_in, config.d_out, config.d_sae
    if isinstance(config, CLTMemberConfig):
        L = len(config.layers)
        return config.d_model, config.d_model * (L + 1) // 2, L * config.d_sae
    return d_model, d_model, IMPORTED_EXPANSION * d_model


def toy_steps(model) -> tuple[int, int]:
    """(steps, contexts a step) the toy model trains for."""
    from tcspec.models.recipes import get_recipe

    training = get_recipe(model.recipe).training
    return model.steps or training.steps, training.batch


def _tokens(data) -> int:
    return data.train_tokens + data.eval_tokens


def _prompts(circuit) -> int:
    """Prompts a circuit study runs: its count, or its list's length."""
    return circuit.prompts if isinstance(circuit.prompts, int) else len(circuit.prompt_list())
