"""The run folder: atomic files, the lock, and safe loading of configs, weights and checkpoints.

A run folder holds ``config.json`` (model + training config), ``model.safetensors`` (weights),
``checkpoint.safetensors`` (weights, optimizer and random state, to resume), ``metrics.csv``,
``summary.json`` and the figures. Nothing here unpickles: tensors come from safetensors and everything
else from JSON, so opening a run from a stranger cannot execute code.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
import socket
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .config import ConfigError, ModelConfig, TrainConfig
from .errors import RunFolderError, WriteError
from .models import VAE

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LOCK = ".lock"
METRIC_COLUMNS = ("epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds")
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------- writing


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers never see a partial file.

    On failure (disk full, permission denied) the temporary file is removed, the previous ``path`` is
    left untouched and a one-line :class:`WriteError` says so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or str(e)
        raise WriteError(f"could not write {path}: {reason}; the previous version is intact "
                         "(free some disk space or choose another --out)") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without syncing the folder, a power cut can bring back the old name.

    Best effort: some platforms and file systems cannot open or sync a folder, and the rename itself
    already protects against a killed process.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary files of atomic writes and of the lock: ``.<name>.tmp-<pid>``. A killed process leaves its own
# behind; the next process to lock the folder removes those whose process is gone.
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file that an atomic write or the lock may leave behind."""
    return _TEMP_NAME.match(name) is not None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def write_metrics(path: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (int(row[k]) if k == "epoch" else f"{row[k]:.6f}") for k in METRIC_COLUMNS})
    write_bytes(path, buf.getvalue().encode())


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, blob)


def write_config(run_dir: Path, model: ModelConfig, train: TrainConfig, data: dict[str, Any]) -> None:
    write_json(run_dir / CONFIG, {
        "format": FORMAT_VERSION, "model": asdict(model), "train": asdict(train), "data": data,
    })


def save_weights(run_dir: Path, model: VAE) -> None:
    write_tensors(run_dir / WEIGHTS, dict(model.state_dict()), {"format": str(FORMAT_VERSION)})


# ---------------------------------------------------------------------------------------------- the lock


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of process ``pid`` from Linux's /proc, or None where /proc cannot tell."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name in parentheses may contain spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _start_time(pid: int) -> str:
    """When process ``pid`` started (kernel clock ticks since boot; "" where unknown).

    Recorded in the lock so that a later process which happens to get the same PID (after a reboot or in
    a fresh container, where PIDs start again from 1) is not mistaken for the lock's owner.
    """
    stat = _proc_stat(pid)
    return stat[1] if stat else ""


