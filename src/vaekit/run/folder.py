"""The run folder: its file names, its config, weights, metrics and summary, and the :class:`Run` they make.

A run folder holds ``config.json`` (model + training config + data), ``model.safetensors`` (weights),
``checkpoint.safetensors`` (to resume), ``metrics.csv``, ``summary.json`` and the artifacts. A model is
rebuilt from ``config.json`` and ``model.safetensors`` alone, without the code that trained it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import USE_BATCH_SIZE, ConfigError, ModelConfig, TrainConfig
from ..errors import RunFolderError
from ..model import VAE
from .io import (
    check_path_length,
    check_state,
    is_temporary,
    read_json,
    read_tensors,
    read_text,
    write_bytes,
    write_json,
    write_tensors,
)
from .lock import LOCK

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
BEST_WEIGHTS = "best.safetensors"  # early stopping's best epoch so far (training/callbacks.py, EarlyStopping)
METRICS = "metrics.csv"
SUMMARY = "summary.json"
TRACKER_RUNS = "trackers.json"  # the MLflow / W&B run ids a resumed run continues (training/trackers.py)
METRIC_COLUMNS = ("epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds", "lr")
REQUIRED_METRIC_COLUMNS = METRIC_COLUMNS[:-1]  # lr: added later, absent in older runs
# A run with a validation split has these columns after train_loss; its test columns are blank but on the last
# row, since the test set is evaluated once, at the end.
VAL_METRIC_COLUMNS = ("val_loss", "val_recon", "val_kl")
FORMAT_VERSION = 1


def metric_columns(rows: list[dict[str, float]]) -> tuple[str, ...]:
    """The columns of metrics.csv for these rows: the validation columns only when a row has them."""
    if not any("val_loss" in row for row in rows):
        return METRIC_COLUMNS
    return (*METRIC_COLUMNS[:2], *VAL_METRIC_COLUMNS, *METRIC_COLUMNS[2:])


def row_required_columns(row: dict[str, Any]) -> tuple[str, ...]:
    """The cells an epoch's row must hold as numbers: the validation ones instead of the test ones with a
    validation split (its test cells are filled on the last row only)."""
    if "val_loss" not in row:
        return REQUIRED_METRIC_COLUMNS
    return (*REQUIRED_METRIC_COLUMNS[:2], *VAL_METRIC_COLUMNS, "seconds")


def write_metrics(path: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    columns = metric_columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(k, row.get(k)) for k in columns})
    write_bytes(path, buf.getvalue().encode())


def _cell(column: str, value: float | None) -> str:
    """One metrics.csv cell: the epoch as an integer, the LR to 6 significant digits, losses to 6 decimals."""
    if value is None:
        return ""  # a row of a run from before the column existed, or a test cell of a run that validates
    if column == "epoch":
        return str(int(value))
    return f"{value:.6g}" if column == "lr" else f"{value:.6f}"


def write_config(run_dir: Path, model: ModelConfig, train: TrainConfig, data: dict[str, Any]) -> None:
    write_json(run_dir / CONFIG, {
        "format": FORMAT_VERSION, "model": asdict(model), "train": asdict(train), "data": data,
    })


def save_weights(run_dir: Path, model: VAE, name: str = WEIGHTS) -> None:
    write_tensors(run_dir / name, dict(model.state_dict()), {"format": str(FORMAT_VERSION)})


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
                                "image_shape": list[int], "n_val": int, "val_fraction": float,
                                "val_indices_sha256": str}


# Entries without which a section does not describe a run (the others have defaults, for older runs).
_REQUIRED = {"model": ("preset", "zdim", "image_shape", "encoder_hidden", "decoder_hidden", "activation"),
             "train": ("epochs", "batch_size", "lr", "likelihood")}


def _section(d: dict[str, Any], name: str, cls: type) -> Any:
    """The ``model`` or ``train`` section as its config class: known keys only, required keys present,
    every value of its declared type and of sense (``validate``)."""
    section = d[name]
    if not isinstance(section, dict):
        raise ConfigError(f"{name} is a JSON {type(section).__name__}, expected an object")
    unknown = sorted(set(section) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"{name}.{unknown[0][:40]} is not a setting this vaekit knows")
    missing = [key for key in _REQUIRED[name] if key not in section]
    if missing:
        raise ConfigError(f"{name}.{missing[0]} is missing")
    cfg = cls.from_dict(section)
    _check_field_types(cfg, name)
    cfg.validate()
    return cfg


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The model config, training config and data description of a run, each checked field by field."""
    path = Path(run_dir) / CONFIG
    d = read_json(path)
    try:
        if not isinstance(d, dict) or "model" not in d or "train" not in d:
            raise ConfigError("expected an object with 'model' and 'train' entries")
        unknown = sorted(set(d) - {"format", "model", "train", "data"})
        if unknown:
            raise ConfigError(f"it has an entry {unknown[0][:40]!r} that no vaekit writes")
        if d.get("format") != FORMAT_VERSION:
            raise ConfigError(f"its format is {d.get('format')!r:.20}, and this vaekit reads format {FORMAT_VERSION}")
        model = _section(d, "model", ModelConfig)
        train = _section(d, "train", TrainConfig)
        data = d.get("data", {})
        if not isinstance(data, dict):
            raise ConfigError(f"data is {type(data).__name__}, expected an object")
        for key, hint in _DATA_FIELDS.items():
            if key in data and not _has_type(data[key], hint):
                raise ConfigError(f"data.{key} is {data[key]!r:.40}, which is not of type {_type_name(hint)}")
    except (ConfigError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise RunFolderError(f"{path} is not a valid vaekit config: {e}") from e
    return model, train, data


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
    """The rows of ``metrics.csv`` (none if it is absent): every column a finite number, none missing."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    text = read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REQUIRED_METRIC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"it has no {missing[0]} column")
        rows = [{k: _number(k, v) for k, v in row.items() if k is not None and (v != "" or k == "epoch")}
                for row in reader]
    except (ValueError, TypeError, csv.Error) as e:
        raise RunFolderError(f"{path} is damaged ({' '.join(str(e).split())[:120]}); restore it or retrain") from e
    return rows


def _number(column: str, text: str | None) -> float:
    """One metrics.csv cell as a number; a loss that is NaN or infinite marks the file as damaged."""
    value = int(text) if column == "epoch" else float(text)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise ValueError(f"{column} is {text}")
    return value


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

    # Using the model (vaekit.use, imported here so that loading a run does not load it). Images: a folder, an
    # image file, a .npy/.npz file, an array or tensor; prepared as this run's data were. See docs/use.md.

    def encode(self, images: Any = None, *, split: str | None = None, logvar: bool = False,
               batch_size: int = USE_BATCH_SIZE, skip_bad: bool = False) -> Any:
        """Posterior means (n, zdim) of ``images`` or of the run's ``split`` ("train"/"test"); with ``logvar``,
        ``(means, log-variances)``. A hierarchical model's are those of its top group."""
        from vaekit.use.latent import encode

        return encode(self, images, split=split, logvar=logvar, batch_size=batch_size, skip_bad=skip_bad)

    def reconstruct(self, images: Any = None, *, split: str | None = None, batch_size: int = USE_BATCH_SIZE,
                    skip_bad: bool = False) -> Any:
        """The decoder's mean image at each image's posterior mean: floats in [0, 1], (n, H, W) or (n, H, W, 3)."""
        from vaekit.use.latent import reconstruct

        return reconstruct(self, images, split=split, batch_size=batch_size, skip_bad=skip_bad)

    def interpolate(self, a: Any, b: Any, steps: int = 10, *, spherical: bool = False, batch_size: int = USE_BATCH_SIZE,
                    latents: bool = False) -> Any:
        """``steps`` images decoded from ``a`` to ``b`` (each one image or a latent vector), straight or spherical;
        with ``latents``, ``(latents, images)``."""
        from vaekit.use.latent import interpolate

        return interpolate(self, a, b, steps, spherical=spherical, batch_size=batch_size, latents=latents)

    def sample(self, n: int, **options: Any) -> Any:
        """``n`` new images as a uint8 array (n, H, W[, 3]); ``options`` are :func:`vaekit.use.sample.sample`'s
        (``sampler="prior"|"gmm"``, ``temperature``, ``seed``, ``mode``, ``components``)."""
        from vaekit.use.sample import sample

        return sample(self, n, **options)

    def score(self, images: Any = None, **options: Any) -> dict[str, Any]:
        """Per-image -ELBO (or ``nll=K``: importance-sampled NLL) and bits/dim of ``images`` (a folder, file, array)
        or of ``split="test"``, as columns in the images' order; with ``normal=[...]`` also their ``auroc``. See
        :func:`vaekit.use.score.score`."""
        from vaekit.use.score import score

        return score(self, images, **options)


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
    check_path_length(run_dir, "RUN")
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
    for name in (CHECKPOINT, WEIGHTS, BEST_WEIGHTS, METRICS, SUMMARY, TRACKER_RUNS, *names, CONFIG):
        try:
            (Path(run_dir) / name).unlink(missing_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot remove {Path(run_dir) / name} of the previous run: "
                                 f"{e.strerror or e}") from e

