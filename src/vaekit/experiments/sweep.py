"""``vaekit sweep``: an Optuna study whose trials are ``vaekit train`` runs, one run folder each.

The objective is a trial's best validation loss (``best_val_loss`` of its summary.json), never a test number;
the per-epoch validation loss is reported to the trial, and a pruned trial stops after that epoch and still
finishes as a normal run folder (marked ``pruned`` in its ``trial.json``). The study lives in an Optuna RDB
storage: a SQLite file beside the trials by default, or any URL Optuna takes (PostgreSQL, MySQL) so that
workers on several machines share it. Trial numbers come from the storage, so two workers never run the same
trial, and trials send heartbeats, so a worker that dies leaves a trial that the next worker marks failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaekit import run as runs
from vaekit.config import ConfigError, TrainConfig
from vaekit.errors import Interrupted, NonFiniteError, VaekitError
from vaekit.experiments.space import PRUNERS, SAMPLERS, Param, Space
from vaekit.interrupt import ctrl_c_raises
from vaekit.text import printable
from vaekit.training.callbacks import Callback
from vaekit.training.trainer import Trainer

STUDY_DB = "study.db"
BEST = "best.json"
TRIAL = "trial.json"  # in each trial's run folder: its study, number, parameters, state and value
SWEEP = "sweep.json"  # in the sweep folder: the study and storage it belongs to
METRIC = "best validation loss: negative ELBO per validation image in nats (lowest over the epochs)"
INSTALL = 'vaekit sweep needs Optuna: pip install "vaekit[sweep]"'


def optuna() -> Any:
    """Optuna, or the one line that says how to install it (it is an optional extra)."""
    try:
        import optuna as module
    except ImportError:
        raise ConfigError(INSTALL) from None
    module.logging.set_verbosity(module.logging.ERROR)  # each trial's own line says how it ended, and why
    # heartbeats and fail_stale_trials are marked experimental; the sweep relies on them knowingly
    warnings.filterwarnings("ignore", category=module.exceptions.ExperimentalWarning)
    return module


class NotFinished(VaekitError):
    """A sweep in which no trial completed: there is no best trial to report."""

    exit_code = 1


class ReportToTrial(Callback):
    """Reports each epoch's ``val_loss`` to the Optuna trial and, when its pruner says so, ends training after
    the epoch (as early stopping does), so the pruned run still writes its weights and summary."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        self.trial.report(row["val_loss"], epoch)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = epoch
            trainer.stop_reason = f"pruned by the sweep after epoch {epoch} (val_loss {row['val_loss']:.3f})"


@dataclass
class Sweep:
    """What every trial of one sweep shares: the space, the folder, and how flag values become a config."""

    space: Space
    folder: Path
    study_name: str
    to_config: Callable[[dict[str, Any]], TrainConfig]  # flag values -> the TrainConfig `vaekit train` would use
    pruner: Any = field(init=False)
    sampler: Any = field(init=False)

    def __post_init__(self) -> None:
        """Build the pruner and sampler now, so that bad arguments for them fail before anything is written."""
        opt = optuna()
        self.pruner = build(opt, "pruner", *self.space.pruner)
        self.sampler = build(opt, "sampler", *self.space.sampler)

    def objective(self, trial: Any) -> float:
        """Train one trial's run folder and return its best validation loss (pruned: raise TrialPruned)."""
        params = {name: suggest(trial, p) for name, p in self.space.search.items()}
        out = self.folder / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_folder", str(out))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        report = ReportToTrial(trial)
        record = {"study": self.study_name, "trial": trial.number, "params": params}
        try:
            from vaekit.training import train

            finished = train(self.to_config({**self.space.fixed, **params}), out, callbacks=[report])
        except BaseException as e:
            unnamed = "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__
            error = " ".join(str(e).split()) or unnamed
            trial.set_user_attr("error", error)
            if out.is_dir():
                runs.write_json(out / TRIAL, {**record, "state": "failed", "error": error})
            raise
        value = float(finished.summary["best_val_loss"])  # the summary train() read back when it returned
        state = "complete" if report.pruned_at is None else "pruned"
        runs.write_json(out / TRIAL, {**record, "state": state, "value": value, "pruned_at_epoch": report.pruned_at})
        if report.pruned_at is not None:
            raise optuna().TrialPruned(f"pruned after epoch {report.pruned_at}")
        return value


def suggest(trial: Any, p: Param) -> Any:
    """The trial's value of one searched flag, drawn by Optuna's sampler."""
    if p.choices:
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.is_int:
        return trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)


