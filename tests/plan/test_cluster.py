"""Scale-out: the workflow on a (simulated) cluster, and the SLURM profile's plan.

No scheduler runs here, so profiles/cluster-sim drives Snakemake's cluster-generic executor
with a submit script that starts each job as a detached process (the stand-in for sbatch)
and a status script that reports it (the stand-in for sacct). The cluster run must give
exactly what a local ``-c2`` run gives.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import harness  # noqa: E402
from harness import CLUSTER_PROFILE, MICRO, ROOT  # noqa: E402

from tcspec.plan.stages import STAGES  # noqa: E402

pytestmark = pytest.mark.slow  # real runs of minutes: the full suite's, not the quick loop's

GPT2_SMALL = ROOT / "specs" / "paper" / "gpt2_small.yaml"


def script(name: str, *args: str, jobs: Path) -> str:
    out = subprocess.run(
        ["bash", str(CLUSTER_PROFILE / name), *args],
        cwd=ROOT,
        env=harness.env(CLUSTER_SIM_DIR=str(jobs)),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def wait_for(jobs: Path, job: str, want: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := script("status.sh", job, jobs=jobs)) != want:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return state


def test_submit_and_status_scripts(tmp_path):
    """submit.sh prints a job id; status.sh says running, then success / failed by exit
    code; a job killed before writing its exit code has failed; cancel.sh ends a job."""
    jobs = tmp_path / "jobs"
    scripts = {}
    for name, body in {"ok": "exit 0", "bad": "exit 3", "slow": "sleep 60"}.items():
        scripts[name] = tmp_path / f"{name}.sh"
        scripts[name].write_text(body + "\n")
    ids = {name: script("submit.sh", name, str(path), jobs=jobs) for name, path in scripts.items()}
    assert len(set(ids.values())) == 3 and all(re.fullmatch(r"job-\w+", i) for i in ids.values())
    assert wait_for(jobs, ids["ok"], "success") == "success"
    assert wait_for(jobs, ids["bad"], "failed") == "failed"
    assert script("status.sh", ids["slow"], jobs=jobs) == "running"
    script("cancel.sh", ids["slow"], jobs=jobs)
    assert wait_for(jobs, ids["slow"], "failed") == "failed"
    assert script("status.sh", "job-unknown", jobs=jobs) == "failed"
    assert (jobs / ids["ok"] / "name").read_text().strip() == "ok"


@pytest.mark.slow
def test_cluster_run_equals_a_local_run(tmp_path_factory, tmp_path):
    store = tmp_path_factory.getbasetemp() / "micro"
    store.mkdir(exist_ok=True)
    local = harness.baseline(store)  # shared with test_faults when both run

    jobs, results = tmp_path / "jobs", tmp_path / "results"
    run = subprocess.run(
        harness.snakemake_cmd(results, "--profile", str(CLUSTER_PROFILE), spec=MICRO, cores=None),
        cwd=ROOT,
        env=harness.env(CLUSTER_SIM_DIR=str(jobs)),
        capture_output=True,
        text=True,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    plan = harness.plan(MICRO)
    submitted = re.findall(r"Submitted job \d+ with external jobid '(job-\w+)'", log)
    assert sorted(submitted) == sorted(p.name for p in jobs.iterdir())
    assert len(submitted) == len(plan.tasks)  # one member: one training pass
    names = sorted((jobs / j / "name").read_text().strip() for j in submitted)
    passes = ("train", "evaluate")
    expected = [f"run_{t.stage}-{t.id}" for t in plan.tasks.values() if t.stage not in passes]
    for t in [*plan.stage("train"), *plan.stage("evaluate")]:
        job = harness.job_of(t)
        expected.append(f"{job.stage}_{job.id.replace('-', '_').replace('.', '_')}-{job.id}")
    assert names == sorted(expected)
    assert all((jobs / j / "exit").read_text().strip() == "0" for j in submitted)
    assert harness.differences(harness.outputs(results), harness.outputs(local)) == []


def slurm_profile(tmp_path: Path) -> Path:
    """profiles/slurm, or (where snakemake-executor-plugin-slurm is not installed) a copy
    without its `executor:` line: the plan and the resources are the same."""
    profile = ROOT / "profiles" / "slurm"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None:
        return profile
    copy = tmp_path / "slurm"
    copy.mkdir()
    lines = (profile / "config.yaml").read_text().splitlines(keepends=True)
    (copy / "config.yaml").write_text("".join(s for s in lines if not s.startswith("executor:")))
    return copy


def test_slurm_profile_gives_a_gpu_to_every_job_that_runs_gpt2(tmp_path):
    run = harness.snakemake(
        tmp_path / "results",
        "--profile",
        str(slurm_profile(tmp_path)),
        "-n",
        spec=GPT2_SMALL,
        cores=None,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    jobs = []  # (rule, resources)
    for block in re.split(r"\n(?=\s*rule \w+:)", out):  # grouped jobs are indented
        rule = re.match(r"\s*rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res and rule.group(1) != "all":
            fields = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            jobs.append((rule.group(1), fields))
    plan = harness.plan(GPT2_SMALL)
    # every task but the members, plus one job per training pass (the paper spec streams:
    # its dictionaries at every layer share passes, split only by the memory budget) and
    # one per evaluation pass
    members_of = len(plan.stage("train")) + len(plan.stage("evaluate"))
    assert len(jobs) == len(plan.tasks) - members_of + len(plan.groups) + len(plan.eval_groups)
    train = [(r, f) for r, f in jobs if r.startswith("group_")]
    members = [plan.get("train", m) for g in plan.groups for m in g]
    assert {t.id for t in members} == {t.id for t in plan.stage("train")}
    tc_layers = {t.config.layer for t in members if t.label["dictionary"] == "tc"}
    assert tc_layers == set(range(12))
    assert len(train) == len(plan.groups)
    # a GPU for every job that runs gpt2: training, evaluation, interp and circuit passes
    on_model = ("group_", "evalgroup_", "run_interp", "run_circuits")
    gpu_jobs = [(r, f) for r, f in jobs if r.startswith(on_model)]
    assert {r for r, f in jobs if f.get("gpu") == "1"} == {r for r, _ in gpu_jobs}
    assert len(gpu_jobs) > len(train) and {r for r, _ in train} < {r for r, _ in gpu_jobs}
    assert all(f["gpu"] == "1" and f["slurm_partition"] == "gpu" for _, f in gpu_jobs)
    others = [f for r, f in jobs if not r.startswith(on_model)]
    assert others and all(
        f.get("gpu", "0") == "0" and f["slurm_partition"] == "cpu" for f in others
    )


def dry_run_jobs(spec: Path, tmp_path: Path, *config: str) -> list[tuple[str, str, dict]]:
    """(rule, task id or None, resources) of every job `snakemake -n` with the SLURM
    profile would submit (not the target rules, which run nothing); ``config``: more
    ``--config`` items."""
    run = harness.snakemake(
        tmp_path / "results", *config, "--profile", str(slurm_profile(tmp_path)), "-n",
        spec=spec, cores=None,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    jobs = []
    for block in re.split(r"\n(?=\s*rule \w+:)", out):
        rule = re.match(r"\s*rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res and rule.group(1) not in ("all", *STAGES):
            wildcard = re.search(r"^\s+wildcards: id=(\S+)$", block, re.M)
            fields = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            jobs.append((rule.group(1), wildcard and wildcard.group(1), fields))
    return jobs


PLAN_ROW = re.compile(r"^(\w+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+(?:\.\d+)? \w+)\s+(\d+) min", re.M)


@pytest.mark.parametrize("spec", sorted((ROOT / "specs" / "paper").glob("*.yaml")),
                         ids=lambda p: p.stem)  # fmt: skip
def test_slurm_dry_run_asks_every_job_for_the_plan_s_runtime_and_memory(spec, tmp_path, capsys):
    """Every job Snakemake would submit with the SLURM profile has a runtime (minutes) of
    at least the plan's time estimate, the same runtime and memory as the plan's job (its
    margins included), and `tcspec plan` prints that runtime for the job."""
    from tcspec.cli import main
    from tcspec.plan.report import plan_jobs

    jobs = dry_run_jobs(spec, tmp_path)
    plan = harness.plan(spec)
    expected = {j.id: j for j in plan_jobs(plan)}
    seen = set()
    for rule, wildcard, fields in jobs:
        (job,) = [j for i, j in expected.items() if i == wildcard or rule.endswith(
            i.replace("-", "_").replace(".", "_"))]  # fmt: skip
        seen.add(job.id)
        assert int(fields["runtime"]) == job.resources["runtime"], rule
        assert int(fields["runtime"]) * 60 >= job.resources["seconds"] > 0, rule
        assert int(fields["mem_mb"]) == job.resources["mem_mb"], rule
    assert seen == set(expected)
    assert main(["plan", str(spec)]) == 0
    printed = {m[2]: int(m[6]) for m in PLAN_ROW.finditer(capsys.readouterr().out)}
    assert printed == {i: j.resources["runtime"] for i, j in expected.items()}
    # the machine side's GPU class shortens the GPU jobs' runtime, and changes no id
    assert main(["plan", str(spec), "--gpu-class", "h200"]) == 0
    h200 = {m[2]: int(m[6]) for m in PLAN_ROW.finditer(capsys.readouterr().out)}
    assert set(h200) == set(printed)
    gpu = [i for i, j in expected.items() if j.resources["gpu"]]
    assert all(h200[i] <= printed[i] for i in gpu) and sum(h200[i] - printed[i] for i in gpu) < 0
    assert all(h200[i] == printed[i] for i in set(printed) - set(gpu))


def test_the_machine_side_s_gpu_class_reaches_the_passes(tmp_path, capsys):
    """`--config gpu_class=...` (Workflow's argument) sets the passes' runtime; an unknown
    class is a one-line error."""
    from tcspec.plan.workflow import Workflow

    a100 = Workflow(str(GPT2_SMALL), str(tmp_path / "a"))
    h100 = Workflow(str(GPT2_SMALL), str(tmp_path / "h"), gpu_class="h100")
    assert [p.id for p in a100.passes] == [p.id for p in h100.passes]
    assert all(h.resources["runtime"] < a.resources["runtime"]
               for a, h in zip(a100.passes, h100.passes))  # fmt: skip
    with pytest.raises(SystemExit):
        Workflow(str(GPT2_SMALL), str(tmp_path / "x"), gpu_class="v100")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown gpu_class `v100`; one of a100, h100, h200" in err
