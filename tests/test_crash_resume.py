"""Crash-safe training: SIGKILL at random moments, resume with --resume each time, lose nothing.

The kill/resume test drives real ``python -m vaekit train`` processes through the harness of
``benchmarks/fault_soak.py`` (the soak runs it with 50 kills); the tests after it place a stop exactly in the
windows a random kill rarely hits: before the run's config exists, after its last checkpoint but before its
summary, while it draws its figures, and between ``--force`` removing an old run and the new run's first
checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import run as runs
from vaekit.artifacts import FINAL_OUTPUTS, figures
from vaekit.cli import build_parser, main
from vaekit.cli.train import config_from_args
from vaekit.config import TrainConfig
from vaekit.errors import NonFiniteError

from .conftest import hermetic_env, write_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fault_soak", BENCHMARKS / "fault_soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_soak"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    """Three SIGKILLs (at random moments of start-up or a random delay after the latest checkpoint),
    ``--resume`` after each: every file whole after every kill, the final weights bit for bit those of an
    uninterrupted run, and every epoch once in metrics.csv. ``benchmarks/fault_soak.py`` does fifty."""
    soak = _soak_module()
    data = soak.write_small_dataset(tmp_path / "data", 256, 64)
    # seed 4: the early kill (at a random moment of start-up) is the third, when the shortest start-up seen is
    # that of a lone process: a start-up measured under load could outlast the whole of a resumed run
    result = soak.kill_resume_soak(data, tmp_path, kills=3, epochs=12, seed=4, early_kill_rate=0.2)
    print(f"\n{result.kills} kills, {result.starts} starts, {result.seconds:.1f} s, "
          f"{result.seconds_per_kill:.1f} s per kill\n  " + "\n  ".join(result.log))
    assert result.problems == []
    assert result.kills == 3, result.log
    rows = runs.read_metrics(tmp_path / "killed")
    assert [r["epoch"] for r in rows] == list(range(1, 13))


# ---------------------------------------------------------------------------------------------- exact windows


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, grid_size=2, checkpoint_every=3, artifacts=False), **kw})


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


class KillAt(vaekit.Callback):
    """Dies at the first call of hook ``hook``, after the default callbacks (which run first) had theirs."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _reached(self, hook: str) -> None:
        if hook == self.hook:
            raise Killed

    def on_fit_start(self, trainer) -> None:
        self._reached("on_fit_start")

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._reached("on_epoch_start")

    def on_fit_end(self, trainer) -> None:
        self._reached("on_fit_end")


