"""Experiment trackers: what --mlflow and --wandb send, read back with each tracker's own tools, resume into the
same tracker run, a missing package as one line, and a broken tracker costing one warning, not the run."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import vaekit
from vaekit.config import ConfigError, TrainConfig
from vaekit.training.trackers import TrackerError, WandbTracker

from .conftest import write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("trackers") / "data", 256, 64)


def _cfg(data: Path, **kw: object) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=64, device="cpu", progress=False,
                artifacts=False, val_fraction=0.25)
    return TrainConfig(**{**base, **kw})


def _columns(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as (epoch, value) series per column, the cells a row leaves empty left out."""
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    return {c: [(int(r["epoch"]), float(r[c])) for r in rows if r[c]] for c in rows[0] if c != "epoch"}


def _tracker_run(run: Path, name: str) -> str:
    return json.loads((run / "trackers.json").read_text())[name]["run_id"]


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for consent to its file store
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return (tmp_path / "mlruns").as_uri()


def test_mlflow_gets_the_metrics_params_summary_and_files(data: Path, tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    vaekit.train(_cfg(data, mlflow=mlflow_uri, artifacts=True), run)
    client = MlflowClient(tracking_uri=mlflow_uri)
    logged = client.get_run(_tracker_run(run, "mlflow"))
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    for column, series in _columns(run).items():  # the final test numbers too, at the last epoch
        history = [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, column)]
        assert [s for s, _ in history] == [s for s, _ in series], column
        assert [v for _, v in history] == pytest.approx([v for _, v in series], rel=1e-6, abs=1e-6), column
    summary = json.loads((run / "summary.json").read_text())
    assert logged.data.metrics["n_params"] == summary["n_params"]
    assert logged.data.metrics["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert logged.data.params["train.epochs"] == "2" and logged.data.params["model.zdim"] == "2"
    assert logged.data.params["model.encoder_hidden"] == "[256, 64, 32]"
    files = {f.path for f in client.list_artifacts(logged.info.run_id)}
    assert {"config.json", "metrics.csv", "summary.json", "README.md", "report.html"} <= files
    assert "model.safetensors" not in files


def test_mlflow_resume_continues_the_same_run(data: Path, tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    vaekit.train(_cfg(data, epochs=1, mlflow=mlflow_uri), run)
    first = _tracker_run(run, "mlflow")
    vaekit.train(_cfg(data, epochs=3, mlflow=""), run, resume=True)  # bare: the URI the run was tracked at
    assert _tracker_run(run, "mlflow") == first
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert len(client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(first, "train_loss")] == [1, 2, 3]
    assert client.get_run(first).info.status == "FINISHED"


def _inspect(path: Path, *flags: str) -> str:
    """An offline W&B run as W&B's own reader prints it: ``wandb leet inspect --json`` (one record a line;
    with ``--summary`` one object)."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and "No such command" in done.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` to read an offline run with")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wandb_offline_run_and_its_resume(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run = tmp_path / "run"
    vaekit.train(_cfg(data, wandb="vaekit-tests"), run)
    vaekit.train(_cfg(data, epochs=3, wandb="vaekit-tests"), run, resume=True)
    run_id = _tracker_run(run, "wandb")
    folders = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(folders) == 2  # one W&B run, written in two sessions
    records = [json.loads(line) for folder in folders for line in _inspect(folder).splitlines() if line.strip()]
    assert {r["run"]["run_id"] for r in records if r["type"] == "run"} == {run_id}
    assert {r["run"]["project"] for r in records if r["type"] == "run"} == {"vaekit-tests"}
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    for column, series in _columns(run).items():
        logged = [(int(h["epoch"]), h[column]) for h in history if column in h]
        if column.startswith("test_"):  # measured once, after training: the summary has it
            assert not logged
            continue
        assert [e for e, _ in logged] == [e for e, _ in series], column
        assert [v for _, v in logged] == pytest.approx([v for _, v in series], rel=1e-6, abs=1e-6), column
    summary = json.loads((run / "summary.json").read_text())
    last = folders[-1]  # the resumed session: named by its start time (and -1 within the same second)
    state = json.loads(_inspect(last, "--summary"))
    assert state["state"] == "finished" and state["summary"]["test_loss"] == pytest.approx(summary["test_loss"])
    assert state["config"]["train"]["epochs"] == 3 and state["config"]["model"]["zdim"] == 2
    assert (last / "files" / "summary.json").read_text() == (run / "summary.json").read_text()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_tracker_package_is_one_line_before_any_data(data: Path, tmp_path: Path, name: str) -> None:
    """Without the package (hidden from the child) vaekit imports and its CLI runs, and --NAME is one line."""
    code = (f"import sys; sys.modules[{name!r}] = None\n"
            "import vaekit\n"
            "from vaekit.cli import main\n"
            f"sys.exit(main(['train', '--dataset', 'mnist', '--data-dir', {str(data)!r}, '--epochs', '1', "
            f"'--device', 'cpu', '--{name}', '--out', {str(tmp_path / 'run')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and f'pip install "vaekit[{name}]"' in done.stderr
    assert not (tmp_path / "run").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracker_costs_one_warning_not_the_run(data: Path, tmp_path: Path, mlflow_uri: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server that is down, found out at once
    uri = f"http://127.0.0.1:{_closed_port()}"
    run = vaekit.train(_cfg(data, mlflow=uri), tmp_path / "run")
    assert len(run.metrics) == 2 and (tmp_path / "run" / "summary.json").exists()
    warnings = [line for line in capfd.readouterr().err.splitlines() if "--mlflow" in line]
    assert len(warnings) == 1 and "training goes on without mlflow" in warnings[0], warnings
    with pytest.raises(TrackerError, match="--mlflow could not start its run .*--resume"):
        vaekit.train(_cfg(data, mlflow=uri, strict_trackers=True), tmp_path / "strict")


def test_a_bad_wandb_project_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a W&B project name"):
        WandbTracker(Path("run"), "team/project")
