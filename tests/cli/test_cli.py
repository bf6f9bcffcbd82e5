"""The `tcspec` command in-process: schema freshness, the plan table, checks, safe YAML."""

from __future__ import annotations

import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from tcspec.cli import main
from tcspec.plan import compile_plan
from tcspec.spec import loader
from tcspec.spec.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SCHEMA = ROOT / "specs" / "tcspec.schema.json"
SPECS = sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/paper/*.yaml")])


def test_committed_schema_is_current(tmp_path: Path, capsys):
    out = tmp_path / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert SCHEMA.exists(), "specs/tcspec.schema.json is missing: run `tcspec schema`"
    assert json.loads(out.read_text()) == json.loads(SCHEMA.read_text()), (
        "specs/tcspec.schema.json is stale (spec.py changed): run `tcspec schema`"
    )
    assert out.read_text() == SCHEMA.read_text()


def test_schema_documents_fields():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"experiment", "model", "data", "layers", "dictionaries"}
    tc = schema["$defs"]["TranscoderSpec"]["properties"]
    assert "L1 coefficient" in tc["l1"]["description"]


def test_plan_prints_the_table_with_totals(capsys):
    assert main(["plan", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    plan = compile_plan(load_spec(QUICKSTART))
    jobs = len(plan.tasks) - 24 + len(plan.groups) + len(plan.eval_groups)  # passes, not members
    assert out.startswith(f"experiment quickstart: {len(plan.tasks)} tasks in {jobs} jobs")
    assert (
        "tasks: model 1, tokens 1, acts 1, train 12, evaluate 12, interp 2, study 1, circuits 2, "
        f"tables 1 (total 33); jobs {jobs}" in out
    )
    assert re.search(
        r"^activation cache: [\d.]+GB; dictionary parameters: [\d.]+M; training FLOPs: [\d.]+T$",
        out,
        re.M,
    )
    for task in plan.tasks.values():  # a job's line, or a member's under its pass
        stage = "" if task.stage in ("train", "evaluate") else task.stage
        assert re.search(rf"^{stage}\s+{re.escape(task.id)}\s", out, re.M)
    # each job: GPUs, memory, estimated time, and the runtime Snakemake asks for
    assert re.search(r"^group\s+tc-L0-x3-\w+\s+0\s+[\d.]+GB\s+\d+ (s|min)\s+\d+ min$", out, re.M)


def test_plan_json_lists_every_task(capsys):
    assert main(["plan", "--json", str(QUICKSTART)]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert len(tasks) == 33
    assert {t["stage"] for t in tasks} == {
        "model",
        "tokens",
        "acts",
        "train",
        "evaluate",
        "interp",
        "study",
        "circuits",
        "tables",
    }
    train = next(t for t in tasks if t["stage"] == "train")
    assert train["config"]["opts"]["kind"] == "transcoder" and train["resources"]["threads"] == 1


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_check_passes_on_committed_specs(spec: Path, capsys):
    assert main(["check", "--skip-disk", str(spec)]) == 0
    assert capsys.readouterr().out.startswith(f"{spec}: ok (")


def test_check_fails_when_the_cache_exceeds_free_disk(tmp_path: Path, monkeypatch, capsys):
    need = sum(t.resources["disk_mb"] for t in compile_plan(load_spec(QUICKSTART)).stage("acts"))
    free_mb = need // 2  # half what the cache needs
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40, free_mb * 2**20))
    assert main(["check", str(QUICKSTART), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"~{need:,.0f} MB" in err and f"{free_mb:,} MB free" in err, err
    assert "`acts: {source: stream}`" in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


PAPER = sorted((ROOT / "specs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("spec", PAPER, ids=lambda p: p.stem)
def test_paper_specs_stream_and_pass_check_on_a_small_disk(spec, monkeypatch, capsys, tmp_path):
    usage = namedtuple("usage", "total used free")
    free = 99 * 10**9  # under 100 GB
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - free, free))
    assert main(["check", str(spec), "--results", str(tmp_path)]) == 0
    plan = compile_plan(load_spec(spec))
    assert not plan.stage("acts") and plan.groups
    assert all(set(t.deps) == {"model", "tokens"} for t in plan.stage("train"))
    capsys.readouterr()
    assert main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "stream passes:" in out and "a100 fp32: 9.75 TFLOP/s sustained (0.5 x peak)" in out
    assert out.count(" GPU h") == len(plan.groups)


def test_stream_passes_split_by_the_machine_budget(capsys):
    spec = load_spec(ROOT / "specs" / "paper" / "gpt2_small.yaml")
    (one,) = compile_plan(spec).groups  # 12 transcoders and 4 SAEs in one pass
    assert len(one) == 16
    split = compile_plan(spec, stream_budget_mb=16_000).groups
    assert len(split) > 1 and sorted(i for g in split for i in g) == sorted(one)
    assert main(["plan", str(ROOT / "specs" / "paper" / "gpt2_small.yaml"),
                 "--stream-budget-mb", "16000"]) == 0  # fmt: skip
    assert capsys.readouterr().out.count(" GPU h") == len(split)


def test_status_and_clean_use_the_budget_the_last_run_used(tmp_path: Path, capsys):
    """A DAG built with another stream budget has other pass ids; `status` and `clean`
    compile with the budget that run recorded, so they keep its passes."""
    from tcspec.plan.workflow import Workflow, recorded_stream_budget

    spec = ROOT / "specs" / "paper" / "gpt2_small.yaml"
    wf = Workflow(str(spec), str(tmp_path), stream_budget_mb=16_000)
    assert len(wf.passes) > 1
    assert recorded_stream_budget(tmp_path, wf.plan.spec.experiment) == 16_000
    capsys.readouterr()
    assert main(["clean", str(spec), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^0 of \d+ tasks not needed", out, re.M), out
    assert main(["status", str(spec), "--results", str(tmp_path)]) == 0


def test_check_passes_when_the_disk_has_room(tmp_path: Path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**50, 0, 2**50))
    assert main(["check", str(QUICKSTART), "--results", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        '!!python/object/new:subprocess.check_call [["touch", "{marker}"]]',
        "!!python/name:os.system",
        "!!python/object:pathlib.Path {{}}",
    ],
)
def test_python_tags_are_rejected_and_never_run(tag: str, tmp_path: Path, capsys):
    marker = tmp_path / "executed"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"experiment: demo\nmodel: {tag.format(marker=marker)}\n")
    assert main(["check", "--skip-disk", str(spec)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"{re.escape(str(spec))}:2:8: YAML tag `!!python/\S+` is not allowed: .*\n", err
    ), err
    assert not marker.exists()


def test_loader_uses_safe_yaml_only():
    source = Path(loader.__file__).read_text()
    assert "SafeLoader" in source
    for unsafe in (
        "yaml.load(",
        "yaml.Loader",
        "FullLoader",
        "UnsafeLoader",
        "unsafe_load",
        "full_load",
    ):
        assert unsafe not in source, unsafe


def test_unreadable_spec_is_one_located_line(tmp_path: Path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["check", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{missing}:1:1: cannot read")


def test_tables_without_evaluations_is_an_error(tmp_path: Path, capsys):
    spec = ROOT / "tests" / "workflow" / "micro.yaml"
    assert main(["tables", str(spec), "--results", str(tmp_path)]) == 2
    assert "no finished evaluations" in capsys.readouterr().err
    assert not (tmp_path / "micro").exists()


def test_task_unknown_to_the_store_is_one_line(tmp_path: Path, capsys):
    assert main(["task", "train", "nope", "--results", str(tmp_path)]) == 2
    assert "no train task `nope`" in capsys.readouterr().err


def test_settings_the_run_is_too_short_for_warn_located_and_strict_fails(tmp_path: Path, capsys):
    """A warm-up, a dead window or a checkpoint interval the run never reaches: a located
    warning each (file:line:col: path: warning: ...), exit 0; with --strict, exit 2."""
    text = (ROOT / "tests" / "workflow" / "micro.yaml").read_text()
    spec = tmp_path / "warm.yaml"
    text = text.replace("lr_warmup_steps: 2", "lr_warmup_steps: 5000")
    text = text.replace("l1: 1.0e-3", "activation: topk\n    k: 4\n    dead_features: aux_k")
    spec.write_text(
        text.replace("checkpoint_every: 16", "checkpoint_every: 500\n    dead_window: 128")
    )
    assert main(["check", "--skip-disk", str(spec)]) == 0
    err = capsys.readouterr().err.splitlines()
    # 8192 tokens / batch 64 = 128 steps
    run = "training takes 128 steps (8192 tokens / batch 64)"
    assert err == [
        f"{spec}:18:5: dictionaries.tc.lr_warmup_steps: warning: 5000 warm-up steps, but "
        f"{run}: it never reaches its full value",
        f"{spec}:20:5: dictionaries.tc.checkpoint_every: warning: a checkpoint every 500 "
        f"steps, but {run}: none is written, so a killed job starts over",
        f"{spec}:21:5: dictionaries.tc.dead_window: warning: dead window of 128 steps, but "
        f"{run}: no feature can count as dead, so the aux-k loss never acts; leave "
        "`dead_window` unset (a tenth of the run) or shorten it",
    ]
    assert main(["check", "--skip-disk", "--strict", str(spec)]) == 2
    capsys.readouterr()
    spec.write_text(text)  # the dead window left to the run: 13 steps, no warning
    assert main(["check", "--skip-disk", str(spec)]) == 0
    assert "dead_window" not in capsys.readouterr().err


def test_progress_in_a_log_file_is_plain_periodic_lines(tmp_path):
    """A job's progress bars, written to its log file, are lines (no carriage returns), at
    most one per interval."""
    import subprocess
    import sys

    code = (
        "from tcspec.cli import plain_progress; plain_progress(0.25)\n"
        "import time; from tqdm.auto import tqdm\n"
        "for _ in tqdm(range(40), desc='steps'): time.sleep(0.025)\n"
    )
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", code], stderr=out, check=True)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("steps")]
    assert "\r" not in text
    assert 2 <= len(lines) <= 10 and "40/40" in lines[-1]


def test_export_writes_a_clt_folder_to_circuit_tracer_and_refuses_other_formats(
    tmp_path: Path, capsys
):
    """`tcspec export` takes either shape: a CLT folder goes to circuit-tracer's CLT format
    (and loads back equal), and SAELens gets one line saying why it cannot hold it."""
    import torch

    from tcspec.dictionaries import clt_io
    from tcspec.dictionaries.clt import CLT, CLTConfig

    clt = CLT(CLTConfig(n_layers=2, d_model=8, d_sae=12, layers=(0, 1)), seed=5)
    clt_io.save(clt, tmp_path / "clt")
    facts = ["--model-name", "m", "--context-size", "16", "--results", str(tmp_path)]
    args = ["export", str(tmp_path / "clt"), str(tmp_path / "ct"), *facts]
    assert main([*args, "--to", "circuit-tracer"]) == 0
    back = clt_io.load_circuit_tracer(tmp_path / "ct")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in clt.state_dict().items())
    capsys.readouterr()
    args[2] = str(tmp_path / "sl")
    assert main([*args, "--to", "saelens"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "cannot export a clt (relu) to saelens: a cross-layer transcoder is written in "
            "circuit-tracer's format only"
        )
        and len(err.splitlines()) == 1
    )