def _pid_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` is a running process (not a zombie) and, when ``start`` is known, the same one."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError):  # OverflowError: a number no PID can be, from a damaged lock file
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (macOS): the PID is all there is to go on
    state, started = stat
    return state not in ("Z", "X") and not (start and started != start)


class RunLock:
    """An exclusive lock on a run folder, so two trainings never interleave their writes.

    The lock file holds ``pid host start-time``. It appears with its contents in one step (a hard link of
    a finished temporary file), so a competitor never reads a half-written lock and mistakes it for a stale
    one. A lock whose process no longer exists on this host (or whose PID now belongs to a younger
    process) is stale and taken over. Removing a stale lock happens under an advisory lock on the folder
    itself (``flock``, which the kernel drops when its holder dies, so it can never go stale): the remover
    re-reads the lock file there, and since nobody else removes a lock file meanwhile and no new one can
    appear while the stale one exists, it can only ever remove the stale one. Of several processes
    breaking the same stale lock, exactly one then creates the new lock. Holding the lock, the process also
    removes temporary files that killed writers left in the folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False
        self._content = ""

    def acquire(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}".rstrip() + "\n"
        for _ in range(5):
            if self._create(me):
                self.held, self._content = True, me
                _remove_dead_temporaries(self.path.parent)
                return self
            owner = self._owner(self.path)
            if owner is not None:
                raise RunFolderError(
                    f"run folder {self.path.parent} is in use by process {owner} "
                    "(wait for it to finish or stop it; a lock of a dead process is cleared automatically)"
                )
            self._break_stale()
        raise RunFolderError(f"could not lock run folder {self.path.parent}; remove {self.path} if no run uses it")

    def _create(self, content: str) -> bool:
        """Create the lock file holding ``content``; False if a lock file exists already."""
        tmp = self.path.with_name(f"{LOCK}.tmp-{os.getpid()}")
        try:
            tmp.write_text(content)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV):
                    raise
            # No hard links on this file system: an exclusive create, with a moment where it is empty, so
            # it happens under the guard that a process breaking a stale (or empty) lock takes.
            with _folder_guard(self.path.parent):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(content)
            return True
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {self.path.parent}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _break_stale(self) -> None:
        """Remove the lock file if, read again under the folder's guard, it is still stale."""
        with _folder_guard(self.path.parent):
            if self.path.exists() and self._owner(self.path) is None:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass  # removed by a process that does not take the guard (an older vaekit)
                except OSError as e:
                    raise RunFolderError(f"cannot take over the stale lock {self.path}: {e.strerror or e}") from e

    @staticmethod
    def _owner(path: Path) -> int | None:
        """PID of a live process holding the lock file ``path``, or None when the lock is stale or gone."""
        try:
            parts = path.read_text().split()
            pid = int(parts[0])
        except (OSError, ValueError, IndexError):
            return None
        host = parts[1] if len(parts) > 1 else ""
        start = parts[2] if len(parts) > 2 else ""
        if pid <= 0:
            return None  # no process has such a PID: a damaged lock
        if host and host != socket.gethostname():
            return pid  # another machine's process: cannot check, assume alive
        return pid if pid != os.getpid() and _pid_alive(pid, start) else None

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text() == self._content:  # never remove a lock another process took over
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def _folder_guard(folder: Path) -> typing.Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (blocking), released on exit or when the process dies.

    Where there is no ``flock`` (Windows) or the file system refuses it, this guards nothing, and two
    processes breaking the same stale lock at the same moment could both go on to remove a fresh one.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise RunFolderError(f"cannot open run folder {folder}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF):
                raise RunFolderError(f"cannot lock run folder {folder}: {e.strerror or e}") from e
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _remove_dead_temporaries(folder: Path) -> None:
    """Delete temporary files in ``folder`` whose writer no longer runs (a kill during an atomic write)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = _TEMP_NAME.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()


# ---------------------------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every failure into one line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; is {path.parent} a vaekit run folder?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"cannot read {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt") from e
    except RecursionError:
        raise RunFolderError(f"{path} is not a vaekit file: its JSON is nested too deeply to read") from None


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as parsed from JSON) fits the type annotation ``hint``.

    Knows the plain types config fields use (bool, int, float, str, None, lists, tuples and unions of
    those); anything else is left to the config's own ``validate``.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _check_field_types(cfg: Any, section: str) -> None:
    """Every field of the config dataclass ``cfg`` holds a value of its declared type.

    A hand-edited or hostile ``config.json`` then fails here, as one line naming the field, instead of
    deep inside training, evaluation or plotting where a string in place of a number surfaces as a
    traceback.
    """
    try:
        hints = typing.get_type_hints(type(cfg))
    except (NameError, TypeError):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in hints and not _has_type(value, hints[f.name]):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ConfigError(f"{section}.{f.name} is {shown}, which is not of type {_type_name(hints[f.name])}")


# Entries of config.json's "data" section that other parts of vaekit read, with their types.
_DATA_FIELDS: dict[str, Any] = {"dataset": str | None, "source": str | None, "n_train": int, "n_test": int,
                                "image_shape": list[int]}


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The model config, training config and data description of a run, each checked field by field."""
    path = Path(run_dir) / CONFIG
    d = read_json(path)
    try:
        if not isinstance(d, dict) or "model" not in d or "train" not in d:
            raise ConfigError("expected an object with 'model' and 'train' entries")
        model = ModelConfig.from_dict(d["model"])
        _check_field_types(model, "model")
        model.validate()
        train = TrainConfig.from_dict(d["train"])
        _check_field_types(train, "train")
        train.validate()
        data = d.get("data", {})
        if not isinstance(data, dict):
            raise ConfigError(f"data is {type(data).__name__}, expected an object")
        for key, hint in _DATA_FIELDS.items():
            if key in data and not _has_type(data[key], hint):
                raise ConfigError(f"data.{key} is {data[key]!r:.40}, which is not of type {_type_name(hint)}")
    except (ConfigError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise RunFolderError(f"{path} is not a valid vaekit config: {e}") from e
    return model, train, data


def _pickle_kind(path: Path) -> str | None:
    """What kind of pickle-based PyTorch file ``path`` is, from its first bytes; None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save zip archive, which holds a pickle"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    return None


_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt")
_NO_PICKLES = ("vaekit loads only safetensors and never unpickles, because unpickling can run arbitrary code "
               "(convert it with safetensors.torch.save_file where you trust it)")


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; refuses pickles and reports corruption as one line."""
    path = Path(path)
    if path.suffix in _PICKLE_SUFFIXES:
        raise RunFolderError(f"{path} looks like a pickle-based PyTorch file; {_NO_PICKLES}")
    if not path.exists():
        pickles = [p.name for p in map(path.with_suffix, _PICKLE_SUFFIXES) if p.exists()]
        if pickles:
            raise RunFolderError(f"{path} is missing and {pickles[0]} next to it is a pickle-based PyTorch file; "
                                 f"{_NO_PICKLES}")
        raise RunFolderError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        kind = _pickle_kind(path)  # only asked after a failure: a valid safetensors header may look alike
        if kind is not None:
            raise RunFolderError(f"{path} is not safetensors but {kind}; {_NO_PICKLES}") from e
        raise RunFolderError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                             "it is truncated or corrupt") from e
    return tensors, meta


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], path: Path) -> None:
    """``got`` has exactly the names, shapes and dtypes of ``expected``, and only finite values."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise RunFolderError(f"{path} does not match the model in config.json "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, ref in expected.items():
        t = got[k]
        if t.shape != ref.shape:
            raise RunFolderError(f"{path}: tensor {k} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise RunFolderError(f"{path}: tensor {k} has dtype {t.dtype}, expected {ref.dtype}")
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise RunFolderError(f"{path}: tensor {k} contains NaN or infinite values")


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Copy ``tensors`` into ``model`` after checking names, shapes, dtypes and finiteness."""
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    check_state(model.state_dict(), got, path)
    model.load_state_dict(got)


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """Rebuild a trained model from ``config.json`` and ``model.safetensors`` alone.

    The model is first laid out on the ``meta`` device (no memory) and compared with the weights file, so
    a config naming enormous layers fails as a mismatch instead of exhausting memory.
    """
    run_dir = Path(run_dir)
    model_cfg, _, _ = read_config(run_dir)
    tensors, _ = read_tensors(run_dir / WEIGHTS)
    try:
        with torch.device("meta"):
            layout = VAE(model_cfg).state_dict()
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:
        raise RunFolderError(f"{run_dir / CONFIG} describes a model that cannot be built "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    check_state(layout, tensors, run_dir / WEIGHTS)
    model = VAE(model_cfg)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` (none if it is absent), every column a number and none missing."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in METRIC_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"it has no {missing[0]} column")
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in reader]
    except (ValueError, TypeError, csv.Error) as e:
        raise RunFolderError(f"{path} is corrupt ({e})") from e
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from e


