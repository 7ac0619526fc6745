"""Hostile run folders and arguments: each is one line on stderr and exit 2, never a hang, a memory blow-up
or a traceback. Every case runs the real command in a subprocess with a timeout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import vaekit
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.data import resolve

from .conftest import hermetic_env, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("hostile") / "data", 128, 32)


@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        vaekit.train(TrainConfig(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, artifacts=False), out)
    return out


def _one_line_exit_2(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in done.stderr.splitlines() if "checksum mismatch" not in line]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _replace(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def tamper(run: Path) -> None:
        (run / name).unlink()
        make(run / name)
    return tamper


def _edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def tamper(run: Path) -> None:
        d = json.loads((run / name).read_text())
        edit(d)
        (run / name).write_text(json.dumps(d))
    return tamper


TAMPERS = {
    "config is a link to /dev/zero": (_replace("config.json", lambda p: p.symlink_to("/dev/zero")), "character device"),
    "config is a link to /dev/urandom": (_replace("config.json", lambda p: p.symlink_to("/dev/urandom")), "device"),
    "config is a FIFO": (_replace("config.json", os.mkfifo), "named pipe"),
    "weights are a FIFO": (_replace("model.safetensors", os.mkfifo), "named pipe"),
    "config is a folder": (_replace("config.json", lambda p: p.mkdir()), "is a folder, not a regular file"),
    "summary is a FIFO": (_replace("summary.json", os.mkfifo), "named pipe"),
    "metrics are a link to /dev/zero": (_replace("metrics.csv", lambda p: p.symlink_to("/dev/zero")), "device"),
    "config holds a 100,000-digit zdim": (_replace("config.json", lambda p: p.write_text(
        '{"format": 1, "model": {"zdim": ' + "9" * 100_000 + '}, "train": {}}')), "thousands of digits"),
    "summary holds a 5,000-digit number": (_replace("summary.json", lambda p: p.write_text(
        '{"test_loss": ' + "7" * 5000 + "}")), "thousands of digits"),
    "metrics hold nan": (lambda run: (run / "metrics.csv").write_text(
        (run / "metrics.csv").read_text().replace("\n1,", "\n1,nan,", 1).replace(",nan,", ",nan", 1)), "damaged"),
    "config of an unknown format": (_edit_json("config.json", lambda d: d.update(format=99)), "format"),
    "config with an unknown preset": (_edit_json("config.json", lambda d: d["model"].update(preset="huge")), "preset"),
    "image_shape of the wrong rank": (_edit_json("config.json", lambda d: d["model"].update(image_shape=[28])),
                                      "image_shape"),
    "a required key missing": (_edit_json("config.json", lambda d: d["model"].pop("zdim")), "model.zdim is missing"),
    "an unknown key": (_edit_json("config.json", lambda d: d["train"].update(turbo=True)), "train.turbo"),
    "absurd epochs": (_edit_json("config.json", lambda d: d["train"].update(epochs=10**12)), "epochs"),
}


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if the command blocks: SIGALRM interrupts a blocking open or read."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("the command blocked for 30 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _run(args: list[str], capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    """``vaekit ARGS`` in this process, as a CompletedProcess (argparse's errors exit through SystemExit)."""
    from vaekit.cli import main

    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


def _tampered(finished: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of the finished run with the damage of ``case``, and what its error line must say."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    tamper, needle = TAMPERS[case]
    tamper(run)
    return run, needle


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_a_tampered_run_folder_is_one_line_and_exit_2(case: str, finished: Path, tmp_path: Path, capsys,
                                                      deadline: None) -> None:
    run, needle = _tampered(finished, tmp_path, case)
    _one_line_exit_2(_run(["evaluate", str(run)], capsys), needle)


@pytest.mark.parametrize("case", ["summary holds a 5,000-digit number", "metrics hold nan", "config is a FIFO"])
def test_the_report_and_plot_refuse_them_too(case: str, finished: Path, tmp_path: Path, capsys,
                                             deadline: None) -> None:
    run, needle = _tampered(finished, tmp_path, case)
    _one_line_exit_2(_run(["report", str(run)], capsys), needle)
    _one_line_exit_2(_run(["plot", str(run)], capsys), needle)


def test_resume_with_a_fifo_checkpoint_is_one_line(finished: Path, tmp_path: Path, capsys, deadline: None) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint.safetensors").unlink()
    os.mkfifo(run / "checkpoint.safetensors")
    _one_line_exit_2(_run(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"], capsys), "named pipe")


def test_a_file_given_as_the_run_folder_is_named_as_a_file(finished: Path, capsys) -> None:
    _one_line_exit_2(_run(["sample", str(finished / "config.json"), "--out", str(finished.parent / "s.png")], capsys),
                     "config.json is a file, not a run folder")


def test_load_run_raises_the_run_folder_error_for_huge_numbers(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").write_text('{"test_loss": ' + "7" * 5000 + "}")
    with pytest.raises(vaekit.VaekitError, match="thousands of digits"):
        vaekit.load_run(run)


@pytest.mark.parametrize(("args", "needle"), [
    (["train", "--seed", "99999999999999999999999999999"], "--seed"),
    (["train", "--grid-size", "100000000"], "--grid-size"),
    (["plot", "RUN", "--grid-size", "100000000"], "--grid-size"),
    (["train", "--out", "x" * 300], "255"),
    (["train", "--out", "/".join(["y" * 200] * 25)], "4096"),
    (["evaluate", "RUN", "--device", "tpu"], "unknown device"),
])
def test_bad_arguments_are_one_line_and_exit_2_before_anything_is_written(
        args: list[str], needle: str, finished: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [str(finished) if a == "RUN" else a for a in args]
    _one_line_exit_2(_run(args, capsys), needle)
    assert list(tmp_path.iterdir()) == []  # no run folder left behind


def test_ctrl_c_while_the_data_loads_stops_a_command_started_with_sigint_ignored(data: Path, tmp_path: Path,
                                                                                capsys) -> None:
    """A background job inherits an ignored SIGINT; a Ctrl-C that comes before training has its own handler
    (here: as the data start loading) still stops the command with 130, instead of training to the end."""
    def ctrl_c_as_the_data_load(frame: object, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is resolve.load_splits.__code__:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setprofile(ctrl_c_as_the_data_load)
    try:
        code = main(["train", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "1", "--device", "cpu",
                     "--quiet", "--no-artifacts", "--out", str(tmp_path / "run")])
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "vaekit train: interrupted" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is previous  # the command leaves the process as it found it


@pytest.mark.slow  # a real training process, stopped by a real signal
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_training_with_128_plus_its_number(signum: int, code: int, data: Path, tmp_path: Path) -> None:
    """Started with SIGINT ignored (as a background job is), training still stops on it, checkpoint saved."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--dataset", "mnist", "--data-dir", str(data),
                             "--epochs", "1000", "--batch-size", "8", "--device", "cpu", "--quiet", "--no-artifacts",
                             "--checkpoint-every", "1",
                             "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:  # inside fit()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert (out / "checkpoint.safetensors").exists()
