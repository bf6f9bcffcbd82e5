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

from tcspec.plan import compile_plan
from tcspec.spec.loader import parse_spec

ROOT = Path(__file__).resolve().parents[2]
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


def test_one_l1_value_changes_only_that_point_downstream():
    """Each sweep point is its own train task: moving one L1 value renames that point's
    train and evaluate tasks at each layer and changes only the tables that list them."""
    before, after = ids(quickstart_text()), ids(changed_l1_text())
    renamed = {k for k in before if k not in after}
    assert renamed == {
        (stage, f"tc-L{layer}-l1_0.003") for stage in ("train", "evaluate") for layer in (0, 1)
    }
    assert {k for k in after if k not in before} == {
        (stage, f"tc-L{layer}-l1_0.005") for stage in ("train", "evaluate") for layer in (0, 1)
    }
    changed = {k for k in before if k in after and before[k] != after[k]}
    assert changed == {("tables", "quickstart")}
    unchanged = {k for k in before if k in after and before[k] == after[k]}
    assert len(unchanged) == len(before) - 4 - 1
    assert ("train", "tc-L0-l1_0.001") in unchanged and ("interp", "tc-L0-l1_0.001") in unchanged
    assert ("circuits", "greater_than-tc") in unchanged


def test_a_point_keeps_its_train_id_when_the_sweep_around_it_changes():
    """Training ids hash what was trained, not how the spec swept: a single value, a
    one-point list and a point of a longer sweep share one trained dictionary."""
    base = quickstart_text()
    single = base.replace(TC_L1, TC_L1.replace("[3.0e-4, 1.0e-3, 3.0e-3]", "1.0e-3"))
    wider = base.replace(TC_L1, TC_L1.replace("3.0e-3]", "3.0e-3, 1.0e-2]"))
    trains = [{v for k, v in ids(t).items() if k[0] == "train"} for t in (base, single, wider)]
    assert trains[1] < trains[0] < trains[2]
    assert len(trains[2] - trains[0]) == 2  # the new point, at layers 0 and 1


def test_train_ids_name_each_activation_s_sparsity_setting():
    """A train id's readable part names what fixes its sparsity: L1 for ReLU, k for TopK and
    BatchTopK, l0_coef for JumpReLU; an unset `jumprelu_threshold_lr` is not in the hash."""
    families = ids((ROOT / "specs" / "families.yaml").read_text())
    trains = {name for stage, name in families if stage == "train"}
    assert {"tc_relu-L0-l1_0.001", "tc_topk-L0-k_16", "sae_batchtopk-L0-k_16"} <= trains
    assert {"tc_jumprelu-L0-l0_coef_0.0001", "sae_jumprelu-L0-l0_coef_0.001"} <= trains
    assert "sae_matryoshka-L0-k_16" in trains
    base = quickstart_text()
    explicit = base.replace(TC_L1, TC_L1 + "    jumprelu_threshold_lr: null\n")
    assert ids(explicit) == ids(base)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_evaluation_is_in_one_pass_with_its_layer(spec: Path):
    """Evaluation passes partition the evaluate tasks; a single-splice pass holds every
    dictionary's sweep points at one layer (what shares the clean and ablated forwards), a
    joint pass one dictionary's joint splices."""
    plan = compile_plan(parse_spec(spec.read_text(), str(spec), spec.parent))
    grouped = [i for g in plan.eval_groups for i in g]
    assert sorted(grouped) == sorted(t.id for t in plan.stage("evaluate"))
    for g in plan.eval_groups:
        refs = [plan.get("evaluate", i).config.coders for i in g]
        if all(len(c) == 1 and c[0].kind != "clt" for c in refs):
            assert len({c[0].layer for c in refs}) == 1, g
        else:
            assert len({tuple((r.dictionary, r.layer) for r in c) for c in refs}) == 1, g
    quickstart = compile_plan(parse_spec(quickstart_text(), "spec.yaml"))
    assert sorted(map(len, quickstart.eval_groups)) == [6, 6]  # tc and sae, at each layer