def _assert_same_run(run: Path, reference: Path, outputs: tuple[str, ...] = ()) -> None:
    a, b = load_file(run / runs.WEIGHTS), load_file(reference / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("epoch", "train_loss", "test_loss", "lr")
    assert [[r[k] for k in keys] for r in runs.read_metrics(run)] == \
        [[r[k] for k in keys] for r in runs.read_metrics(reference)]
    assert runs.read_summary(run)["test_loss"] == runs.read_summary(reference)["test_loss"]
    assert runs.is_complete(run, 1, outputs)


def _kill_at(monkeypatch: pytest.MonkeyPatch, module: object, name: str, when=lambda *a, **k: True,
             after: bool = False) -> None:
    """Make the public function ``module.name`` die (before or after doing its work) the first time ``when``
    holds."""
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


WINDOWS = ["after the last checkpoint", "before the summary", "while drawing figures"]


@pytest.mark.parametrize("window", WINDOWS)
def test_killed_while_finishing_resumes_to_finish(window: str, data: Path, reference: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Killed after the last step: the resumed run finishes (weights, metrics, summary and, when the run makes
    them, its artifacts) instead of refusing with "already has 1 epochs", and is then the uninterrupted run."""
    out = tmp_path / "run"
    callbacks: list[vaekit.Callback] = []
    artifacts = window == "while drawing figures"
    if window == "after the last checkpoint":  # the epoch's checkpoint is written; its weights are next
        _kill_at(monkeypatch, runs, "save_weights")
    elif window == "before the summary":
        callbacks.append(KillAt("on_fit_end"))
    else:  # two of the five figures drawn
        _kill_at(monkeypatch, figures, "save_figure", lambda fig, path: Path(path).name == figures.FIGURES[2])
    with pytest.raises(Killed):
        vaekit.train(_cfg(data, artifacts=artifacts), out, callbacks=callbacks)
    monkeypatch.undo()
    outputs = FINAL_OUTPUTS if artifacts else ()
    assert runs.read_tensors(out / runs.CHECKPOINT) and not runs.is_complete(out, 1, outputs)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    _assert_same_run(out, reference, outputs)
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2  # now it is finished
    assert "already has 1 epochs" in capsys.readouterr().err


def test_metrics_left_behind_by_a_kill_catch_up_when_resumed(data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between an epoch's checkpoint and its metrics, again and again: metrics.csv never falls more than
    that one epoch behind the checkpoint, because a resumed run rewrites it from the checkpoint first."""
    out = tmp_path / "run"
    for epoch in (1, 2):
        _kill_at(monkeypatch, runs, "write_metrics", lambda path, rows, e=epoch: rows[-1]["epoch"] == e)
        with pytest.raises(Killed):
            vaekit.train(_cfg(data, epochs=3), out, resume=epoch > 1)
        monkeypatch.undo()
        assert [r["epoch"] for r in runs.read_metrics(out)] == list(range(1, epoch)), "one epoch behind"
    with pytest.raises(Killed):  # the resumed run dies before its first step
        vaekit.train(_cfg(data, epochs=3), out, resume=True, callbacks=[KillAt("on_epoch_start")])
    assert [r["epoch"] for r in runs.read_metrics(out)] == [1, 2], "caught up with the checkpoint"


def test_force_then_killed_never_resumes_the_replaced_run(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    vaekit.train(_cfg(data, seed=5), out)  # the run to be replaced
    with pytest.raises(Killed):  # the old run is removed and the new config written; no step taken yet
        vaekit.train(_cfg(data), out, force=True, callbacks=[KillAt("on_fit_start")])
    left = sorted(p.name for p in out.iterdir() if not runs.is_temporary(p.name))
    assert left == [runs.CONFIG], left  # only the new run's config: the old run is gone
    assert json.loads((out / runs.CONFIG).read_text())["train"]["seed"] == 0
    vaekit.train(_cfg(data), out, resume=True)
    _assert_same_run(out, reference)


class AnomalyProbe(vaekit.Callback):
    """Records whether anomaly mode is on at every step."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_step_end(self, trainer, result) -> None:
        self.modes.append(torch.is_anomaly_enabled())


class NaNWeight(vaekit.Callback):
    """Puts a NaN into the decoder before the first step: its forward and backward produce NaN."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        with torch.no_grad():
            trainer.model.decoder[-1].weight[0, 0] = float("nan")


@pytest.mark.filterwarnings("ignore:Error detected in")
def test_detect_anomaly_turns_anomaly_mode_on_and_reports_its_finding_in_one_line(data: Path,
                                                                                  tmp_path: Path) -> None:
    config, _ = config_from_args(build_parser().parse_args(["train", "--detect-anomaly"]))
    assert config.detect_anomaly is True
    probe = AnomalyProbe()
    vaekit.train(_cfg(data, detect_anomaly=True), tmp_path / "run", callbacks=[probe])
    assert probe.modes and all(probe.modes), "anomaly mode is on for every training step"
    assert json.loads((tmp_path / "run" / runs.CONFIG).read_text())["train"]["detect_anomaly"] is True
    assert not torch.is_anomaly_enabled(), "and off again afterwards"
    off = AnomalyProbe()
    vaekit.train(_cfg(data), tmp_path / "plain", callbacks=[off])
    assert off.modes and not any(off.modes)

    # A NaN in the backward pass: anomaly mode names the operation; vaekit reports it in one line.
    with pytest.raises(NonFiniteError) as info:
        vaekit.train(_cfg(data, detect_anomaly=True), tmp_path / "nan", callbacks=[NaNWeight()])
    message = str(info.value)
    assert "\n" not in message and message.startswith("--detect-anomaly stopped training: Function '")
    assert "Backward" in message and "no checkpoint had been written yet" in message
    assert not torch.is_anomaly_enabled()
