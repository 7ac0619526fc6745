"""Experiment trackers: MLflow and Weights & Biases, for users who keep their runs in one of them.

``vaekit train --mlflow [URI]`` and ``--wandb [PROJECT]`` add a :class:`Tracker` callback that sends the run's
config (flattened, as params), every epoch's row of ``metrics.csv`` (at the epoch as the step), and once the run
has finished its ``summary.json`` numbers and its small files (config, metrics, summary, model card, report;
never the weights) to the tracker. Each needs its package (``pip install "vaekit[mlflow]"`` or
``"vaekit[wandb]"``); a missing one stops training before any data is read, as TensorBoard's does.

The tracker's run id is kept in ``RUN/trackers.json``, so ``--resume`` continues the same MLflow or W&B run
and logs only the epochs the tracker has not seen. A tracker holds a copy of the run, not the run: when it fails
(server down, bad URI, no credentials) training goes on without it after one warning line, unless
``--strict-trackers`` asks for a stop (the run checkpointed, to resume once the tracker is back).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vaekit import run as runs
from vaekit.artifacts import CARD, REPORT
from vaekit.config import ConfigError, TrainConfig
from vaekit.errors import Interrupted, VaekitError
from vaekit.run.folder import TRACKER_RUNS
from vaekit.training.callbacks import Callback
from vaekit.training.messages import warn
from vaekit.training.trainer import Trainer

DEFAULT_PROJECT = "vaekit"  # the MLflow experiment and W&B project when neither flag nor environment names one
FILES = (runs.CONFIG, runs.METRICS, runs.SUMMARY, CARD, REPORT)  # what a tracker gets of the folder: small files
MAX_REASON = 300  # characters of a tracker's error message kept in the warning line


class TrackerError(VaekitError):
    """A tracker failed under ``--strict-trackers``: training stopped, its last checkpoint kept."""

    exit_code = 1


class Tracker(Callback):
    """What both trackers share: when to open, log, catch up and close, and what a failure does.

    A subclass names its package (``name``, also its flag and its extra) and implements ``_load`` (import the
    package), ``_open`` (start or continue the tracker's run, log the params; return the ids to keep),
    ``_log_rows``, ``_log_outcome`` and ``_close``. Only rank 0 tracks.
    """

    name = ""

    def __init__(self, run_dir: str | os.PathLike, target: str = "", *, resume: bool = False,
                 strict: bool = False) -> None:
        if not isinstance(target, str):
            raise ConfigError(f"{self.name} must be a string: the --{self.name} value (got {target!r})")
        self.run_dir, self.target, self.resume, self.strict = Path(run_dir), target, resume, strict
        self._check_target()
        try:
            self._load()  # before any data is read: a missing package is one line, not a late failure
        except ImportError as e:
            raise ConfigError(f'--{self.name} needs the {self.name} package: pip install "vaekit[{self.name}]" '
                              f"(or train without --{self.name})") from e
        self.active = False
        self.logged = 0  # the last epoch the tracker has
        self.last_row: dict[str, float] = {}  # the final epoch's row, whose numbers the summary repeats

    # ---------------------------------------------------------------------------------- the hooks
    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.ctx.is_main:  # one tracker run per training run: rank 0's
            self._guard("start its run", lambda: self._start(trainer))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        if self.active:
            self._guard(f"log epoch {int(row['epoch'])}", lambda: self._catch_up(trainer.state.history))

    def finish(self) -> None:
        """The run has written its summary and files: send them, and close the tracker's run as finished."""
        if self.active:
            summary = runs.read_summary(self.run_dir)
            files = [self.run_dir / n for n in FILES if (self.run_dir / n).is_file()]
            self._guard("log the run's summary", lambda: self._log_outcome(summary, files))
        if self.active:
            self._guard("close its run", lambda: self._close(None))
        self.active = False

    def fail(self, error: BaseException) -> None:
        """Training stopped on ``error``: close the tracker's run as killed or failed (a warning if that fails)."""
        if self.active:
            self.strict = False  # the run's own error is the one to report
            self._guard("close its run", lambda: self._close(error))
        self.active = False

    # ---------------------------------------------------------------------------------- the common steps
    def _start(self, trainer: Trainer) -> None:
        stored = self._stored() if self.resume else None
        record = self._open(stored, runs.read_json(self.run_dir / runs.CONFIG), trainer.config)
        continued = stored is not None and stored.get("run_id") == record["run_id"]
        self.logged = int(stored.get("epochs_logged", 0)) if continued and stored else 0
        self.active = True
        self._save(record)
        self._catch_up(trainer.state.history)

    def _catch_up(self, history: list[dict[str, float]]) -> None:
        """Log the epochs the tracker has not seen: the last one, or after a resume all it missed."""
        rows = [r for r in history if int(r["epoch"]) > self.logged]
        self.last_row = dict(history[-1]) if history else {}
        if rows:
            self._log_rows(rows)
            self.logged = int(rows[-1]["epoch"])
            self._save({})

    def _all(self) -> dict[str, Any]:
        """RUN/trackers.json: each tracker's record by name ({} while there is none, or it is not an object)."""
        path = self.run_dir / TRACKER_RUNS
        every = runs.read_json(path) if path.exists() else {}
        return every if isinstance(every, dict) else {}

    def _stored(self) -> dict[str, Any] | None:
        record = self._all().get(self.name)
        return record if isinstance(record, dict) else None

    def _save(self, record: dict[str, Any]) -> None:
        """Keep this tracker's run id and the epochs it has in RUN/trackers.json, beside the other tracker's."""
        every = self._all()
        every[self.name] = {**every.get(self.name, {}), **record, "epochs_logged": self.logged}
        runs.write_json(self.run_dir / TRACKER_RUNS, every)

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action``; a failure ends this tracker for the run with one warning line, or under
        --strict-trackers stops training with one line (the last checkpoint kept)."""
        try:
            action()
        except VaekitError:
            raise  # vaekit's own errors (an unreadable run folder, a failed write) are not the tracker's
        except Exception as e:  # noqa: BLE001 - any failure inside the tracker's package: reported below
            self.active = False
            reason = " ".join(str(e).split())[:MAX_REASON] or type(e).__name__
            if self.strict:
                raise TrackerError(f"--{self.name} could not {what} ({reason}); training stopped with its "
                                   f"checkpoint kept: continue with vaekit train --resume --out {self.run_dir} "
                                   f"--{self.name} once {self.name} works, or drop --strict-trackers") from e
            warn(f"--{self.name} could not {what} ({reason}); training goes on without {self.name} "
                 "(--strict-trackers stops instead)")

    # ---------------------------------------------------------------------------------- each tracker's part
    def _check_target(self) -> None:
        """Refuse a malformed flag value (a tracker with rules for it overrides this)."""

    def _load(self) -> None:
        raise NotImplementedError

    def _open(self, stored: dict[str, Any] | None, config: dict[str, Any], train: TrainConfig) -> dict[str, Any]:
        raise NotImplementedError

    def _log_rows(self, rows: list[dict[str, float]]) -> None:
        raise NotImplementedError

    def _log_outcome(self, summary: dict[str, Any], files: list[Path]) -> None:
        raise NotImplementedError

    def _close(self, error: BaseException | None) -> None:
        raise NotImplementedError


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's sections as ``model.zdim``-style keys, as ``vaekit compare`` reads them."""
    from vaekit.experiments.collect import flatten

    return {k: v for section in ("model", "train", "data") for k, v in flatten(section, config.get(section)).items()}


def summary_numbers(summary: dict[str, Any], last_row: dict[str, float]) -> dict[str, float]:
    """The summary's numbers that the final epoch's row does not already give the tracker."""
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in last_row}