@dataclass
class Run:
    """A trained run loaded from its folder: the model plus everything recorded about it."""

    path: Path
    model: VAE
    model_config: ModelConfig
    train_config: TrainConfig
    data: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` as an object ({} while the run has none)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return {}
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise RunFolderError(f"{path} is not a vaekit summary: it holds a JSON {type(summary).__name__}, "
                             "not an object")
    return summary


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Open a run folder written by ``vaekit train``."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    model_cfg, train_cfg, data = read_config(run_dir)
    model = load_model(run_dir, device)
    return Run(run_dir, model, model_cfg, train_cfg, data, read_summary(run_dir), read_metrics(run_dir))


# ---------------------------------------------------------------------------------------------- run state


def is_unstarted(run_dir: Path) -> bool:
    """True for a folder holding nothing of a run: at most a lock and temporary files.

    That is what a ``vaekit train`` killed before it wrote its config leaves behind; nothing in it is worth
    keeping, so the folder may be trained into (or "resumed" from scratch) without ``--force``.
    """
    try:
        return all(p.name == LOCK or is_temporary(p.name) for p in Path(run_dir).iterdir())
    except OSError:
        return False


def is_complete(run_dir: Path, epochs: int, outputs: tuple[str, ...] = ()) -> bool:
    """True once a run of ``epochs`` epochs has written its summary and every file of ``outputs``.

    A run killed after its final checkpoint but before it finished these is not complete: resuming it
    writes the weights, metrics, summary and figures it did not get to. (Every file is written atomically,
    so one that exists is whole.)
    """
    try:
        summary = read_summary(run_dir)
    except RunFolderError:
        return False
    return summary.get("epochs") == epochs and all((Path(run_dir) / name).exists() for name in outputs)


def remove_run_files(run_dir: Path, names: tuple[str, ...] = ()) -> None:
    """Delete the files of a previous run in ``run_dir`` (for ``--force``), config last.

    Otherwise a new run killed before its first checkpoint would leave the old run's checkpoint next to
    its own config, and ``--resume`` would continue the wrong run.
    """
    for name in (CHECKPOINT, WEIGHTS, METRICS, SUMMARY, *names, CONFIG):
        try:
            (Path(run_dir) / name).unlink(missing_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot remove {Path(run_dir) / name} of the previous run: "
                                 f"{e.strerror or e}") from e


def _nonnegative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_train_state(state: Any, path: Path) -> dict[str, Any]:
    """The training position stored in a checkpoint, checked so a tampered one fails here as one line.

    Known entries must have their types and ranges, and the history one row per completed epoch; other
    entries are left to the caller.
    """
    def bad(what: str) -> RunFolderError:
        return RunFolderError(f"{path} is not a valid vaekit checkpoint ({what}); "
                              "start again with --force or restore the file")

    if not isinstance(state, dict):
        raise bad(f"its training state is a JSON {type(state).__name__}, not an object")
    for key in ("epoch", "step_in_epoch", "global_step"):
        if key in state and not _nonnegative_int(state[key]):
            raise bad(f"{key} is {state[key]!r:.40}, expected an integer >= 0")
    for key in ("epoch_loss_sum", "epoch_seconds"):
        if key in state and not _finite_number(state[key]):
            raise bad(f"{key} is {state[key]!r:.40}, expected a finite number")
    scaler = state.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and all(_finite_number(v) for v in scaler.values())):
        raise bad("its loss scaler state is not a set of finite numbers")
    if state.get("step_in_epoch", 0) > state.get("global_step", 0):
        raise bad("step_in_epoch is larger than global_step")
    history = state.get("history", [])
    if not isinstance(history, list) or len(history) != state.get("epoch", len(history)):
        raise bad("its history does not have one row per completed epoch")
    for i, row in enumerate(history, 1):
        if not isinstance(row, dict) or row.get("epoch") != i:
            raise bad(f"history row {i} is not the metrics of epoch {i}")
        for key in METRIC_COLUMNS:
            if not _finite_number(row.get(key)):
                raise bad(f"history row {i} has {key} = {row.get(key)!r:.40}")
    return state


def _same_kind(saved: Any, fresh: Any) -> bool:
    """Whether an optimizer setting read from JSON has the kind of value the optimizer itself holds."""
    if isinstance(fresh, bool) or fresh is None:
        return saved is None or isinstance(saved, bool)
    if isinstance(fresh, (int, float)):
        return _finite_number(saved)
    if isinstance(fresh, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(fresh) and all(
            _same_kind(s, f) for s, f in zip(saved, fresh, strict=True))
    if isinstance(fresh, str):
        return isinstance(saved, str)
    return False


def _plain_json(value: Any) -> bool:
    """A flat JSON value (a scalar or a list of scalars): what an optimizer setting can be."""
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, str)) or _finite_number(v) for v in value)
    return value is None or isinstance(value, (bool, str)) or _finite_number(value)


# Per-parameter state an optimizer cannot step without (others: all parameters alike is checked).
_REQUIRED_OPTIMIZER_STATE: dict[type, tuple[str, ...]] = {
    torch.optim.Adam: ("step", "exp_avg", "exp_avg_sq"),
    torch.optim.AdamW: ("step", "exp_avg", "exp_avg_sq"),
}


def check_optimizer_state(optimizer: torch.optim.Optimizer, per_param: dict[int, dict[str, Any]],
                          param_groups: Any, path: Path) -> None:
    """A checkpoint's optimizer state fits ``optimizer``: same groups and settings, every parameter's
    state complete, tensors shaped and typed like their parameter and finite.

    ``torch.optim`` trusts a state dict; a tampered one would surface at the first step as a traceback
    (a missing moment, a string learning rate) or as silently wrong training (NaN moments).
    """
    def bad(what: str) -> RunFolderError:
        return RunFolderError(f"{path} is not a valid vaekit checkpoint (optimizer state: {what}); "
                              "start again with --force or restore the file")

    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(param_groups, list) or len(param_groups) != len(fresh):
        raise bad(f"expected {len(fresh)} parameter group(s)")
    for saved, ref in zip(param_groups, fresh, strict=True):
        if not isinstance(saved, dict) or saved.get("params") != ref["params"]:
            raise bad("the parameter group lists other parameters")
        # Settings this optimizer knows must be of its kind; one written by another torch version that
        # this one lacks (or the reverse) is torch's to reconcile.
        for key, value in ref.items():
            if key != "params" and key in saved and not _same_kind(saved[key], value):
                raise bad(f"setting {key} is {saved[key]!r:.40}")
        for key, value in saved.items():
            if key not in ref and not _plain_json(value):
                raise bad(f"setting {key} is {value!r:.40}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not per_param:
        return
    if set(per_param) != set(range(len(params))):
        raise bad(f"it covers parameters {sorted(per_param)[:5]}, expected all {len(params)}")
    names = {frozenset(st) for st in per_param.values()}
    required = next((keys for cls, keys in _REQUIRED_OPTIMIZER_STATE.items() if type(optimizer) is cls), ())
    if len(names) != 1 or not set(required) <= next(iter(names)):
        raise bad(f"entries are missing (expected {', '.join(required) or 'the same for every parameter'})")
    for idx, st in per_param.items():
        p = params[idx]
        for name, v in st.items():
            if torch.is_tensor(v):
                if v.dim() > 0 and (v.shape != p.shape or v.dtype != p.dtype):
                    raise bad(f"{idx}.{name} has shape {tuple(v.shape)} and dtype {v.dtype}, expected "
                              f"{tuple(p.shape)} and {p.dtype}")
                if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all():
                    raise bad(f"{idx}.{name} contains NaN or infinite values")
            elif not _finite_number(v):
                raise bad(f"{idx}.{name} is {v!r:.40}")
