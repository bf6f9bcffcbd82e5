"""The scheduler's resources of every task and pass: sizes from the plan's configs, costs
from `tcspec.plan.cost` and `tcspec.plan.stage_costs`, requests from `tcspec.plan.estimate`,
rates from the machine side's `tcspec.compute.throughput.Rates`.

Every task's resources hold ``mem_mb`` and ``runtime`` (minutes: what Snakemake asks the
scheduler for, margins included), ``seconds`` (the estimate), ``gpu`` and ``threads``; a
train or CLT task's also ``flops`` (its training FLOPs) and ``params``, a coder task's its
``shape`` (d_in, d_out, d_sae, for the jobs that encode with it), a cache's and a stream
pass's ``disk_mb``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcspec.compute.throughput import Rates
from tcspec.plan import cost, estimate, stage_costs
from tcspec.plan.configs import CLTMemberConfig
from tcspec.plan.cost import ModelSize
from tcspec.plan.estimate import Cost
from tcspec.plan.stages import stage as stage_row


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
    stream_shape: cost.StreamShape | None = None
    """The buffer and forward of a stream pass (None for a cache spec)."""

    def request(self, stage: str, job: Cost, gpu: int, precision: str = "fp32", **extra) -> dict:
        """``gpu``, ``threads`` (the stage's), the requests and estimate of ``job`` (its
        dictionary work in ``precision``), and ``extra``."""
        threads = stage_row(stage).threads
        req = estimate.request(job, self.size, self.rates, gpu, threads, precision)
        return {"gpu": gpu, "threads": threads, **req, **extra}

    def task_resources(self, plan, task) -> dict:
        """The resources of one task of ``plan``."""
        c, stage, m = task.config, task.stage, self.size
        if stage == "model":
            if c.model.kind == "toy":
                return self.request(stage, stage_costs.toy_model_cost(m, *toy_steps(c.model)), 0)
            return self.request(stage, stage_costs.load_model_cost(m), 0)
        if stage == "tokens":
            return self.request(stage, stage_costs.tokens_cost(_tokens(c.data)), 0)
        if stage == "acts":
            disk = stage_costs.cache_disk_bytes(
                self.train_tokens, sum(c.hooks.values()), self.cache_bytes
            )
            blocks = 1 + max(int(h.split(".")[1]) for h in c.hooks)
            job = stage_costs.acts_cost(m, self.train_tokens, blocks, disk, c.acts.batch_contexts)
            return self.request(stage, job, self.gpu, disk_mb=estimate.disk_mb(disk))
        if stage in ("train", "clt", "import"):
            return self.coder_resources(stage, c)
        if stage == "evaluate":
            return self.request(stage, self.evaluate_cost(plan, [c]), self.gpu)
        if stage == "interp":
            shape = plan.get(c.coder.stage, c.coder.id).config.cost_shape(m.d_model)
            return self.request(stage, stage_costs.interp_cost(m, c.eval_tokens, *shape), self.gpu)
        if stage == "probe":
            shape = plan.get(c.coder.stage, c.coder.id).config.cost_shape(m.d_model)
            classes = len(c.classes) if c.classes else stage_costs.PROBE_CLASSES
            texts = classes * (c.train_per_class + c.test_per_class)
            return self.request(
                stage, stage_costs.probe_cost(m, texts, c.max_tokens, *shape), self.gpu
            )
        if stage == "circuits":
            shapes = [plan.get(r.stage, r.id).config.cost_shape(m.d_model) for r in c.coders]
            job = stage_costs.circuit_cost(m, _prompts(c.circuit), shapes)
            return self.request(stage, job, self.gpu)
        return self.request(stage, stage_costs.small_cost(), 0)  # study, export, tables

    def coder_resources(self, stage: str, c) -> dict:
        """A train task (as a pass of one), a CLT or an import."""
        shape = c.cost_shape(self.size.d_model)
        if stage == "import":
            return self.request(
                stage, stage_costs.small_cost(stage_costs.IMPORT_BYTES), 0, shape=shape
            )
        if stage == "train":
            job, params = self.train_pass([c]), cost.n_params(c.coder())
        else:
            job, params = self.clt_cost(c)
        return self.request(stage, job, self.gpu, c.opts.precision, flops=job.dict_flops,
                            params=params, shape=shape)  # fmt: skip

    # ---- training
    def train_pass(self, configs: list) -> Cost:
        """A training pass of ``configs`` (TrainedMemberConfigs): over the cache or from a
        stream (``cost.train_pass_cost``; the model's forward to the deepest member's
        block)."""
        c0 = configs[0]
        B, tokens = c0.opts.batch_size, c0.steps * c0.opts.batch_size
        coders = [c.coder() for c in configs]
        if c0.stream is not None and self.stream_shape is not None:
            forward = self.size.forward_flops(tokens, max(c.layer for c in configs) + 1)
            return cost.train_pass_cost(coders, tokens, B, self.cache_bytes, self.stream_shape,
                                        forward)  # fmt: skip
        return cost.train_pass_cost(coders, tokens, B, self.cache_bytes)

    def train_pass_resources(self, configs: list) -> dict:
        """A training pass's resources; a stream pass's disk holds its checkpoint and the
        weights (``cost.checkpoint_disk_bytes``)."""
        extra = {}
        if configs[0].stream is not None:
            params = sum(cost.n_params(c.coder()) for c in configs)
            extra["disk_mb"] = estimate.disk_mb(cost.checkpoint_disk_bytes(params))
        slowest = min({c.opts.precision for c in configs},
                      key=lambda p: self.rates.flops_per_s(self.gpu, p))  # fmt: skip
        return self.request("train", self.train_pass(configs), self.gpu, slowest, **extra)

    def clt_cost(self, c: CLTMemberConfig) -> tuple[Cost, int]:
        """A CLT's training (``cost.clt_cost``, ``cost.clt_pass_cost``: from the cache, or
        from a stream with the model's forward and a buffer of the CLT's 2 L hooks) and its
        parameters."""
        clt = cost.clt_cost(c.shape(), c.opts.batch_size, c.steps, c.opts.precision)
        tokens, width = c.steps * c.opts.batch_size, 2 * len(c.layers) * c.d_model
        if c.stream is None:
            return cost.clt_pass_cost(clt, tokens, width, self.cache_bytes), clt.params
        rows = c.stream.buffer_tokens + c.stream.batch_contexts * self.size.context
        job = cost.clt_pass_cost(
            clt, tokens, width, self.cache_bytes, rows, self.size, max(c.layers) + 1
        )
        return job, clt.params

    # ---- evaluation
    def evaluate_cost(self, plan, configs: list) -> Cost:
        """An evaluation pass of ``configs`` (EvaluateConfigs), each coder sized by the
        train, CLT or import task it names."""
        shapes = [
            plan.get(r.stage, r.id).config.cost_shape(self.size.d_model)
            for c in configs
            for r in c.coders
        ]
        c0 = configs[0]
        return stage_costs.evaluate_cost(self.size, c0.eval_tokens, c0.batch_contexts, shapes)

    def evaluate_pass_resources(self, plan, configs: list) -> dict:
        return self.request("evaluate", self.evaluate_cost(plan, configs), self.gpu)


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
