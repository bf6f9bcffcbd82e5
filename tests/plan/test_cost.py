"""The plan's time estimates: one throughput table by device class and precision, and a
job's seconds as its FLOPs at that rate (the scheduler's requests: tests/plan/test_cluster.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tcspec.compute.throughput import CPU_EFFICIENCY, GPU_EFFICIENCY, Rates
from tcspec.plan import compile_plan, cost, estimate, group_task, stage_costs
from tcspec.spec.loader import load_spec

GPT2_SMALL = Path(__file__).resolve().parents[2] / "specs" / "paper" / "gpt2_small.yaml"


def test_rates_by_device_class_and_precision():
    a100, h100 = Rates(), Rates("h100")
    assert a100.flops_per_s(1, "fp32") == pytest.approx(19.5e12 * GPU_EFFICIENCY)
    assert a100.flops_per_s(1, "tf32") == pytest.approx(156e12 * GPU_EFFICIENCY)
    assert h100.flops_per_s(1, "bf16") == pytest.approx(989.4e12 * GPU_EFFICIENCY)
    assert a100.flops_per_s(0, "fp32", threads=2) == pytest.approx(2 * 80e9 * CPU_EFFICIENCY)
    assert Rates("a100", sustained_tflops=100).flops_per_s(1, "bf16") == pytest.approx(1e14)
    with pytest.raises(ValueError, match="unknown gpu_class `v100`"):
        Rates("v100")
    with pytest.raises(ValueError, match="unknown precision"):
        a100.flops_per_s(1, "fp16")


def test_a_stream_pass_is_its_forward_and_training_flops_at_its_gpu_s_rate():
    plan = compile_plan(load_spec(GPT2_SMALL), rates=Rates("h100"))
    (ids,) = plan.groups
    members = [plan.get("train", i) for i in ids]
    job = group_task(members, plan)
    c = members[0].config
    tokens = c.steps * c.opts.batch_size
    forward = plan.sizer.size.forward_flops(tokens, 12)  # the stream runs all 12 blocks
    train = sum(6 * tokens * m.config.d_sae * (m.config.d_in + m.config.d_out) for m in members)
    rate = 67e12 * GPU_EFFICIENCY  # h100 fp32: nothing here turns bf16 on
    seconds = estimate.STARTUP_S + (forward + train) / rate
    assert job.resources["seconds"] == pytest.approx(seconds, abs=0.1)
    assert job.resources["runtime"] == math.ceil(estimate.TIME_MARGIN * seconds / 60)
    assert job.resources["gpu"] == 1 and sum(m.resources["flops"] for m in members) == train


def test_the_stream_estimate_sizes_the_model_every_job_is_sized_with():
    """One `ModelSize` per plan: a toy stream pass counts the toy's weights (its recipe's
    vocabulary, not the default a pretrained model without one gets)."""
    from tcspec.models.recipes import get_recipe

    spec = load_spec(GPT2_SMALL.parents[2] / "tests" / "workflow" / "micro_stream.yaml")
    plan = compile_plan(spec)
    size = plan.sizer.size
    assert size.d_vocab == get_recipe(spec.model.recipe).vocab_size != cost.DEFAULT_VOCAB
    assert plan.stream_shape.model == size.weight_bytes


def test_a_probe_job_holds_the_model_and_runs_its_texts_through_it():
    """Probing runs the model: its job is sized with the weights and the forward over its
    texts (classes x texts per class x max_tokens), not as bookkeeping."""
    spec = load_spec(GPT2_SMALL.parents[1] / "probing.yaml")
    plan = compile_plan(spec)
    size = plan.sizer.size
    for t in plan.stage("probe"):
        c = t.config
        classes = len(c.classes) if c.classes else stage_costs.PROBE_CLASSES
        tokens = classes * (c.train_per_class + c.test_per_class) * c.max_tokens
        assert (
            t.resources["mem_mb"] * estimate.MB > size.weight_bytes + stage_costs.FEATURE_WORK_BYTES
        )
        job = stage_costs.probe_cost(size, tokens // c.max_tokens, c.max_tokens, 128, 128, 1024)
        assert job.model_flops == size.forward_flops(tokens) > 0
