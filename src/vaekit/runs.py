"""The run folder: atomic files, the lock, and safe loading of configs, weights and checkpoints.

A run folder holds ``config.json`` (model + training config), ``model.safetensors`` (weights),
``checkpoint.safetensors`` (weights, optimizer and random state, to resume), ``metrics.csv``,
``summary.json`` and the figures. Nothing here unpickles: tensors come from safetensors and everything
else from JSON, so opening a run from a stranger cannot execute code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or str(e)
        raise WriteError(f"could not write {path}: {reason}; the previous version is intact "
                         "(free some disk space or choose another --out)") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, so two trainings never interleave their writes.

    The lock file holds ``pid host``; a lock left by a process that no longer exists on this host is
    stale and taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise RunFolderError(
                        f"run folder {self.path.parent} is in use by process {owner} "
                        "(wait for it to finish or stop it; a lock of a dead process is cleared automatically)"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                raise RunFolderError(f"cannot write to run folder {self.path.parent}: {e.strerror}") from e
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise RunFolderError(f"could not lock run folder {self.path.parent}; remove {self.path} if no run uses it")

    def _owner(self) -> int | None:
        """PID of a live process holding the lock, or None when the lock is stale."""
        try:
            pid_s, _, host = self.path.read_text().partition(" ")
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        if host.strip() and host.strip() != socket.gethostname():
            return pid  # another machine's process: cannot check, assume alive
        return pid if pid != os.getpid() and _pid_alive(pid) else None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    path = Path(run_dir) / CONFIG
    d = read_json(path)
    try:
        if not isinstance(d, dict) or "model" not in d or "train" not in d:
            raise ConfigError("expected an object with 'model' and 'train' entries")
        model = ModelConfig.from_dict(d["model"])
        model.validate()
        train = TrainConfig.from_dict(d["train"])
        data = d.get("data", {})
    except (ConfigError, TypeError, ValueError, IndexError) as e:
        raise RunFolderError(f"{path} is not a valid vaekit config: {e}") from e
    return model, train, data if isinstance(data, dict) else {}


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; refuses pickles and reports corruption as one line."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise RunFolderError(f"{path} looks like a pickle-based PyTorch file; vaekit loads only safetensors "
                             "because unpickling can run arbitrary code (convert it with safetensors first)")
    if not path.exists():
        raise RunFolderError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunFolderError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                             "it is truncated or corrupt") from e
    return tensors, meta


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Copy ``tensors`` into ``model`` after checking names, shapes, dtypes and finiteness."""
    expected = model.state_dict()
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
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
        if not torch.isfinite(t).all():
            raise RunFolderError(f"{path}: tensor {k} contains NaN or infinite values")
    model.load_state_dict(got)


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """Rebuild a trained model from ``config.json`` and ``model.safetensors`` alone."""
    run_dir = Path(run_dir)
    model_cfg, _, _ = read_config(run_dir)
    model = VAE(model_cfg)
    tensors, _ = read_tensors(run_dir / WEIGHTS)
    load_state_into(model, tensors, run_dir / WEIGHTS)
    return model.to(device).eval()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError, csv.Error) as e:
        raise RunFolderError(f"{path} is corrupt ({e})") from e


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


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Open a run folder written by ``vaekit train``."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    model_cfg, train_cfg, data = read_config(run_dir)
    model = load_model(run_dir, device)
    summary_path = run_dir / SUMMARY
    summary = read_json(summary_path) if summary_path.exists() else {}
    return Run(run_dir, model, model_cfg, train_cfg, data, summary, read_metrics(run_dir))


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
