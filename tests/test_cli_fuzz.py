"""Every command, with missing, out-of-range, wrong-type, unknown and conflicting flags, exits 2 with one line.

The commands and their flags are read from the parser itself, so a command added later is fuzzed too. Each
generated command line carries at least one defect that argparse must reject (plus random valid flags around
it), so nothing ever trains or downloads; defects only the command itself can see (conflicting flags, an
unknown dataset, a missing run folder) are listed separately and each run once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaekit.cli import build_parser, main


@dataclass(frozen=True)
class Command:
    """One leaf command (``train``, ``data fetch``, ...) and the arguments its parser declares."""

    words: tuple[str, ...]
    positionals: tuple[argparse.Action, ...]
    options: tuple[argparse.Action, ...]


def _commands() -> list[Command]:
    found: list[Command] = []

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            for name, sub in subs[0].choices.items():
                walk(sub, (*words, name))
            return
        actions = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
        found.append(Command(words, tuple(a for a in actions if not a.option_strings),
                             tuple(a for a in actions if a.option_strings)))

    walk(build_parser(), ())
    return found


COMMANDS = _commands()
CANDIDATES = ["1", "2", "3", "7", "0.5", "1e-3", "64", "linear", "x", "run"]
BAD_VALUES = ["", "abc", "0", "-1", "-7", "1.5", "nan", "inf", "-inf", "1e400", "0x10", "1,,2", "  ", "2 3", "٣",
              "10000000000000000000000000", "-0.0"]


def _accepts(action: argparse.Action, value: str) -> bool:
    """Whether argparse would take ``value`` for ``action`` (its type converter and choices agree)."""
    try:
        converted = action.type(value) if callable(action.type) else value
    except (argparse.ArgumentTypeError, ValueError, TypeError, OverflowError):
        return False
    return action.choices is None or converted in action.choices


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _good_values(action: argparse.Action) -> list[str]:
    if action.choices is not None:
        return [str(c) for c in action.choices]
    return [v for v in CANDIDATES if _accepts(action, v)]


def _bad_values(action: argparse.Action) -> list[str]:
    return [v for v in [*BAD_VALUES, "not-a-choice"] if not _accepts(action, v)]


# Text an operating system can hand a program as an argument: anything but NUL (and lone surrogates,
# which Python only produces for bytes that are not UTF-8).
arg_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@st.composite
def bad_command_line(draw: st.DrawFn) -> list[str]:
    """A command, random valid flags, and at least one defect argparse itself must reject."""
    cmd = draw(st.sampled_from(COMMANDS))
    args: list[str] = []
    for action in draw(st.lists(st.sampled_from(cmd.options), max_size=4)) if cmd.options else []:
        if _takes_value(action):
            values = _good_values(action)
            if values:
                args += [action.option_strings[-1], draw(st.sampled_from(values))]
        else:
            args.append(action.option_strings[-1])
    positionals = [draw(st.sampled_from(["run", "mnist", "some/folder"])) for _ in cmd.positionals]

    kinds = ["unknown flag", "extra argument"]
    if cmd.positionals:
        kinds.append("missing argument")
    valued = [a for a in cmd.options if _takes_value(a)]
    if valued:
        kinds.append("missing value")
    if any(_bad_values(a) for a in valued):
        kinds.append("bad value")
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown flag":
        name = draw(arg_text.filter(lambda t: not t.startswith("-")))
        flag = "--zz-" + name if name else "--zz-unknown"
        args.insert(draw(st.integers(0, len(args))), flag)
    elif kind == "extra argument":
        positionals.append("extra-" + draw(arg_text.filter(lambda t: not t.startswith("-"))))
    elif kind == "missing argument":
        positionals = positionals[: draw(st.integers(0, len(positionals) - 1))]
    elif kind == "missing value":
        action = draw(st.sampled_from(valued))
        return [*cmd.words, *positionals, *args, action.option_strings[-1]]  # the value would come next
    else:
        action = draw(st.sampled_from([a for a in valued if _bad_values(a)]))
        args += [action.option_strings[-1], draw(st.sampled_from(_bad_values(action)))]
    return [*cmd.words, *positionals, *args]


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(argv: list[str], code: int, out: str, err: str) -> None:
    lines = err.splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].strip(), (argv, err)
    assert lines[0].startswith("vaekit") and "error:" in lines[0], (argv, err)
    assert "Traceback" not in err and out == "", (argv, out, err)


@pytest.fixture
def in_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run commands from an empty folder, so a default output folder could only ever land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(bad_command_line())
def test_generated_bad_command_lines(in_scratch: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = _run_main(argv, capsys)
    _assert_one_line_error(argv, code, out, err)
    assert list(in_scratch.iterdir()) == [], f"{argv} wrote files"


def test_every_command_is_fuzzed() -> None:
    """The fuzzer reaches every command that ``vaekit --help`` lists, data's sub-commands included."""
    names = {" ".join(c.words) for c in COMMANDS}
    assert {"train", "evaluate", "plot", "data list", "data fetch", "data verify"} <= names
    top = {name for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}
    assert top <= {c.words[0] for c in COMMANDS}


