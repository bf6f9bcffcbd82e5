"""The spec language: located errors for broken specs, valid variants, and fuzzing.

Each file in tests/specs/invalid/ starts with one or more lines
``# expect: LINE:COL: dotted.path: message substring``; every expected problem must be
reported at exactly that place, and `tcspec check` must exit 2 without a traceback.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcspec.cli import main
from tcspec.plan import compile_plan, sweep_points
from tcspec.spec.loader import SpecError, load_spec, parse_spec

HERE = Path(__file__).resolve().parents[1]
INVALID = sorted((HERE / "specs" / "invalid").glob("*.yaml"))
VALID = sorted((HERE / "specs" / "valid").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (\S*): (.+)$")


def expectations(path: Path) -> list[tuple[int, int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if not m:
            break
        out.append((int(m[1]), int(m[2]), m[3], m[4]))
    return out


def test_enough_invalid_specs():
    assert len(INVALID) >= 35
    for path in INVALID:
        assert expectations(path), f"{path.name} has no `# expect:` first line"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_is_located(path: Path):
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    shown = "\n".join(str(p) for p in problems)
    for line, col, where, text in expectations(path):
        hits = [
            p
            for p in problems
            if (p.file, p.line, p.col, p.path) == (str(path), line, col, where)
            and text in p.message
        ]
        assert hits, f"expected {line}:{col}: {where}: ...{text}... among:\n{shown}"
        prefix = f"{path}:{line}:{col}: " + (f"{where}: " if where else "")
        assert str(hits[0]).startswith(prefix)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_cli_exits_2(path: Path, capsys):
    assert main(["check", "--skip-disk", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith(f"{path}:") for line in lines), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["yaml_unclosed_bracket", "unknown_kind_transcodr", "toy_layer_5"])
def test_invalid_spec_cli_subprocess(name: str):
    """The installed command, as a person runs it: exit 2, located lines, no traceback."""
    path = HERE / "specs" / "invalid" / f"{name}.yaml"
    tcspec = Path(sys.executable).parent / "tcspec"
    run = subprocess.run(
        [str(tcspec), "check", "--skip-disk", str(path)],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    line, col, where, text = expectations(path)[0]
    prefix = f"{path}:{line}:{col}: " + (f"{where}: " if where else "")
    assert prefix in run.stderr and text in run.stderr


def test_python_tag_does_not_execute(tmp_path: Path):
    marker = tmp_path / "executed"
    text = f'experiment: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(SpecError, match="is not allowed"):
        parse_spec(text, "tagged.yaml")
    assert not marker.exists()


# ----------------------------------------------------------------------------- valid specs
# expected tasks per stage (one train task per sweep point x layer), and sweep points per
# training pass (the members of one dictionary at one layer share a pass over the cache)
VALID_PLANS = {
    "gpt2_skip_topk": ({"train": 8, "evaluate": 8}, 4),  # k x lr crossed: 2 x 2, 2 layers
    "files_data": ({"train": 2, "evaluate": 2}, 1),
    "zip_sweep": ({"train": 6, "evaluate": 6}, 6),  # (l1, lr) zipped: 3, x expansion 2
    "checkpoint": ({"train": 5, "evaluate": 5 + 2}, None),  # + 2 all-layer splices of tc
    "minimal": ({"train": 1, "evaluate": 1}, 1),
    "families_options": ({"train": 3, "evaluate": 3}, None),  # 2 l0_coef + 1 Matryoshka TopK
}


def test_every_valid_spec_has_expectations():
    assert sorted(p.stem for p in VALID) == sorted(VALID_PLANS)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_spec_compiles(path: Path):
    spec = load_spec(path)
    plan = compile_plan(spec)
    counts, members = VALID_PLANS[path.stem]
    for stage, n in counts.items():
        assert len(plan.stage(stage)) == n, stage
    for stage in ("model", "tokens", "acts", "tables"):
        assert len(plan.stage(stage)) == 1
    if members is not None:
        assert plan.groups and all(len(g) == members for g in plan.groups)
    assert main(["check", "--skip-disk", str(path)]) == 0


def test_zip_versus_cross_product():
    spec = load_spec(HERE / "specs" / "valid" / "zip_sweep.yaml")
    d = spec.dictionaries["sae"]
    zipped = sweep_points(d)
    crossed = sweep_points(d.model_copy(update={"zip": []}))
    assert len(zipped) == 6 and len(crossed) == 18
    # zipped points keep l1 and lr in step
    pairs = {(p["l1"], p["lr"]) for p in zipped}
    assert pairs == {(1e-4, 1e-3), (1e-3, 4e-4), (1e-2, 1e-4)}
    assert {p["expansion"] for p in zipped} == {2, 4}


def test_relative_paths_resolve_against_the_spec_folder():
    files = load_spec(HERE / "specs" / "valid" / "files_data.yaml")
    assert files.data.paths == [(HERE / "specs" / "data" / "corpus.txt").resolve()]
    ckpt = load_spec(HERE / "specs" / "valid" / "checkpoint.yaml")
    assert ckpt.model.path == (HERE / "specs" / "data" / "tiny_gpt2").resolve()
    (train,) = [t for t in compile_plan(ckpt).stage("train") if t.label["dictionary"] == "sae"]
    assert train.config.d_in == 256  # mlp.hook_post is d_mlp (n_inner)


def test_dictionary_family_options_enter_a_train_id_only_away_from_their_defaults():
    """`penalty`, `tanh_scale` and `pre_act_coef` written at their defaults keep a JumpReLU
    member's id; chosen, they are in it. A CLT keeps its own `tanh_scale` in its id."""
    base = (HERE / "specs" / "valid" / "minimal.yaml").read_text()
    jump = base.replace("expansion: 4}", "expansion: 4, activation: jumprelu}")
    explicit = jump.replace(
        "jumprelu}", "jumprelu, penalty: step, tanh_scale: 4.0, pre_act_coef: null}"
    )

    def trains(text: str):
        return compile_plan(parse_spec(text, "spec.yaml")).stage("train")

    assert "pre_act_coef: null" in explicit
    (a,), (b,) = trains(jump), trains(explicit)
    assert b.config.opts.penalty == "step" and a.id == b.id
    assert not {"penalty", "tanh_scale", "pre_act_coef"} & set(a.config.canonical().split('"'))
    chosen = load_spec(HERE / "specs" / "valid" / "families_options.yaml")
    for t in compile_plan(chosen).stage("train"):
        tanh = t.label["dictionary"] == "jr_tanh"
        assert ('"penalty": "tanh"' in t.config.canonical()) == tanh
        assert ('"pre_act_coef": 3e-06' in t.config.canonical()) == tanh
    clt = load_spec(HERE.parent / "specs" / "clt.yaml")
    assert all('"tanh_scale": 4.0' in t.config.canonical() for t in compile_plan(clt).stage("clt"))


