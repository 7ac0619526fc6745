"""Crash-safe training: SIGKILL at random moments, resume with --resume each time, lose nothing.

The kill/resume test drives real ``python -m vaekit train`` processes through the harness of
``benchmarks/fault_soak.py`` (the soak runs it with 50 kills); the tests after it place a stop exactly in the
windows a random kill rarely hits: before the run's config exists, after its last checkpoint but before its
summary, while it draws its figures, and between ``--force`` removing an old run and the new run's first
checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import runs
from vaekit.cli import main
from vaekit.config import TrainConfig

from .conftest import hermetic_env, write_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fault_soak", BENCHMARKS / "fault_soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_soak"] = module
    spec.loader.exec_module(module)
    return module


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    """Five SIGKILLs (at random moments of start-up or a random delay after the latest checkpoint),
    ``--resume`` after each: every file whole after every kill, the final weights bit for bit those of an
    uninterrupted run, and every epoch once in metrics.csv."""
    soak = _soak_module()
    data = soak.write_small_dataset(tmp_path / "data", 256, 64)
    result = soak.kill_resume_soak(data, tmp_path, kills=5, epochs=12, seed=3, early_kill_rate=0.2)
    print(f"\n{result.kills} kills, {result.starts} starts, {result.seconds:.1f} s, "
          f"{result.seconds_per_kill:.1f} s per kill\n  " + "\n  ".join(result.log))
    assert result.problems == []
    assert result.kills == 5, result.log
    rows = runs.read_metrics(tmp_path / "killed")
    assert [r["epoch"] for r in rows] == list(range(1, 13))


# ---------------------------------------------------------------------------------------------- exact windows


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, grid_size=2, checkpoint_every=3), **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("windows") / "data", 128, 32)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run as it ends when nothing goes wrong."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        vaekit.train(_cfg(data), out)
    return out


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in vaekit handles it."""


def _assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_file(run / runs.WEIGHTS), load_file(reference / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("epoch", "train_loss", "test_loss")
    assert [[r[k] for k in keys] for r in runs.read_metrics(run)] == \
        [[r[k] for k in keys] for r in runs.read_metrics(reference)]
    from vaekit.train import _final_outputs

    assert runs.is_complete(run, 1, _final_outputs())


def _kill_at(monkeypatch: pytest.MonkeyPatch, module: object, name: str, when=lambda *a, **k: True,
             after: bool = False) -> None:
    """Make ``module.name`` die (before or after doing its work) the first time ``when`` holds."""
    real = getattr(module, name)
    fired = []

    def dying(*args: object, **kwargs: object) -> object:
        hit = not fired and when(*args, **kwargs)
        if hit and not after:
            fired.append(1)
            raise Killed
        out = real(*args, **kwargs)
        if hit:
            fired.append(1)
            raise Killed
        return out

    monkeypatch.setattr(module, name, dying)


def test_killed_before_its_config_resumes_from_scratch(data: Path, reference: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    _kill_at(monkeypatch, runs, "write_config")
    with pytest.raises(Killed):
        vaekit.train(_cfg(data), out)
    monkeypatch.undo()
    (out / runs.LOCK).write_text("999999999 " + __import__("socket").gethostname() + "\n")  # as SIGKILL leaves it
    assert runs.is_unstarted(out)
    vaekit.train(_cfg(data), out, resume=True)
    _assert_same_run(out, reference)


@pytest.mark.parametrize("window", ["after the last checkpoint", "before the summary", "while drawing figures"])
def test_killed_while_finishing_resumes_to_finish(window: str, data: Path, reference: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The old behaviour refused such a run ("already has 1 epochs") and left it without summary or figures."""
    train_mod = importlib.import_module("vaekit.train")
    out = tmp_path / "run"
    if window == "after the last checkpoint":
        _kill_at(monkeypatch, train_mod, "save_checkpoint", lambda *a: a[-1].epoch == 1 and a[-1].step_in_epoch == 0,
                 after=True)
    elif window == "before the summary":
        _kill_at(monkeypatch, runs, "write_json", lambda path, obj: Path(path).name == runs.SUMMARY)
    else:
        _kill_at(monkeypatch, train_mod.viz, "save_samples")
    with pytest.raises(Killed):
        vaekit.train(_cfg(data), out)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    _assert_same_run(out, reference)
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2  # now it is finished
    assert "already has 1 epochs" in capsys.readouterr().err


def test_metrics_left_behind_by_a_kill_catch_up_when_resumed(data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between an epoch's checkpoint and its metrics, again and again: metrics.csv never falls more than
    that one epoch behind the checkpoint, because a resumed run rewrites it from the checkpoint first."""
    train_mod = importlib.import_module("vaekit.train")
    out = tmp_path / "run"
    for epoch in (1, 2):
        _kill_at(monkeypatch, train_mod, "save_checkpoint", lambda *a, e=epoch: a[-1].epoch == e, after=True)
        with pytest.raises(Killed):
            vaekit.train(_cfg(data, epochs=3), out, resume=epoch > 1)
        monkeypatch.undo()
        assert [r["epoch"] for r in runs.read_metrics(out)] == list(range(1, epoch)), "one epoch behind"
    _kill_at(monkeypatch, train_mod, "save_checkpoint")  # the resumed run dies at its first checkpoint
    with pytest.raises(Killed):
        vaekit.train(_cfg(data, epochs=3), out, resume=True)
    assert [r["epoch"] for r in runs.read_metrics(out)] == [1, 2], "caught up with the checkpoint"


def test_force_then_killed_never_resumes_the_replaced_run(data: Path, reference: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    vaekit.train(_cfg(data, seed=5), out)  # the run to be replaced
    _kill_at(monkeypatch, runs, "write_config", after=True)
    with pytest.raises(Killed):
        vaekit.train(_cfg(data), out, force=True)
    monkeypatch.undo()
    left = sorted(p.name for p in out.iterdir() if not runs.is_temporary(p.name))
    assert left == [runs.CONFIG], left  # only the new run's config: the old run is gone
    assert json.loads((out / runs.CONFIG).read_text())["train"]["seed"] == 0
    vaekit.train(_cfg(data), out, resume=True)
    _assert_same_run(out, reference)


@pytest.mark.filterwarnings("ignore:Error detected in")
def test_detect_anomaly_is_accepted_and_turns_anomaly_mode_on(data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    train_mod = importlib.import_module("vaekit.train")
    real = train_mod.batch_loss
    modes: list[bool] = []

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        modes.append(torch.is_anomaly_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "batch_loss", recording)
    args = ["train", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "1", "--batch-size", "64",
            "--device", "cpu", "--quiet", "--grid-size", "2", "--out", str(tmp_path / "run")]
    assert main([*args, "--detect-anomaly"]) == 0
    assert modes and all(modes), "anomaly mode is on for every training step"
    assert json.loads((tmp_path / "run" / runs.CONFIG).read_text())["train"]["detect_anomaly"] is True
    assert not torch.is_anomaly_enabled(), "and off again afterwards"

    # A NaN made in the backward pass: anomaly mode names the operation; vaekit reports it in one line.
    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_mod, "batch_loss", poisoned)
    capsys.readouterr()
    assert main([*args, "--detect-anomaly", "--force"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit train: error:")]
    assert len(err) == 1 and "--detect-anomaly stopped training" in err[0] and "Backward" in err[0], err