def test_train_configs_are_typed_and_canonical():
    from tcspec.plan.configs import TrainedMemberConfig

    plan = compile_plan(parse_spec(quickstart_text(), "spec.yaml"))
    (t,) = [t for t in plan.stage("train") if t.id.startswith("tc-L0-l1_0.001-")]
    assert isinstance(t.config, TrainedMemberConfig)
    assert (t.config.opts.l1, t.config.d_sae, t.config.in_key) == (
        1e-3,
        1024,
        "blocks.0.ln2.hook_normalized",
    )
    again = TrainedMemberConfig.model_validate_json(t.config.canonical())
    assert again == t.config and again.canonical() == t.config.canonical()
    assert len(plan.groups) == 4 and all(len(g) == 3 for g in plan.groups)


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
    assert ("train", "tc-L0-l1_0.01") in b and ("train", "tc-L0-l1_0.01") not in a
    # a dictionary that reads another hook needs another cache
    hook_post = base.replace("hook: hook_mlp_out", "hook: mlp.hook_post")
    assert ids(hook_post)[("acts", "L0-1")] != a[("acts", "L0-1")]


def test_device_is_not_part_of_ids():
    """Only through the precision `auto` resolves to (tests/compute/test_precision.py): with the
    precision given, every device has the same ids."""
    base = quickstart_text()
    for kind in ("transcoder", "sae"):
        base = base.replace(f"    kind: {kind}\n", f"    kind: {kind}\n    precision: fp32\n")
    variants = [base.replace("seed: 0\n", f"seed: 0\ndevice: {d}\n") for d in ("cpu", "auto")]
    assert ids(variants[0]) == ids(variants[1]) == ids(base)
    # cuda (checked against this machine by the loader): the same ids
    cuda = parse_spec(base, "spec.yaml").model_copy(update={"device": "cuda"})
    assert {t.id for t in compile_plan(cuda).tasks.values()} == set(ids(base).values())


def test_cuda_without_cuda_is_a_located_check_error():
    import torch

    from tcspec.spec.loader import SpecError

    text = quickstart_text().replace("seed: 0\n", "seed: 0\ndevice: cuda\n")
    if torch.cuda.is_available():
        assert ids(text) == ids(quickstart_text())
        return
    with pytest.raises(SpecError, match=r"spec.yaml:\d+:\d+: device: cuda, but this torch sees"):
        parse_spec(text, "spec.yaml")


