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
import inspect
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
from vaekit.errors import Interrupted, NonFiniteError, RunFolderError, VaekitError
from vaekit.experiments.collect import holds_seed_runs
from vaekit.experiments.seeds import SEEDS_SUMMARY
from vaekit.experiments.space import PRUNERS, SAMPLERS, Param, Space
from vaekit.interrupt import ctrl_c_raises
from vaekit.text import printable
from vaekit.training.callbacks import Callback
from vaekit.training.trainer import Trainer

STUDY_DB = "study.db"
BEST = "best.json"
TRIAL = "trial.json"  # in each trial's run folder: its study, number, parameters, state and value
SWEEP = "sweep.json"  # in the sweep folder: the study and storage it belongs to
LOCK = ".sweep.lock"  # in the sweep folder: held while a worker creates or joins the study
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
        """Build the pruner and sampler (read_space has checked their options by building them once already)."""
        self.pruner = build("pruner", *self.space.pruner)
        self.sampler = build("sampler", *self.space.sampler)

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


# The option types a space file (TOML) can write, by the names Optuna's signatures give them.
_TOML_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def build(kind: str, name: str, options: dict[str, Any]) -> Any:
    """An Optuna pruner or sampler from its space-file name and options; a bad option is one line in the space
    file's terms (the option, the type it takes, the options there are), never Optuna's or Python's words."""
    opt = optuna()
    module, names = (opt.pruners, PRUNERS) if kind == "pruner" else (opt.samplers, SAMPLERS)
    cls = getattr(module, names[name])
    known = settable(cls)
    listed = f"{kind} {name}'s options are {', '.join(known) or 'none'}"
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"[{kind}]: unknown option {key!r} for {kind} {name}; {listed}")
        types = known[key]
        if types and (not isinstance(value, sum((_TOML_TYPES[t] for t in types), ()))
                      or (isinstance(value, bool) and "bool" not in types)):
            words = " or ".join(_TYPE_WORDS[t] for t in types)
            raise ConfigError(f"[{kind}]: option {key!r} of {kind} {name} must be {words}, not {value!r}")
    needed = [k for k, p in inspect.signature(cls).parameters.items()
              if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in options]
    if needed:
        raise ConfigError(f"[{kind}]: {kind} {name} needs option {needed[0]!r}; {listed}")
    try:
        return cls(**options)
    except (TypeError, ValueError, OverflowError) as e:  # a value of the right type that Optuna refuses
        raise ConfigError(f"[{kind}]: Optuna refuses these options for {kind} {name}: {' '.join(str(e).split())} "
                          f"({listed})") from None


def settable(cls: type) -> dict[str, tuple[str, ...]]:
    """The options a space file can give ``cls``: its parameters, each with the TOML types it takes (none listed:
    unannotated, any). A parameter that takes only a Python object (a function, a sampler) is left out: a TOML
    file cannot write one."""
    options: dict[str, tuple[str, ...]] = {}
    for key, p in inspect.signature(cls).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.annotation is p.empty:
            options[key] = ()
            continue
        text = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        types = tuple(t for t in (part.strip() for part in text.split("|")) if t in _TOML_TYPES)
        if types:
            options[key] = types
    return options


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.sweep.lock`` while the study is created or joined, so workers starting together on a new
    SQLite file do not both create its tables."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; workers there should start one after the other
        yield
        return
    with open(folder / LOCK, "a") as f:
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


def check_out(folder: Path) -> None:
    """Refuse, before anything is written, an --out whose files the sweep's would be mixed into: a file, a run
    folder, or the seed group of ``vaekit train --seeds`` (as that command refuses a run folder)."""
    runs.check_path_length(folder, "--out")
    shown = printable(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {shown} exists and is not a folder; give the sweep a folder of its own")
    if (folder / runs.CONFIG).exists():
        raise RunFolderError(f"--out {shown} is a run folder; a sweep needs a folder of its own: choose another "
                             "--out")
    if holds_seed_runs(folder) or (folder / SEEDS_SUMMARY).is_file():
        raise RunFolderError(f"--out {shown} holds the seeds of vaekit train --seeds; a sweep needs a folder of "
                             "its own: choose another --out")


def start(sweep: Sweep, url: str, heartbeat: int) -> Any:
    """The checked sweep folder, made if new, and its study created or joined. A start that fails in a folder it
    made removes it again (the lock, then the folders made, if empty), and one in a folder of the user's new to
    sweeps removes its lock: a sweep that never ran leaves nothing."""
    from vaekit.training.setup import remove_created

    check_out(sweep.folder)
    record = check_folder(sweep.folder, sweep.study_name, url)
    made = [p for p in [sweep.folder, *sweep.folder.parents] if not p.exists()][::-1]
    try:
        sweep.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_created(made)
        raise RunFolderError(f"cannot create sweep folder {printable(sweep.folder)}: {e.strerror or e}; choose "
                             "another --out") from None
    try:
        study = open_study(sweep, url, heartbeat)
        if record is not None:
            runs.write_json(sweep.folder / SWEEP, record)
    except BaseException:
        if made or record is not None:  # a folder new to sweeps: the lock is this start's, nothing else uses it
            with contextlib.suppress(FileNotFoundError):
                (sweep.folder / LOCK).unlink()
            remove_created(made)
        raise
    return study


def run_sweep(sweep: Sweep, trials: int, url: str, heartbeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Run ``trials`` more trials of the study (joining it if it exists); write and return the best trial."""
    study = start(sweep, url, heartbeat)

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
