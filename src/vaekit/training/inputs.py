"""The data a run trains on: a named dataset or your own images, read once the run folder exists.

Your own images come with a record (``own``) from which a resumed run, ``vaekit evaluate`` and the other
commands rebuild exactly the same images and split; it is stored in config.json's ``data`` section, which
:func:`data_description` writes. A validation split is carved from the training images
(:mod:`vaekit.data.validation`), by default for your own images only, and recorded there too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vaekit import run as runs
from vaekit.config import OWN_VAL_FRACTION, TrainConfig
from vaekit.data import DataError, Splits, load_splits
from vaekit.data.binarize import binarize_splits
from vaekit.data.own import OWN_SPLIT_SEED
from vaekit.data.validation import (
    Validation,
    binarize_validation,
    carve_validation,
    validation_problem,
    validation_record,
)
from vaekit.errors import RunFolderError
from vaekit.model import model_config
from vaekit.training import distributed
from vaekit.training.memory import check_step_fits
from vaekit.training.messages import warn
from vaekit.training.modelchoice import model_config_for, preset_for
from vaekit.training.setup import Stored, remove_created

SKIPPED = "skipped_files.txt"  # with --skip-bad: the images left out, one "path<TAB>problem" per line


def read_data(config: TrainConfig, run_dir: Path, ctx: distributed.DistContext, data: Any,
              stored: Stored | None, device: torch.device) -> tuple[Splits, dict[str, Any] | None, Validation | None]:
    """Create the run folder (so an unwritable --out fails first), then read the data.

    Returns the splits (their training images without the validation images), for your own images the
    record that rebuilds them (``None`` for a named dataset), and the validation split (``None``: none).
    A failure removes the folders this created: a run that never started leaves nothing behind. A training
    step too large for the memory fails here too: before decoding when ``--image-size`` already tells, else
    once the images' size is known.
    """
    if config.model is not None:  # bad model settings fail before the data is read
        model_config(config.model, config.zdim, config.hidden, config.activation)
    missing = [p for p in [run_dir, *run_dir.parents] if not p.exists()][::-1] if ctx.is_main else []
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if config.image_size is not None and stored is None:
            side, grey = config.image_size, config.channels in (None, 1)  # grey: the smallest it can be
            _check_fits(config, (side, side) if grey else (side, side, 3), device)
        splits, own = _load(config, data, stored)
        _check_fits(config, tuple(splits.train_images.shape[1:]), device)
        splits, val = _carve(splits, val_fraction(config, own is not None, stored), stored)
        splits = binarize_splits(splits, config.binarize, config.binarize_seed)
        val = binarize_validation(val, config.binarize, config.binarize_seed)
    except OSError as e:
        remove_created(missing)
        raise RunFolderError(f"cannot create run folder {run_dir}: {e.strerror}; choose another --out") from e
    except BaseException:
        remove_created(missing)
        raise
    return splits, own, val


def _check_fits(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse a training step on images of ``shape`` that cannot fit the device's memory (one line, exit 2)."""
    model = config.model or preset_for(shape)
    check_step_fits(model_config_for(replace(config, model=model), shape), config.batch_size, device)


def val_fraction(config: TrainConfig, own_data: bool, stored: Stored | None) -> float:
    """The run's validation fraction: as set, else as the resumed run recorded it, else the data kind's default.

    A named dataset has no validation split unless asked for, so its runs keep the numbers they always had.
    A resumed run from before validation splits existed recorded none, and continues without one.
    """
    if config.val_fraction is not None:
        return float(config.val_fraction)
    if stored is not None:
        return float(stored.data.get("val_fraction") or 0.0)
    return OWN_VAL_FRACTION if own_data else 0.0


def _carve(splits: Splits, fraction: float, stored: Stored | None) -> tuple[Splits, Validation | None]:
    """The validation split carved from the training images; a resumed run's must be the one it recorded."""
    splits, val = carve_validation(splits, fraction)
    problem = validation_problem(stored.data, val) if stored is not None else None
    if problem is not None:
        raise DataError(f"{problem}; resume with the data the run was trained on")
    return splits, val


def _load(config: TrainConfig, data: Any, stored: Stored | None) -> tuple[Splits, dict[str, Any] | None]:
    """A named dataset, or your own images (a resumed run rebuilds exactly the images it was trained on)."""
    if config.data is None and data is None:
        return load_splits(config.dataset, config.data_dir, progress=config.progress), None
    from vaekit.data import load_own_data, load_own_data_from_info

    if stored is not None:
        return load_own_data_from_info(stored.data.get("own"), config.data if data is None else data,
                                       progress=config.progress)
    return load_own_data(config.data if data is None else data, image_size=config.image_size,
                         channels=config.channels, test_fraction=config.test_fraction, seed=OWN_SPLIT_SEED,
                         skip_bad=config.skip_bad, progress=config.progress)


def report_skipped(run_dir: Path, own: dict[str, Any]) -> None:
    """With --skip-bad: the list of skipped files beside the run, and one warning line that points to it."""
    from vaekit.data import bad_files_text, skipped_warning

    listing = run_dir / SKIPPED
    message = skipped_warning(own, listing)
    if message is not None:
        runs.write_bytes(listing, bad_files_text(own).encode("utf-8", "surrogateescape"))  # names as on disk
        warn(message)


def data_description(splits: Splits, own: dict[str, Any] | None = None,
                     val: Validation | None = None) -> dict[str, Any]:
    """The ``data`` section of config.json: which data the run saw (``own``: the record of your own images).

    ``n_train`` counts the images trained on; with a validation split, ``n_val``, ``val_fraction`` and
    ``val_indices_sha256`` say which training images were held out instead.
    """
    info = {"dataset": splits.name, "source": splits.source, "n_train": int(len(splits.train_images)),
            "n_test": int(len(splits.test_images)), "image_shape": list(splits.train_images.shape[1:]),
            **validation_record(val)}
    return {**info, "own": own} if own is not None else info