@pytest.mark.slow
def test_ids_are_stable_across_processes():
    """Ids are hashes of JSON, not of Python's salted `hash()`: another process with another
    hash seed computes the same ones."""
    code = (
        "import json, sys; from tcspec.spec.loader import load_spec; from tcspec.plan import compile_plan;"
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
    """(rule, id) of every job a dry run lists; a training or evaluation pass (no wildcard)
    is named by its rule, ``group_<pass id>`` or ``evalgroup_<pass id>``."""
    jobs = set()
    for block in re.split(r"\n(?=rule \w+:)", output):
        rule = re.match(r"rule (\w+):", block)
        if rule and rule.group(1) != "all":
            wid = re.search(r"^    wildcards: id=(\S+)$", block, re.M)
            jobs.add((rule.group(1), wid.group(1) if wid else rule.group(1)))
    return jobs


@pytest.mark.slow
def test_snakemake_dry_run_reruns_only_what_changed(tmp_path: Path):
    spec_a, spec_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    spec_a.write_text(quickstart_text())
    spec_b.write_text(changed_l1_text())
    run_a, run_b = dry_runs([spec_a, spec_b], tmp_path / "results")
    assert run_a.returncode == 0, run_a.stdout[-3000:]
    assert run_b.returncode == 0, run_b.stdout[-3000:]
    jobs_a, jobs_b = job_ids(run_a.stdout), job_ids(run_b.stdout)
    # 33 tasks: the 12 members train in 4 passes (a dictionary at a layer) and are
    # evaluated in 2 (a layer)
    assert len(jobs_a) == len(jobs_b) == 33 - 12 - 12 + 4 + 2
    plan_a, plan_b = ids(quickstart_text()), ids(changed_l1_text())
    in_passes = ("train", "evaluate")
    only_a = {k: v for k, v in plan_a.items() if v not in plan_b.values() and k[0] != "train"}
    only_b = {k: v for k, v in plan_b.items() if v not in plan_a.values() and k[0] != "train"}
    passes = {i for _, i in jobs_a ^ jobs_b if i.startswith(("group_tc_", "evalgroup_L"))}
    rest_a = {v for k, v in only_a.items() if k[0] not in in_passes}
    rest_b = {v for k, v in only_b.items() if k[0] not in in_passes}
    assert {i for _, i in jobs_a - jobs_b} == rest_a | (passes & {i for _, i in jobs_a})
    assert {i for _, i in jobs_b - jobs_a} == rest_b | (passes & {i for _, i in jobs_b})
    assert {r for r, _ in jobs_a ^ jobs_b if not r.startswith(("group_", "evalgroup_"))} == {
        "run_tables"
    }
    # the tc training passes and the evaluation passes at layers 0 and 1 (another member
    # set); the
    # changed point's 2 evaluations (one per layer) and the tables
    assert len(passes) == 2 * 4 and len(only_a) == len(only_b) == 2 + 1
    assert sorted(k[0] for k in only_a) == ["evaluate", "evaluate", "tables"]


@pytest.mark.slow
def test_every_committed_spec_dry_runs_offline(tmp_path: Path):
    assert len(SPECS) >= 4
    runs = dry_runs(SPECS, tmp_path)
    for spec, run in zip(SPECS, runs):
        assert run.returncode == 0, f"{spec}:\n{run.stdout[-3000:]}"
        plan = compile_plan(parse_spec(spec.read_text(), str(spec), spec.parent))
        jobs = len(plan.tasks) - len(plan.stage("train")) + len(plan.groups)
        jobs += len(plan.eval_groups) - len(plan.stage("evaluate"))
        assert len(job_ids(run.stdout)) == jobs, spec


def _joint_layers(plan) -> list[list[int]]:
    """The layer list of every evaluation that splices several layers at once."""
    found = [[r.layer for r in t.config.coders] for t in plan.stage("evaluate")]
    return [layers for layers in found if len(layers) > 1]


def test_splice_layers_picks_the_joint_evaluations_layer_set():
    """The paper's gpt2-small splice-all numbers are for the transcoders of layers 0-10 at
    once while its spec trains 0-11: the joint evaluation splices exactly `splice_layers`."""
    paper = ROOT / "specs" / "paper" / "gpt2_small.yaml"
    text = paper.read_text()
    plan = compile_plan(parse_spec(text, str(paper)))
    assert _joint_layers(plan) == [list(range(11))]
    (joint,) = [t for t in plan.stage("evaluate") if len(t.config.coders) > 1]
    assert joint.id.startswith("tc-L0-1-2-3-4-5-6-7-8-9-10-single-")
    assert {t.config.layer for t in plan.stage("train") if t.label["dictionary"] == "tc"} == set(
        range(12)
    )
    # without the field: every layer of the dictionary, under its former name
    line = next(s for s in text.splitlines() if s.startswith("evaluate:"))
    every = text.replace(line, "evaluate: {batch_contexts: 128, splice_all_layers: true}")
    plan = compile_plan(parse_spec(every, str(paper)))
    assert _joint_layers(plan) == [list(range(12))]
    assert any(t.id.startswith("tc-all-single-") for t in plan.stage("evaluate"))


def test_splice_layers_leaves_the_ids_of_specs_without_it_alone():
    """Adding the field changed no id of a spec that does not set it (the CLT spec splices
    all layers): its evaluate configs hold their coders only, no spec field."""
    for path in (QUICKSTART, ROOT / "specs" / "clt.yaml"):
        plan = compile_plan(parse_spec(path.read_text(), str(path)))
        for t in plan.stage("evaluate"):
            assert "splice_layers" not in t.config.canonical()
    clt = ROOT / "specs" / "clt.yaml"
    before = ids(clt.read_text())
    text = clt.read_text().replace("splice_all_layers: true", "splice_all_layers: true, "
                                   "splice_layers: [0, 1]")  # fmt: skip
    assert ids(text) == before  # the CLT spec's dictionaries have layers 0 and 1


def test_ghost_residual_enters_a_train_id_only_when_chosen():
    """A train id holds `ghost_residual` only away from its default (`output`), so every
    spec that does not set it keeps its ids; the paper's gpt2 transcoders set `input`."""
    for t in compile_plan(parse_spec(quickstart_text(), "spec.yaml")).stage("train"):
        assert "ghost_residual" not in t.config.canonical()
    paper = ROOT / "specs" / "paper" / "gpt2_small.yaml"
    train = compile_plan(parse_spec(paper.read_text(), str(paper))).stage("train")
    sides = {t.label["dictionary"]: t.config.opts.ghost_residual for t in train}
    assert sides == {"tc": "input", "sae": "output"}
    assert all('"ghost_residual": "input"' in t.config.canonical() for t in train
               if t.label["dictionary"] == "tc")  # fmt: skip