class MLflowTracker(Tracker):
    """An MLflow run in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``vaekit``) at the tracking URI
    given (``--mlflow URI``), or for a bare ``--mlflow`` MLflow's own default (``$MLFLOW_TRACKING_URI``).

    Metrics are logged with the epoch as their step. MLflow keeps a param's first value, so a resumed run whose
    ``--epochs`` grew says so in its config.json artifact, not in its params.
    """

    name = "mlflow"
    MAX_PARAM = 6000  # characters of a param's value MLflow stores

    def _load(self) -> None:
        from mlflow.tracking import MlflowClient

        self._client_class = MlflowClient

    def _open(self, stored: dict[str, Any] | None, config: dict[str, Any], train: TrainConfig) -> dict[str, Any]:
        import mlflow

        uri = self.target or (stored or {}).get("tracking_uri") or mlflow.get_tracking_uri()
        self.client = client = self._client_class(tracking_uri=uri)
        params = {k: self._param(v) for k, v in flat_params(config).items()}
        if stored and stored.get("tracking_uri") == uri and stored.get("run_id"):
            self.run_id = stored["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            have = client.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in have}
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            experiment = client.get_experiment_by_name(name)
            eid = experiment.experiment_id if experiment else client.create_experiment(name)
            self.run_id = client.create_run(eid, run_name=self.run_dir.name,
                                            tags={"vaekit_run_dir": str(self.run_dir.resolve())}).info.run_id
        items = [mlflow.entities.Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params in one request
            client.log_batch(self.run_id, params=items[i:i + 100])
        return {"tracking_uri": uri, "run_id": self.run_id}

    def _param(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= self.MAX_PARAM else text[:self.MAX_PARAM - 3] + "..."

    def _log_metrics(self, rows: Sequence[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1,000 metrics in one request
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def _log_rows(self, rows: list[dict[str, float]]) -> None:
        self._log_metrics([(int(r["epoch"]), {k: v for k, v in r.items() if k != "epoch"}) for r in rows])

    def _log_outcome(self, summary: dict[str, Any], files: list[Path]) -> None:
        step = int(self.last_row.get("epoch", summary.get("epochs", 0)))
        self._log_metrics([(step, summary_numbers(summary, self.last_row))])
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def _close(self, error: BaseException | None) -> None:
        stopped = isinstance(error, (Interrupted, KeyboardInterrupt))
        self.client.set_terminated(self.run_id, "FINISHED" if error is None else "KILLED" if stopped else "FAILED")


class WandbTracker(Tracker):
    """A W&B run in the project given (``--wandb PROJECT``), else ``$WANDB_PROJECT``, else ``vaekit``, named
    after the run folder; ``WANDB_MODE=offline`` keeps it on disk for a later ``wandb sync``. The run's config is
    the W&B config, each epoch's row is logged at the epoch as W&B's step, and the summary is the W&B summary."""

    name = "wandb"
    FORBIDDEN = "/\\#?%:"  # characters W&B refuses in a project name

    def _check_target(self) -> None:
        if len(self.target) > 128 or any(c in self.target for c in self.FORBIDDEN):
            raise ConfigError(f"--wandb {self.target!r} is not a W&B project name: at most 128 characters, "
                              f"none of {' '.join(self.FORBIDDEN)}")

    def _load(self) -> None:
        import wandb

        self._wandb = wandb

    def _open(self, stored: dict[str, Any] | None, config: dict[str, Any], train: TrainConfig) -> dict[str, Any]:
        project = self.target or (stored or {}).get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        same = bool(stored and stored.get("project") == project and stored.get("run_id"))
        sections = {k: config[k] for k in ("model", "train", "data") if k in config}
        self.run = self._wandb.init(
            project=project, name=self.run_dir.name, id=stored["run_id"] if same and stored else None,
            resume="allow" if same else None, config=sections, reinit="create_new",
            settings=self._wandb.Settings(silent=not train.progress))
        if same:  # a resumed run: settings it may change (--epochs) replace the first ones
            self.run.config.update(sections, allow_val_change=True)
        return {"project": project, "run_id": self.run.id}

    def _log_rows(self, rows: list[dict[str, float]]) -> None:
        for row in rows:
            self.run.log(dict(row), step=int(row["epoch"]))

    def _log_outcome(self, summary: dict[str, Any], files: list[Path]) -> None:
        self.run.summary.update(summary)
        for path in files:  # files in the W&B run's folder are uploaded with the run (or by wandb sync)
            shutil.copyfile(path, Path(self.run.dir) / path.name)

    def _close(self, error: BaseException | None) -> None:
        self.run.finish(exit_code=0 if error is None else getattr(error, "exit_code", 1))


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (MLflowTracker, WandbTracker)}


def tracker_callbacks(config: TrainConfig, run_dir: Path, resume: bool) -> list[Tracker]:
    """The trackers ``config`` asks for (``config.mlflow``, ``config.wandb``: None for none); each checks its
    package now, before the data is read."""
    return [cls(run_dir, getattr(config, name), resume=resume, strict=config.strict_trackers)
            for name, cls in TRACKERS.items() if getattr(config, name) is not None]


@contextlib.contextmanager
def tracked(callbacks: Sequence[Callback]) -> Iterator[None]:
    """Around training and the run's outputs: on success every tracker among ``callbacks`` gets the summary and
    files and closes its run as finished; on a failure or a stop, as failed or killed."""
    trackers = [cb for cb in callbacks if isinstance(cb, Tracker)]
    try:
        yield
    except BaseException as e:
        for tracker in trackers:
            tracker.fail(e)
        raise
    for tracker in trackers:
        tracker.finish()
