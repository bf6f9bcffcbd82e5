"""The compiler's content addressing: which ids move when a spec changes, and which don't.

Also: every committed spec dry-runs through Snakemake offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tcspec.loader import parse_spec
from tcspec.plan import compile_plan

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SPECS = sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/paper/*.yaml")])
TC_L1 = "    expansion: 8                   # d_sae 1,024\n    l1: [3.0e-4, 1.0e-3, 3.0e-3]\n"
ENV = os.environ | {"HF_HUB_OFFLINE": "1"}
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def quickstart_text() -> str:
    text = QUICKSTART.read_text()
    assert text.count(TC_L1) == 1, "the quickstart's tc block changed; update TC_L1"
    return text


def changed_l1_text() -> str:
    """The quickstart with one L1 value of `tc` changed (3e-3 -> 5e-3)."""
    return quickstart_text().replace(TC_L1, TC_L1.replace("3.0e-3]", "5.0e-3]"))


def ids(text: str) -> dict[tuple[str, str], str]:
    """(stage, readable name) -> task id, the readable name being the id without its hash."""
    plan = compile_plan(parse_spec(text, "spec.yaml"))
    return {(t.stage, t.id.rsplit("-", 1)[0]): t.id for t in plan.tasks.values()}


def test_one_l1_value_changes_only_tc_downstream():
    before, after = ids(quickstart_text()), ids(changed_l1_text())
    # readable names are the same, except the tc evaluate member whose l1 moved
    renamed = {k for k in before if k not in after}
    assert renamed == {("evaluate", f"tc-L{layer}-l1_0.003") for layer in (0, 1)}
    changed = {k for k in before if k in after and before[k] != after[k]}
    expected = {("train", "tc-L0"), ("train", "tc-L1"), ("tables", "quickstart")}
    expected |= {
        ("evaluate", f"tc-L{layer}-l1_{v}") for layer in (0, 1) for v in ("0.0003", "0.001")
    }
    # tc's studies downstream of its training: its dashboards, the blind study, its circuit
    expected |= {("interp", "tc-L0-l1_0.001"), ("interp", "study-quickstart")}
    expected |= {("circuits", "greater_than-tc")}
    assert changed == expected
    unchanged = {k for k in before if k in after and before[k] == after[k]}
    stages = {s for s, _ in unchanged}
    assert stages == {"model", "tokens", "acts", "train", "evaluate", "interp"}
    assert ("interp", "sae-L0-l1_0.001") in unchanged
    assert {k for k in unchanged if k[0] in ("train", "evaluate")} == {
        ("train", "sae-L0"),
        ("train", "sae-L1"),
        *{
            ("evaluate", f"sae-L{layer}-l1_{v}")
            for layer in (0, 1)
            for v in ("0.0003", "0.001", "0.003")
        },
    }
    assert len(unchanged) == 3 + 2 + 6 + 1


def test_specs_differing_only_in_dictionaries_share_the_acts():
    base = quickstart_text()
    text = base.replace(
        "expansion: 8                   # d_sae 1,024\n    l1: [3.0e-4, 1.0e-3, 3.0e-3]",
        "expansion: 4\n    l1: 1.0e-2",
    )
    text = text.replace(
        "expansion: 8\n    l1: [3.0e-4, 1.0e-3, 3.0e-3]", "expansion: 4\n    l1: 1.0e-2"
    )
    # the studies select l1 = 1e-3, which this variant no longer trains
    text = text[: text.index("interp:")] + text[text.index("tables:") :]
    text = text.replace("experiment: quickstart", "experiment: other")
    assert text.count("expansion: 4") == 2
    a, b = ids(base), ids(text)
    for stage in ("model", "tokens", "acts"):
        assert [v for k, v in a.items() if k[0] == stage] == [
            v for k, v in b.items() if k[0] == stage
        ]
    assert a[("train", "tc-L0")] != b[("train", "tc-L0")]
    # a dictionary that reads another hook needs another cache
    hook_post = base.replace("hook: hook_mlp_out", "hook: mlp.hook_post")
    assert ids(hook_post)[("acts", "L0-1")] != a[("acts", "L0-1")]


def test_device_is_not_part_of_ids():
    base = quickstart_text()
    variants = [
        base.replace("seed: 0\n", f"seed: 0\ndevice: {d}\n") for d in ("cpu", "cuda", "auto")
    ]
    assert ids(variants[0]) == ids(variants[1]) == ids(variants[2]) == ids(base)


def test_ids_are_stable_across_processes():
    """Ids are hashes of JSON, not of Python's salted `hash()`: another process with another
    hash seed computes the same ones."""
    code = (
        "import json, sys; from tcspec.loader import load_spec; from tcspec.plan import compile_plan;"
        "print(json.dumps(sorted(t.id for t in compile_plan(load_spec(sys.argv[1])).tasks.values())))"
    )
    here = sorted(ids(quickstart_text()).values())
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(QUICKSTART)],
            capture_output=True,
            text=True,
            check=True,
            env=ENV | {"PYTHONHASHSEED": seed},
        ).stdout
        assert out.strip() == str(here).replace("'", '"')


# ------------------------------------------------------------------------- snakemake -n
def dry_runs(specs: list[Path], results: Path) -> list[subprocess.CompletedProcess]:
    """`snakemake -n` for each spec, side by side (a dry run takes no lock)."""
    procs, logs = [], []
    for i, spec in enumerate(specs):
        logs.append(results / f"dry-run-{i}.log")
        logs[-1].parent.mkdir(parents=True, exist_ok=True)
        with logs[-1].open("w") as log:  # a file, not a pipe: big outputs can't block
            cmd = [
                SNAKEMAKE,
                "-n",
                "--nolock",
                "--config",
                f"spec={spec}",
                f"results={results / str(i)}",
            ]
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
            )
    codes = [p.wait(timeout=300) for p in procs]
    return [
        subprocess.CompletedProcess(p.args, code, log.read_text())
        for p, code, log in zip(procs, codes, logs)
    ]


def job_ids(output: str) -> set[tuple[str, str]]:
    """(rule, id) of every job a dry run lists."""
    return set(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: id=(\S+)$", output, re.M))


@pytest.mark.slow
def test_snakemake_dry_run_reruns_only_what_changed(tmp_path: Path):
    spec_a, spec_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    spec_a.write_text(quickstart_text())
    spec_b.write_text(changed_l1_text())
    run_a, run_b = dry_runs([spec_a, spec_b], tmp_path / "results")
    assert run_a.returncode == 0, run_a.stdout[-3000:]
    assert run_b.returncode == 0, run_b.stdout[-3000:]
    jobs_a, jobs_b = job_ids(run_a.stdout), job_ids(run_b.stdout)
    assert len(jobs_a) == len(jobs_b) == 24
    # the jobs that differ are exactly the tasks whose ids the compiler changed
    plan_a, plan_b = ids(quickstart_text()), ids(changed_l1_text())
    only_a = {v for v in plan_a.values() if v not in plan_b.values()}
    only_b = {v for v in plan_b.values() if v not in plan_a.values()}
    assert {i for _, i in jobs_a - jobs_b} == only_a
    assert {i for _, i in jobs_b - jobs_a} == only_b
    assert {r for r, _ in jobs_a ^ jobs_b} == {
        "train_dictionary",
        "evaluate_dictionary",
        "sample_features",
        "analyze_circuit",
        "build_tables",
    }
    # tc train x2, tc evaluate x6, tc dashboards + study, tc circuit, tables
    assert len(only_a) == len(only_b) == 2 + 6 + 2 + 1 + 1


@pytest.mark.slow
def test_every_committed_spec_dry_runs_offline(tmp_path: Path):
    assert len(SPECS) >= 4
    runs = dry_runs(SPECS, tmp_path)
    for spec, run in zip(SPECS, runs):
        assert run.returncode == 0, f"{spec}:\n{run.stdout[-3000:]}"
        plan = compile_plan(parse_spec(spec.read_text(), str(spec), spec.parent))
        assert len(job_ids(run.stdout)) == len(plan.tasks), spec