def test_run_length_defaults_resolve_into_the_train_config():
    """At the quickstart's budget (1,171 steps): the dead window is a tenth of the run where
    something acts on dead features (TopK's default aux-k), else 5,000 (a ReLU member's id
    is unchanged); a JumpReLU's threshold rate is 8 / steps; set values stay."""
    text = (HERE.parent / "specs" / "quickstart.yaml").read_text()
    text = text.replace("  sae:\n", "  topk: {kind: sae, activation: topk, k: 8, expansion: 8,"
                        " batch_size: 512}\n  jr: {kind: sae, activation: jumprelu, expansion: 8,"
                        " batch_size: 512, lr: 1.0e-3}\n  fixed: {kind: sae, activation: topk, k: 8,"
                        " expansion: 8, batch_size: 512, dead_window: 300}\n  sae:\n")  # fmt: skip
    opts = {
        t.label["dictionary"]: t.config.opts for t in compile_plan(parse_spec(text)).stage("train")
    }
    assert opts["topk"].dead_features == "aux_k" and opts["topk"].dead_window == 117
    assert opts["tc"].dead_features == "none" and opts["tc"].dead_window == 5000
    assert opts["fixed"].dead_window == 300
    assert opts["jr"].jumprelu_threshold_lr == pytest.approx(8 / 1171)
    assert opts["tc"].jumprelu_threshold_lr is None