def _semantic_cases(tmp: Path) -> list[list[str]]:
    """Command lines argparse accepts but the command must refuse before doing any work."""
    a_file = tmp / "a-file"
    a_file.write_text("not a run folder\n")
    existing = tmp / "existing"
    (existing / "x").mkdir(parents=True)
    missing = str(tmp / "no-such-run")
    cases = [
        [], ["data"],
        ["train", "--resume", "--force", "--out", str(tmp / "r")],
        ["train", "--resume"],
        ["train", "--resume", "--out", missing],
        ["train", "--dataset", "cifar-100", "--out", str(tmp / "r")],
        ["train", "--dataset", "mnist", "--data-dir", missing, "--out", str(tmp / "r")],
        ["train", "--model", "resnet", "--out", str(tmp / "r")],
        ["train", "--model", "mlp", "--activation", "sigmoidish", "--out", str(tmp / "r")],
        ["train", "--likelihood", "poisson", "--out", str(tmp / "r")],
        ["train", "--learn-sigma", "--likelihood", "bernoulli", "--out", str(tmp / "r")],
        ["train", "--device", "tpu", "--out", str(tmp / "r")],
        ["train", "--out", str(a_file)],
        ["train", "--out", str(existing)],
        ["evaluate", missing], ["evaluate", str(a_file)], ["evaluate", missing, "--nll", "--json"],
        ["plot", missing], ["plot", str(a_file), "--grid-size", "3"],
        ["data", "fetch", "cifar-100"], ["data", "verify", "cifar-100"],
        ["data", "verify", "mnist", "--data-dir", missing],
        ["data", "split", missing], ["data", "split", str(a_file)], ["data", "split", str(existing), "--json"],
    ]
    if not torch.cuda.is_available():
        cases.append(["train", "--device", "cuda", "--out", str(tmp / "r")])
    words = {c.words[0] for c in COMMANDS}
    cases += [[w, missing] for w in sorted(words - {"train", "evaluate", "plot", "data"})]  # explore, report, ...
    return cases


def test_conflicting_and_meaningless_flags(in_scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in _semantic_cases(in_scratch):
        before = sorted(p.name for p in in_scratch.iterdir())
        code, out, err = _run_main(argv, capsys)
        _assert_one_line_error(argv, code, out, err)
        assert sorted(p.name for p in in_scratch.iterdir()) == before, f"{argv} left files behind"


def test_a_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The same through ``python -m vaekit``, with a line break inside an argument."""
    env = {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}
    r = subprocess.run([sys.executable, "-m", "vaekit", "train", "--epochs", "zero", "--zz-\nflag"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
