"""``vaekit sweep`` refusing hostile inputs before any trial trains: space files that are no regular file or far too
large, an --out that is a file, a run folder or a seed group, steps that do not divide their range, pruner and
sampler options in the space file's terms, the whole file checked before "searches nothing", and a storage that
cannot be opened leaving no folder behind. Nothing here trains."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from vaekit.cli import main
from vaekit.experiments.space import Space

pytest.importorskip("optuna")

SEARCH = "[search.lr]\nlow = 0.1\nhigh = 0.2\n"


def _refused(capsys: pytest.CaptureFixture[str], space: Path, *flags: str) -> str:
    """The one error line of a sweep refused with exit code 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of Optuna's may reach the user instead
        assert main(["sweep", str(space), "--trials", "1", *flags]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and lines and lines[-1].startswith("vaekit sweep: error: "), captured.err
    assert "Traceback" not in captured.err and all("error" not in line for line in lines[:-1]), captured.err
    return lines[-1]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_fifo_space_file_is_refused_without_waiting_for_a_writer(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(tmp_path / "space.toml")
    err = _refused(capsys, tmp_path / "space.toml", "--out", str(tmp_path / "sweep"))
    assert "space.toml is a named pipe, not a regular file; a space file is a TOML file" in err
    assert _listing(tmp_path) == ["space.toml"]


def test_a_space_file_far_too_large_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vaekit.experiments.space import MAX_SPACE_BYTES

    space = tmp_path / "space.toml"
    space.write_text(SEARCH + "#" * (MAX_SPACE_BYTES - len(SEARCH)) + "\n")  # a valid file one byte too long
    err = _refused(capsys, space, "--out", str(tmp_path / "sweep"))
    assert "space.toml is larger than 1 MB, far more than any space file" in err
    space.write_text(SEARCH + "#" * (MAX_SPACE_BYTES - len(SEARCH) - 1) + "\n")  # at the limit: read
    assert sorted(_read(space).search) == ["lr"]


def _read(space: Path) -> Space:
    from vaekit.cli.sweep import TrainFlags
    from vaekit.experiments.space import read_space
    from vaekit.experiments.sweep import build

    flags = TrainFlags()
    return read_space(space, flags.config, set(flags.actions), build)


def test_a_space_file_that_is_a_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is a folder, not a regular file" in _refused(capsys, tmp_path, "--out", str(tmp_path / "sweep"))


@pytest.mark.parametrize("kind", ["file", "run folder", "seed folders", "seeds summary"])
def test_an_out_that_is_no_sweep_folder_is_refused_before_anything_is_written(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "space.toml").write_text(SEARCH)
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        made = {"run folder": out / "config.json", "seed folders": out / "seed-3" / "config.json",
                "seeds summary": out / "summary.json"}[kind]
        made.parent.mkdir(exist_ok=True)
        made.write_text("{}")
    before = _listing(tmp_path)
    err = _refused(capsys, tmp_path / "space.toml", "--out", str(out))
    expected = {"file": f"--out {out} exists and is not a folder", "run folder": f"--out {out} is a run folder",
                "seed folders": f"--out {out} holds the seeds of vaekit train --seeds",
                "seeds summary": f"--out {out} holds the seeds of vaekit train --seeds"}[kind]
    assert expected in err and "holding out" not in capsys.readouterr().err
    assert _listing(tmp_path) == before  # nothing written, not even the lock


def test_a_folder_named_like_seeds_but_holding_no_run_is_a_sweep_folder(tmp_path: Path) -> None:
    from vaekit.experiments.sweep import check_out

    for name in ("seed-x", "seed-1"):  # not a seed's name, or a seed's name holding no run
        (tmp_path / name).mkdir()
    check_out(tmp_path)  # accepted


STEPS = {
    "larger": ("[search.lr]\nlow = 1e-4\nhigh = 2e-4\nstep = 5\n", "step 5 is larger than the range 0.0001..0.0002"),
    "float": ("[search.lr]\nlow = 1e-4\nhigh = 2e-4\nstep = 3e-5\n", "step 3e-05 does not divide the range"),
    "int": ("[search.batch-size]\nlow = 32\nhigh = 256\nstep = 50\n", "step 50 does not divide the range 32..256"),
    "int-float": ("[search.batch-size]\nlow = 32\nhigh = 256\nstep = 0.5\n", "step must be one too, not 0.5"),
    "tiny": ("[search.lr]\nlow = 0.0\nhigh = 1e300\nstep = 1e-300\n", "step 1e-300 is too small"),
}


@pytest.mark.parametrize("case", sorted(STEPS))
def test_a_step_that_does_not_divide_its_range_is_refused(case: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = STEPS[case]
    (tmp_path / "space.toml").write_text(text)
    err = _refused(capsys, tmp_path / "space.toml", "--out", str(tmp_path / "sweep"))
    flag = text.split("]")[0].split(".")[1]
    assert f"space file {tmp_path / 'space.toml'}: search.{flag} (--{flag}): " in err and expected in err, err
    assert not (tmp_path / "sweep").exists()


def test_a_step_that_divides_its_range_keeps_the_range(tmp_path: Path) -> None:
    (tmp_path / "space.toml").write_text("[search.lr]\nlow = 1e-4\nhigh = 2e-4\nstep = 2.5e-5\n"
                                         "[search.batch-size]\nlow = 32\nhigh = 256\nstep = 32\n")
    space = _read(tmp_path / "space.toml")
    assert (space.search["lr"].high, space.search["batch-size"].high) == (2e-4, 256)


OPTIONS = {  # what the file says; what the one line must say (never Python's or Optuna's internals)
    "unknown": ('[pruner]\nname = "median"\nfoo = 1\n',
                "[pruner]: unknown option 'foo' for pruner median; pruner median's options are n_startup_trials, "
                "n_warmup_steps, interval_steps, n_min_trials"),
    "type": ('[sampler]\nname = "random"\nseed = "a"\n', "[sampler]: option 'seed' of sampler random must be an "
             "integer, not 'a'"),
    "bool": ('[pruner]\nname = "median"\nn_startup_trials = true\n', "[pruner]: option 'n_startup_trials' of "
             "pruner median must be an integer, not True"),
    "number": ('[pruner]\nname = "percentile"\npercentile = "a"\n', "[pruner]: option 'percentile' of pruner "
               "percentile must be a number, not 'a'"),
    "needed": ('[pruner]\nname = "percentile"\n', "[pruner]: pruner percentile needs option 'percentile'"),
    "refused": ('[pruner]\nname = "threshold"\n', "[pruner]: Optuna refuses these options for pruner threshold: "
                "Either lower or upper must be specified. (pruner threshold's options are lower, upper,"),
    "object": ('[sampler]\nname = "tpe"\ngamma = 1\n', "[sampler]: unknown option 'gamma' for sampler tpe"),
    "name": ('[sampler]\nname = ["tpe"]\n', "[sampler] name ['tpe'] is not one of tpe, random, qmc"),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
@pytest.mark.parametrize("searched", [True, False], ids=["searching", "searching-nothing"])
def test_pruner_and_sampler_options_are_checked_in_the_files_terms(
        case: str, searched: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = OPTIONS[case]
    (tmp_path / "space.toml").write_text((SEARCH if searched else "[fixed]\nepochs = 2\n") + text)
    err = _refused(capsys, tmp_path / "space.toml", "--out", str(tmp_path / "sweep"))
    assert f"space file {tmp_path / 'space.toml'}: {expected}" in err, err  # searching nothing: said after this
    for internal in ("__init__", "dtype", "got an unexpected keyword", "not supported between"):
        assert internal not in err


def test_a_file_searching_nothing_reports_its_bad_fixed_value_first(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "space.toml").write_text("[fixed]\nepochs = -1\n")
    assert "argument --epochs: expected a positive integer" in _refused(capsys, tmp_path / "space.toml")
    (tmp_path / "space.toml").write_text("[fixed]\nepochs = 1\n")
    assert "searches nothing" in _refused(capsys, tmp_path / "space.toml")


def test_a_storage_that_cannot_be_opened_leaves_no_folder_behind(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "space.toml").write_text(SEARCH)
    storage = f"sqlite:///{tmp_path / 'missing' / 'study.db'}"  # a folder that does not exist
    err = _refused(capsys, tmp_path / "space.toml", "--out", str(tmp_path / "new" / "sweep"), "--storage", storage)
    assert "--storage" in err and "cannot open it" in err
    assert _listing(tmp_path) == ["space.toml"]  # neither the sweep folder nor its lock, nor the folder above it
    (tmp_path / "mine").mkdir()  # a folder the user had stays, as it was: no lock left in it
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _refused(capsys, tmp_path / "space.toml", "--out", str(tmp_path / "mine"), "--storage", storage)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