def shown_url(url: str) -> str:
    """A storage URL fit to print and write down: its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported by open_storage, not here
        return url


def open_storage(url: str, heartbeat: int) -> Any:
    """Optuna's RDB storage at ``url``, with trial heartbeats every ``heartbeat`` seconds (a trial silent for
    twice that is stale and marked failed by the next worker); any failure to reach it is one line."""
    opt = optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait out other writers
    try:
        return opt.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat)
    except (ImportError, ValueError, RuntimeError, opt.exceptions.StorageInternalError) as e:
        raise ConfigError(f"--storage {shown_url(url)}: cannot open it ({' '.join(str(e).split())}); give an "
                          "Optuna RDB URL such as sqlite:///study.db or postgresql://user@host/db") from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, an unreachable server, a missing driver
        if type(e).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise ConfigError(f"--storage {shown_url(url)}: cannot open it ({' '.join(str(e).split())})") from None


def build(opt: Any, kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    """An Optuna pruner or sampler from its space-file name and arguments (bad arguments: one line)."""
    module, names = (opt.pruners, PRUNERS) if kind == "pruner" else (opt.samplers, SAMPLERS)
    try:
        return getattr(module, names[name])(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"space file [{kind}] {name}: {' '.join(str(e).split())}") from None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.sweep.lock`` while the study is created or joined, so workers starting together on a new
    SQLite file do not both create its tables."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; workers there should start one after the other
        yield
        return
    with open(folder / ".sweep.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(sweep: Sweep, url: str, heartbeat: int) -> Any:
    """Create the study, or join it when it exists; a joined study must have been started with the same space."""
    opt = optuna()
    space_json = json.dumps(sweep.space.raw, sort_keys=True, default=str)
    with folder_lock(sweep.folder):
        storage = open_storage(url, heartbeat)
        study = opt.create_study(study_name=sweep.study_name, storage=storage, direction="minimize",
                                 load_if_exists=True, pruner=sweep.pruner, sampler=sweep.sampler)
        stored = study.user_attrs.get("space")
        if stored is None:
            study.set_user_attr("space", space_json)
        elif stored != space_json:
            raise ConfigError(f"study {sweep.study_name!r} in {shown_url(url)} was started with another space file; "
                              "sweep with the same file, or start a new study with --study NAME")
    opt.storages.fail_stale_trials(study)  # trials of workers that died: FAIL, not RUNNING forever
    return study


def check_folder(folder: Path, study_name: str, url: str) -> dict[str, str] | None:
    """Refuse a sweep folder that records another study or storage; what to record in a new one (else None)."""
    mine = {"study": study_name, "storage": shown_url(url)}
    path = folder / SWEEP
    if not path.exists():
        return mine
    known = runs.read_json(path)
    if not isinstance(known, dict) or {k: known.get(k) for k in mine} != mine:
        raise ConfigError(f"{printable(folder)} holds the trials of another sweep ({printable(path)}); use its "
                          "--study and --storage to join it, or another --out")
    return None


def run_sweep(sweep: Sweep, trials: int, url: str, heartbeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Run ``trials`` more trials of the study (joining it if it exists); write and return the best trial."""
    record = check_folder(sweep.folder, sweep.study_name, url)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, url, heartbeat)
    if record is not None:
        runs.write_json(sweep.folder / SWEEP, record)

    def line(study: Any, t: Any) -> None:
        value = "" if t.value is None else f" value {t.value:.4f}"
        value += f" ({t.user_attrs['error']})" if "error" in t.user_attrs else ""
        say(f"trial {t.number} {t.state.name.lower()}{value} {json.dumps(t.params)} "
            f"{printable(t.user_attrs.get('run_folder', ''))}")

    try:
        with ctrl_c_raises():
            study.optimize(sweep.objective, n_trials=trials, catch=(NonFiniteError,), callbacks=[line])
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.exit_code - 128 if isinstance(e, Interrupted) else 2
        raise Interrupted(f"interrupted; the current trial is marked failed in study {sweep.study_name!r}; run the "
                          "same command again to continue the sweep", signum) from None
    return write_best(study, sweep, url)


def write_best(study: Any, sweep: Sweep, url: str) -> dict[str, Any]:
    """``best.json``: the study's best completed trial, its parameters, value and run folder."""
    opt = optuna()
    done = study.get_trials(deepcopy=False, states=(opt.trial.TrialState.COMPLETE,))
    if not done:
        raise NotFinished(f"no trial of study {sweep.study_name!r} has completed yet, so there is no best trial; "
                          "see each trial's line above, and run more trials")
    best = min(done, key=lambda t: (t.value, t.number))
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result = {"study": sweep.study_name, "storage": shown_url(url), "trial": best.number, "params": best.params,
              "value": best.value, "metric": METRIC, "run_folder": best.user_attrs.get("run_folder"),
              "trials": counts}
    runs.write_json(sweep.folder / BEST, result)
    return result
