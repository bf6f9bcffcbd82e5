"""Random command lines for every subcommand of `tcspec`, run in-process: never a traceback,
exit 0, 1 or 2, and a bad argument is one line (a spec's problems one located line each)."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcspec.cli import _parser, main
from tcspec.dictionaries import coders
from tcspec.plan import compile_plan
from tcspec.plan.store import save_task
from tcspec.spec.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests" / "specs" / "valid" / "minimal.yaml"


def _subcommands(parser: argparse.ArgumentParser, prefix=()) -> dict[tuple, list[str]]:
    """(command words) -> the option strings of that (sub)command, from the parser itself."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= _subcommands(sub, (*prefix, name))
    if prefix and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        out[prefix] = [s for a in parser._actions for s in a.option_strings]
    return out


COMMANDS = _subcommands(_parser())
LINE = re.compile(r"^(tcspec[ :]|\S.*:\d+:\d+: |\S.*: warning: )")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a spec, a dictionary, a plain file, an empty folder and a results
    folder whose stored config is damaged."""
    root = tmp_path_factory.mktemp("argv")
    shutil.copy(SPEC, root / "spec.yaml")
    cfg = coders.CoderConfig("transcoder", 8, 8, 16, in_hook="blocks.0.ln2.hook_normalized",
                             out_hook="blocks.0.hook_mlp_out", layer=0)  # fmt: skip
    torch.manual_seed(0)
    coders.save(coders.Coder(cfg), root / "dict")
    (root / "README.md").write_text("# not a spec\n")
    (root / "empty").mkdir()
    return root


def _values(workdir: Path):
    names = ["spec.yaml", "dict", "README.md", "empty", "missing/x.json", "results", "."]
    numbers = ["0", "-5", "1", "3", "all", "1e3", "99999999999999999999999", "nan", ""]
    words = ["train", "group", "model", "saelens", "sparsify", "circuit-tracer", "cpu", "cuda"]
    # argv holds no NUL; a file name with a line break would print on two lines
    funny = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12)
    return st.one_of(st.sampled_from(names + numbers + words), funny)


@st.composite
def argv(draw, command: tuple, values) -> list[str]:
    options = COMMANDS[command] + ["--", "-", "--bogus", "-h"]
    words = draw(st.lists(st.one_of(st.sampled_from(options), values), max_size=7))
    if command == ("schema",):  # never the repository's own schema file
        words = ["--out", "s.json", *words]
    if command == ("run",):  # the workdir's valid spec would start Snakemake
        words = [w for w in words if w not in ("spec.yaml", "-h", "--help")]
    return [*command, *words]


def test_every_subcommand_is_fuzzed():
    assert set(COMMANDS) == {
        ("check",), ("plan",), ("schema",), ("run",), ("task",), ("tables",),
        ("interp", "ingest"), ("export",), ("clean",), ("status",),
    }  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_random_argv_never_tracebacks(command, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    results = workdir / "results" / "configs" / "model"

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(args=argv(command, _values(workdir)))
    def run(args):
        results.mkdir(parents=True, exist_ok=True)
        (results / "bad.json").write_text("[1, 2")  # a damaged stored config
        capsys.readouterr()
        code = main(args)
        out, err = capsys.readouterr()
        assert code in (0, 1, 2), (args, code)
        assert "Traceback" not in err + out, args
        if code == 2:
            lines = err.splitlines()
            assert lines and all(LINE.match(line) for line in lines), (args, err)

    run()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["export", "dict", "--to", "saelens", "README.md"],
            "README.md: exists and is not a folder",
        ),
        (["export", "dict", "--to", "saelens", "dict"], "dict: holds a tcspec dictionary"),
        (["schema", "--out", "/nonexistent/dir/x.json"], "is in no existing folder"),
        (["schema", "--out", "empty"], "--out empty is a folder"),
        (["plan", "spec.yaml", "--stream-budget-mb", "-5"], "expected a positive integer, got -5"),
        (["run", "-c", "0"], "--cores/-c: expected a positive integer, got 0"),
        (["task", "bogus_stage", "x"], "invalid choice: 'bogus_stage' (choose from 'model'"),
        (["task", "model", "bad"], "results/configs/model/bad.json: not a stored task config"),
        (["check", "--bogus"], "tcspec: unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_one_line(args, message, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    (workdir / "results" / "configs" / "model").mkdir(parents=True, exist_ok=True)
    (workdir / "results" / "configs" / "model" / "bad.json").write_text("[1, 2")
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (workdir / "README.md").is_dir() and (workdir / "dict" / "cfg.json").exists()


def test_a_train_member_says_its_id_once(tmp_path, capsys):
    plan = compile_plan(load_spec(SPEC))
    member = plan.stage("train")[0]
    save_task(tmp_path, member)
    assert main(["task", "train", member.id, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count(member.id) == 1 and "run its `group` task" in err, err
