"""The command line: help everywhere, and every bad flag or value as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaekit.cli import main


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}
    return subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.parametrize("cmd", [[], ["train"], ["evaluate"], ["plot"], ["explore"], ["report"], ["data"],
                                 ["data", "list"], ["data", "fetch"], ["data", "verify"]])
def test_every_command_has_help(cmd: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: vaekit" in capsys.readouterr().out


def test_python_dash_m_and_version() -> None:
    import vaekit

    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout == f"vaekit {vaekit.__version__}\n"


BAD = [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-3"], "--epochs"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--zdim", "0"], "--zdim"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--dataset", "cifar"], "cifar"),
    (["train", "--model", "resnet"], "resnet"),
    (["train", "--likelihood", "poisson"], "poisson"),
    (["train", "--device", "tpu"], "tpu"),
    (["train", "--bogus"], "--bogus"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--resume", "--force", "--out", "x"], "contradict"),
    (["evaluate"], "run"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["plot", "/nonexistent/run"], "does not exist"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str, capsys, tiny_data: Path) -> None:
    if args[0] == "train" and "--out" not in args and "--resume" not in args:
        args = [*args, "--data-dir", str(tiny_data), "--quiet"]
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_unwritable_out_folder_is_a_one_line_error(tiny_data: Path, tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:
        target = "/proc/vaekit-run"  # not creatable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "run")
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--epochs", "1", "--out", target,
                 "--quiet", "--no-artifacts"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and target.split("/")[1] in err


def test_resume_with_conflicting_settings_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    base = ["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--out", out, "--quiet", "--no-artifacts"]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--resume", "--zdim", "5"]) == 2
    assert "--zdim differ" in capsys.readouterr().err
    assert main([*base, "--epochs", "1", "--resume"]) == 2
    assert "already has 1 epochs" in capsys.readouterr().err


def test_offline_default_trains_on_the_embedded_subset(tmp_path: Path, monkeypatch, capsys) -> None:
    """No dataset named, nothing found, no network: the embedded real MNIST subset, with a warning."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--out", "run", "--quiet", "--no-artifacts"]) == 0
    assert "embedded" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "mnist-embedded"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["n_train"] == 4000


def test_naming_mnist_never_falls_back(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "mnist", "--epochs", "1", "--out", "run"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