def test_encoder_init_defaults_to_the_transpose_for_the_k_activations():
    """Unset, `encoder_init` resolves to `transpose` for TopK and BatchTopK SAEs,
    `transpose_scaled` for such transcoders where d_in = d_out, else `kaiming`, which a train
    id leaves out (a ReLU member keeps its id)."""
    text = (HERE.parent / "specs" / "quickstart.yaml").read_text()
    text = text.replace("  sae:\n", "  topk: {kind: sae, activation: topk, k: 8, expansion: 8}\n"
                        "  btk: {kind: transcoder, activation: batchtopk, k: 8, expansion: 8}\n"
                        "  wide: {kind: transcoder, in_hook: mlp.hook_post, activation: topk,"
                        " k: 8, expansion: 2}\n  sae:\n")  # fmt: skip
    tasks = {t.label["dictionary"]: t.config for t in compile_plan(parse_spec(text)).stage("train")}
    inits = {name: c.opts.encoder_init for name, c in tasks.items()}
    assert inits == {"tc": "kaiming", "sae": "kaiming", "topk": "transpose",
                     "btk": "transpose_scaled", "wide": "kaiming"}  # fmt: skip
    assert '"encoder_init": "transpose"' in tasks["topk"].canonical()
    assert "encoder_init" not in tasks["tc"].canonical()


# ------------------------------------------------------------------------------- fuzzing
SEEDS = [VALID[i].read_text() for i in range(len(VALID))] + [
    (HERE.parent / "specs" / "quickstart.yaml").read_text()
]
TYPO = st.sampled_from(["", "s", "_", "x", "0"])
GARBAGE = st.one_of(
    st.integers(-(10**6), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(string.ascii_letters + string.digits + " _-.:", max_size=12),
    st.lists(st.integers(-3, 40), max_size=4),
    st.dictionaries(st.sampled_from(["kind", "name", "x", "l1"]), st.integers(-2, 5), max_size=2),
)


def _paths(node, loc=()):
    """Every (path, value) inside a YAML document, parents before children."""
    yield loc, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, loc + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, loc + (i,))


def _parent(doc, loc):
    for part in loc[:-1]:
        doc = doc[part]
    return doc


MINIMAL = (HERE / "specs" / "valid" / "minimal.yaml").read_bytes()
HOSTILE = [  # YAML values at the limits of a parser or a number conversion
    "9" * 5000, "-" + "9" * 5000, "0x" + "f" * 300, "0b" + "1" * 300, ":".join(["59"] * 60),
    "9" * 30, "1e400", "-1e400", ".nan", ".inf", "-.inf", "1.0e-400", "0.0", "-0", "1_0",
    "'" + "9" * 5000 + "'", "!!int abc", "!!float 1e-3", "!!bool maybe", "!!null x",
    "!!binary aGk=", "!!timestamp 2020-01-01", "!!set {a}", "!!omap [a: 1]", "!foo x",
    "!!python/object/apply:os.system [x]", "2020-01-01", "2001-12-14t21:59:43.10-05:00",
    '"\\ud800"', '"\\0"', '"\\x1b"', '"a\\u200bb"', "\u00a0x", "~", "[]", "{}",
    "&a [*a]", "{1: 2}", "{null: 1}", "{true: 1}", "{? [a]: 1}", "x" * 2000,
]  # fmt: skip
_VALUE = re.compile(r"(?<=: )[^\s{\[][^\n,}\]]*")


