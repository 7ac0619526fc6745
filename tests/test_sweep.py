"""``vaekit sweep``: Optuna trials as run folders, the validation objective, pruning, bad space files, and
several workers on one SQLite study (one of them killed).

Trials are tiny (600 generated images, two epochs); the workers test starts real ``vaekit sweep`` processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaekit import run as runs
from vaekit.cli import main
from vaekit.experiments.sweep import SWEEP

optuna = pytest.importorskip("optuna")

SPACE = """
[fixed]
data-dir = "{data}"
epochs = 2
batch-size = 64
val-fraction = 0.2
no-artifacts = true
[search.lr]
low = 1e-4
high = 1e-2
log = true
[search.zdim]
choices = [2, 4]
[sampler]
name = "random"
seed = 0
"""


def _space(folder: Path, data: Path, extra: str = "", name: str = "space") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SPACE.format(data=data) + extra)
    return path


def _study(sweep: Path, name: str = "space") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'study.db'}")


def test_three_trials_best_is_the_lowest_validation_loss_never_a_test_number(tiny_data: Path, tmp_path: Path) -> None:
    space, sweep = _space(tmp_path, tiny_data), tmp_path / "sweep"
    assert main(["sweep", str(space), "--trials", "3", "--out", str(sweep)]) == 0
    folders = sorted(p.name for p in sweep.glob("trial-*"))
    assert folders == ["trial-0000", "trial-0001", "trial-0002"]
    summaries = {p: runs.read_summary(sweep / p) for p in folders}
    for name, summary in summaries.items():  # each trial's best validation loss is the lowest of its epochs
        rows = runs.read_metrics(sweep / name)
        assert math.isclose(summary["best_val_loss"], min(r["val_loss"] for r in rows), rel_tol=1e-6)  # csv: rounded
        assert json.loads((sweep / name / "trial.json").read_text())["state"] == "complete"
    best = json.loads((sweep / "best.json").read_text())
    winner = min(folders, key=lambda p: summaries[p]["best_val_loss"])
    assert best["value"] == summaries[winner]["best_val_loss"]
    assert best["value"] != summaries[winner]["test_loss"]  # the objective is the validation number
    assert Path(best["run_folder"]) == sweep / winner and best["trials"] == {"complete": 3}
    assert {t.number: t.value for t in _study(sweep).trials} == {
        int(p[-4:]): summaries[p]["best_val_loss"] for p in folders}
    # run again: the command joins the study and adds its trials after the others
    assert main(["sweep", str(space), "--trials", "1", "--out", str(sweep)]) == 0
    assert sorted(t.number for t in _study(sweep).trials) == [0, 1, 2, 3] and (sweep / "trial-0003").is_dir()


def test_compare_lists_the_trials_of_a_sweep(tiny_data: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(_space(tmp_path, tiny_data)), "--trials", "2", "--out", str(sweep)]) == 0
    capsys.readouterr()
    assert main(["compare", str(sweep), "--json"]) == 0
    names = [Path(e["name"]).name for e in json.loads(capsys.readouterr().out)["entries"]]
    assert names == ["trial-0000", "trial-0001"]
    # the folder belongs to its study: another one is refused before anything runs, as is a storage that is no URL
    for flags, expected in ((["--study", "other"], "holds the trials of another sweep"),
                            (["--storage", "study.db"], "is not a URL")):
        assert main(["sweep", str(tmp_path / "space.toml"), "--trials", "1", "--out", str(sweep), *flags]) == 2
        assert expected in capsys.readouterr().err
    assert sorted(p.name for p in sweep.glob("trial-*")) == ["trial-0000", "trial-0001"]


def test_a_pruned_trial_stops_after_its_epoch_and_its_run_folder_stays(tiny_data: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Optuna's ThresholdPruner with upper 0 prunes every trial: a validation loss in nats is always above 0
    space = _space(tmp_path, tiny_data, '[pruner]\nname = "threshold"\nupper = 0.0\n')
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(space), "--trials", "2", "--out", str(sweep)]) == 1  # no trial completed
    assert "no trial of study 'space' has completed" in capsys.readouterr().err
    assert [t.state for t in _study(sweep).trials] == [optuna.trial.TrialState.PRUNED] * 2
    for folder in sorted(sweep.glob("trial-*")):
        record = json.loads((folder / "trial.json").read_text())
        assert record["state"] == "pruned" and record["pruned_at_epoch"] == 1
        assert [r["epoch"] for r in runs.read_metrics(folder)] == [1]  # stopped after epoch 1 of 2
        assert runs.read_summary(folder)["epochs"] == 1  # and finished as a normal run folder
    assert not (sweep / "best.json").exists()


BAD = {
    "flag": ("[fixed]\nepochz = 3\n[search.lr]\nlow = 0.1\nhigh = 0.2\n", "'epochz' is not a vaekit train flag"),
    "underscore": ("[search.batch_size]\nlow = 8\nhigh = 16\n", "flags use dashes: batch-size"),
    "range": ("[search.lr]\nlow = 0.1\nhigh = 0.01\n", "low (0.1) must be below high (0.01)"),
    "log": ("[search.beta]\nlow = 0\nhigh = 1\nlog = true\n", "a log range needs low > 0"),
    "seed": ("[search.seed]\nchoices = [0, 1]\n", "--seed cannot be searched"),
    "test": ("[search.test-fraction]\nlow = 0.1\nhigh = 0.2\n", "--test-fraction cannot be searched"),
    "value": ("[search.lr]\nchoices = [-1]\n", "argument --lr: expected a positive number"),
    "no-val": ("[fixed]\nval-fraction = 0\n[search.lr]\nlow = 0.1\nhigh = 0.2\n", "--val-fraction must be above 0"),
    "seeds": ("[fixed]\nseeds = \"0,1\"\n[search.lr]\nlow = 0.1\nhigh = 0.2\n", "--seeds is set by vaekit sweep"),
    "managed": ("[fixed]\nout = \"x\"\n[search.lr]\nlow = 0.1\nhigh = 0.2\n", "--out is set by vaekit sweep"),
    "nothing": ("[fixed]\nepochs = 2\n", "searches nothing"),
    "toml": ("[search.lr\n", "cannot be read as TOML"),
    "pruner": ("[pruner]\nname = \"median\"\nbogus = 1\n[search.lr]\nlow = 0.1\nhigh = 0.2\n", "'bogus'"),
    "section": ("[serach.lr]\nlow = 0.1\nhigh = 0.2\n", "unknown section [serach]"),
    "nested": ("[search.zdim]\nchoices = [[3], 4]\n", "each choice must be one value"),
    "twice": ("[search.zdim]\nchoices = [2, 4, 2]\n", "the choice 2 is given twice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_space_file_is_one_line_and_exit_2(case: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD[case]
    (tmp_path / "bad.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "bad.toml"), "--trials", "1", "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "sweep").exists()  # nothing written


def test_without_optuna_the_command_names_the_extra_and_nothing_else_needs_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code = "import sys, vaekit, vaekit.cli; vaekit.cli.build_parser(); sys.exit('optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0  # never imported by the CLI
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    (tmp_path / "space.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 0.2\n")
    assert main(["sweep", str(tmp_path / "space.toml"), "--trials", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == 'vaekit sweep: error: vaekit sweep needs Optuna: pip install "vaekit[sweep]"\n'


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a process started from a background shell inherits it


def _worker(space: Path, sweep: Path, trials: int, *extra: str) -> subprocess.Popen:
    """A ``vaekit sweep`` process that starts with SIGINT ignored, whatever this test process inherited: a
    Ctrl-C must stop it anyway."""
    return subprocess.Popen([sys.executable, "-m", "vaekit", "sweep", str(space), "--trials", str(trials), "--out",
                             str(sweep), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_ctrl_c)


def _finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out


def _running_trial_of(sweep: Path, pid: int, deadline: float, training: bool = True) -> optuna.trial.FrozenTrial:
    """The trial worker ``pid`` is running, waited for until ``deadline``; with ``training``, only once it is
    training (its run folder started)."""
    from sqlalchemy.exc import OperationalError

    while time.monotonic() < deadline:
        try:  # read once a worker has made the study (sweep.json follows it), never racing it to make it
            trials = _study(sweep).trials if (sweep / SWEEP).exists() else []
        except (KeyError, OperationalError):
            trials = []
        for t in trials:
            folder = Path(t.user_attrs.get("run_folder", "/nonexistent"))
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}") \
                    and ((folder / runs.CONFIG).exists() or not training):
                return t
        time.sleep(0.2)
    raise AssertionError("the worker never started training a trial")


def _stopped_in_trial(sweep: Path, worker: subprocess.Popen, deadline: float) -> optuna.trial.FrozenTrial:
    """Worker ``worker`` frozen (SIGSTOP) while it trains a trial, and that trial.

    Its trials last about a second, so a poll of the study could miss every one of them on a busy machine. The
    folders are watched instead, and the worker is frozen as soon as a new trial folder starts: then the study is
    read at leisure, and the worker resumed if the new trial was another worker's or already over.
    """
    from sqlalchemy.exc import OperationalError

    seen: set[Path] = set()
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(f"the worker ended before it was caught in a trial: {worker.communicate()[1]}")
        new = {p for p in sweep.glob(f"trial-*/{runs.CONFIG}")} - seen
        if not new:
            time.sleep(0.01)
            continue
        seen |= new
        worker.send_signal(signal.SIGSTOP)
        try:
            trials = _study(sweep).trials
        except OperationalError:  # frozen while it held the database's write lock: let it go and wait for the next
            trials = []
        for t in trials:
            folder = Path(t.user_attrs.get("run_folder", "/nonexistent"))
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{worker.pid}") \
                    and folder / runs.CONFIG in new:
                return t
        worker.send_signal(signal.SIGCONT)
    raise AssertionError("the worker never started training a trial")


@pytest.mark.slow
def test_two_workers_share_one_study_and_survive_a_killed_one(tiny_data: Path, tmp_path: Path) -> None:
    space = _space(tmp_path, tiny_data)
    sweep = tmp_path / "sweep"
    workers = [_worker(space, sweep, 2) for _ in range(2)]  # started together on a study that does not exist yet
    for w in workers:
        _finish(w)
    trials = _study(sweep).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # 2 + 2, none run twice, none lost
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(p.name for p in sweep.glob("trial-*")) == [f"trial-{n:04d}" for n in range(4)]

    # a worker killed mid-trial: the other completes its own trials; the killed trial is never run again
    killed, other = _worker(space, sweep, 3, "--heartbeat", "2"), _worker(space, sweep, 2, "--heartbeat", "2")
    victim = _stopped_in_trial(sweep, killed, time.monotonic() + 120)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    _finish(other)
    time.sleep(4.5)  # past the heartbeat's grace period: the next worker to start marks the trial failed
    _finish(_worker(space, sweep, 1, "--heartbeat", "2"))
    trials = {t.number: t for t in _study(sweep).trials}
    assert sorted(trials) == list(range(len(trials)))  # numbered without a gap or a repeat
    assert trials[victim.number].state.name == "FAIL"
    worker_of = {n: t.user_attrs["worker"] for n, t in trials.items()}
    finished = ("COMPLETE", "PRUNED")  # by now the median pruner has enough trials to prune a lagging one
    assert sum(w.endswith(f":{other.pid}") and trials[n].state.name in finished for n, w in worker_of.items()) == 2
    assert [n for n, t in trials.items() if t.state.name not in (*finished, "FAIL")] == []
    best = json.loads((sweep / "best.json").read_text())
    done = [t.value for t in trials.values() if t.state.name == "COMPLETE"]
    assert best["value"] == min(done)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["while-training", "as-the-trial-starts"])
def test_ctrl_c_ends_the_trial_failed_not_running(tiny_data: Path, tmp_path: Path, training: bool) -> None:
    path, sweep = _space(tmp_path, tiny_data), tmp_path / "sweep"
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 200"))  # a trial long enough to interrupt
    worker = _worker(path, sweep, 2)
    trial = _running_trial_of(sweep, worker.pid, time.monotonic() + 120, training)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130 and "the current trial is marked failed" in err.strip().splitlines()[-1]
    assert [(t.number, t.state.name) for t in _study(sweep).trials] == [(trial.number, "FAIL")]
    folder = sweep / f"trial-{trial.number:04d}"
    assert folder.is_dir() or not training  # stopped before its folder was made, a trial leaves none
    if folder.is_dir():  # a folder it did make says the trial failed, and why
        record = json.loads((folder / "trial.json").read_text())
        assert record["state"] == "failed" and record["error"].startswith("interrupted")