@st.composite
def mutated_spec(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    op = draw(
        st.sampled_from(
            ["drop", "retype", "typo", "garbage", "swap", "text", "text", "none", "hostile"]
        )
    )
    if op == "hostile":  # one value's text replaced by a hostile one
        spots = list(_VALUE.finditer(text))
        m = draw(st.sampled_from(spots))
        return text[: m.start()] + draw(st.sampled_from(HOSTILE)) + text[m.end() :]
    if op == "text":  # corrupt the YAML text itself
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        junk = draw(st.text("{}[]:,-#'\"\t\n !&*|>%@`x0", max_size=4))
        return text[:i] + junk + text[j:]
    doc = yaml.safe_load(text)
    spots = [loc for loc, _ in _paths(doc) if loc]
    loc = draw(st.sampled_from(spots))
    parent, key = _parent(doc, loc), loc[-1]
    if op == "drop":
        del parent[key]
    elif op == "retype":
        parent[key] = draw(GARBAGE)
    elif op == "typo" and isinstance(key, str):
        typo = draw(TYPO)
        parent[(key + typo if typo else key[:-1]) or "x"] = parent.pop(key)
    elif op == "garbage" and isinstance(parent, dict):
        parent[draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10))] = draw(GARBAGE)
    elif op == "swap":  # a list becomes a scalar, a scalar a list
        value = parent[key]
        parent[key] = value[0] if isinstance(value, list) and value else [value, value]
    return yaml.safe_dump(doc, sort_keys=False)


@settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=mutated_spec())
def test_mutated_specs_fail_cleanly(text: str, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("fuzz", numbered=True)
    (folder / "data").symlink_to(HERE / "specs" / "data")  # `../data/...` paths still resolve
    (folder / "specs").mkdir()
    spec = folder / "specs" / "spec.yaml"
    spec.write_text(text)
    capsys.readouterr()
    code = main(["check", "--skip-disk", str(spec)])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        located = re.compile(rf"^{re.escape(str(spec))}:\d+:\d+: ")
        assert err and all(located.match(line) for line in err.splitlines()), err
    else:
        assert out.startswith(f"{spec}: ok")


# ------------------------------------------------------------------ arbitrary bytes
def _check_bytes(data: bytes, folder: Path, capsys) -> None:
    """`tcspec check` on a file holding `data`: exit 0, or exit 2 with every line located."""
    spec = folder / "spec.yaml"
    spec.write_bytes(data)
    capsys.readouterr()
    code = main(["check", "--skip-disk", str(spec)])
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, data[:200])
    if code == 2:
        located = re.compile(rf"^{re.escape(str(spec))}:\d+:\d+: ")
        assert err and all(located.match(line) for line in err.splitlines()), err
    else:
        assert out.startswith(f"{spec}: ok")


@st.composite
def corrupted_bytes(draw) -> bytes:
    """A valid spec with bytes spliced in (invalid UTF-8, NULs, control characters), or
    arbitrary bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = draw(st.sampled_from(SEEDS)).encode()
    i = draw(st.integers(0, len(data)))
    junk = draw(
        st.one_of(
            st.binary(min_size=1, max_size=6),
            st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x1b[31m", b"\r"]),
        )
    )
    return data[:i] + junk + data[i + draw(st.integers(0, 4)) :]


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=corrupted_bytes())
def test_arbitrary_bytes_fail_cleanly(data: bytes, tmp_path_factory, capsys):
    _check_bytes(data, tmp_path_factory.mktemp("bytes", numbered=True), capsys)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"experiment: x\xff\n", "1:14: not UTF-8 text (byte 0xff)"),
        (b"experiment: a\x00b\n", "1:14: YAML: character #x0000 is not allowed"),
        (b"[" * 100_000 + b"]" * 100_000, "1:65: collections nest more than 64 levels"),
        (b"".join(b" " * i + b"k:\n" for i in range(200)), "65:65: collections nest more"),
        (b"- " * 20_000 + b"x", "collections nest more than 64 levels"),
        (b"a: &a [*a]\n", "1:8: alias `*a` refers to the collection it is in"),
        (
            b"a: &a [x,x,x,x,x,x,x,x,x,x]\n"
            + b"".join(
                f"{n}: &{n} [{','.join(['*' + p] * 10)}]\n".encode()
                for p, n in zip("abcdefgh", "bcdefghi")
            ),
            "more than 100,000 values once aliases are expanded",
        ),
        (b"\xef\xbb\xbfexperiment: x\n", "missing required key `layers`"),  # BOM is fine
        (b"seed: " + b"9" * 5000 + b"\n", "1:7: a number of 5,000 characters"),
        (b"seed: 0x" + b"f" * 5000 + b"\n", "1:7: a number of 5,002 characters"),
        (b"seed: 99999999999999999999\n", "1:1: seed: must be <= 4294967295"),
        (b"layers: [9223372036854775808]\n", "1:10: layers[0]: must be <= 9223372036854775807"),
        (b"a: {l1: 1e400}\n", "a: unknown key `a`"),
        (MINIMAL.replace(b"expansion: 4", b"expansion: 4, l1: 1e400"), "expected a finite number"),
        (MINIMAL.replace(b"expansion: 4", b"expansion: 4, lr: .inf"), "expected a finite number"),
        (
            MINIMAL.replace(b"expansion: 4", b"expansion: 4, l1: .nan"),
            "expected a finite number, got `nan`",
        ),
        (b"experiment: !!binary aGk=\n", "1:13: YAML tag `!!binary` is not allowed"),
        (b"experiment: !!timestamp 2020-01-01\n", "1:13: YAML tag `!!timestamp` is not"),
        (b"seed: !!int abc\n", "1:7: `abc` is not a YAML int"),
        (b"seed: !!float 1e-3\n", "1:7: `1e-3` is not a YAML float (a YAML float has a dot"),
        (b'experiment: "a\\ud800"\n', "1:13: character \\ud800 is not text"),
        (b'experiment: "a\\0"\n', "1:13: character \\u0000 is not text"),
        (b"experiment: 2020-01-01\n", "1:1: experiment: expected a string, got `2020-01-01`"),
        (b"1: x\n", "1:1: 1: key `1` reads as a number, not a name; quote it"),
        (b"null: x\n", "1:1: null: key `null` reads as null"),
        (b"dictionaries: {true: {kind: sae}}\n", "1:16: dictionaries.true: key `true` reads as"),
        (b"lay\xe2\x80\x8bers: [0]\n", "unknown key `lay\\u200bers`; did you mean `layers`?"),
        (b"experiment:\xc2\xa0x\nseed: 1\n", "(line 1 holds U+00A0 (no-break space), not a plain"),
        (
            b"a: &a '" + b"x" * 900_000 + b"'\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
            "more than 8,388,608 characters once aliases are expanded",
        ),
        (
            MINIMAL.replace(
                b"layers: [0]", b"layers: [" + b",".join(b"%d" % i for i in range(2, 82)) + b"]"
            ),
            "and 30 more problems (the first 50 shown)",
        ),
        (
            b"# " + b"x" * (1 << 21),
            "1:1: the file has more than 1,048,576 bytes; a spec is a small",
        ),
    ],
)
def test_hostile_files_get_one_located_line(data: bytes, message: str, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(data)
    capsys.readouterr()
    assert main(["check", "--skip-disk", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:" in err and message in err, err
    assert all(re.match(rf"{re.escape(str(spec))}:\d+:\d+: ", line) for line in err.splitlines())
    assert len(err.splitlines()) <= 51 and len(err) < 20_000


@pytest.mark.parametrize("name", [" ", " spec.yaml", "spec.yaml "])
def test_a_file_name_with_edge_spaces_is_quoted_in_its_located_line(
    name, tmp_path, monkeypatch, capsys
):
    """Every error line starts with its file (the fuzzed CLI found a blank name printing
    " :1:1: ..."): a name with spaces at either end is shown quoted, so the line starts
    where the name does."""
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--skip-disk", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{name!r}:1:1: cannot read: "), err


def test_each_kind_states_its_limits_in_the_spec_s_words():
    """What a kind cannot serve is data on its spec class, in `USES`' words; asking of a
    use nothing asks about is a programming error, not a silent None."""
    from typing import get_args

    from tcspec.spec.clt import CLTSpec
    from tcspec.spec.dictionaries import DictionarySpec
    from tcspec.spec.dictionary_base import USES

    classes = get_args(get_args(DictionarySpec)[0])
    assert {c.model_fields["kind"].annotation.__args__[0] for c in classes} >= {"clt", "sae"}
    for cls in classes:
        assert set(cls.LIMITS) <= set(USES), cls.__name__
    clt = CLTSpec(kind="clt", expansion=2)
    assert clt.cannot("probe") and clt.cannot("joint_splice") and not clt.cannot("circuits")
    with pytest.raises(ValueError, match="unknown use"):
        clt.cannot("probing")
