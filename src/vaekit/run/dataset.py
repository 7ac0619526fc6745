"""The dataset a run was trained on, rebuilt from its record: :func:`load_run_data`.

It reads nothing of the run folder but the record already loaded (:class:`RunRecord`), so the modules that use
a trained model can rebuild its data without depending on how a run folder is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from vaekit.config import ModelConfig, TrainConfig
from vaekit.data import Splits, load_splits
from vaekit.data.binarize import binarize_splits
from vaekit.errors import RunFolderError

__all__ = ["RunRecord", "load_run_data"]


class RunRecord(Protocol):
    """What a run's record says of it (a :class:`vaekit.run.Run` is one): where it is, its configs and data."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    data: dict[str, Any]


def load_run_data(run: RunRecord, data_dir: str | os.PathLike | None = None, binarize: str | None = None,
                  data: Any = None) -> Splits:
    """The dataset a run was trained on, found the same way training found it (``data_dir`` overrides).

    For your own images the run's record rebuilds exactly the same images and split, and checks it did;
    ``data_dir`` (or ``data``: a path or the same in-memory array) names where the images are now. The test
    images are those the run is evaluated on: the binarized copy (drawn with the run's recorded
    ``binarize_seed``) when the run was trained with ``--binarize`` dynamic or static, or when ``binarize``
    asks for one; the training images are left as found.
    """
    own = run.data.get("own")
    if own is not None or run.train_config.data is not None:
        from vaekit.data import load_own_data_from_info

        splits, _ = load_own_data_from_info(own, data if data is not None else data_dir)
    else:
        name = run.data.get("dataset") or run.train_config.dataset
        splits = load_splits(name, data_dir or run.train_config.data_dir, progress=False)
    if tuple(splits.test_images.shape[1:]) != tuple(run.model_config.image_shape):
        raise RunFolderError(f"the data found for {run.path} has images of shape {splits.test_images.shape[1:]}, "
                             f"but the model expects {tuple(run.model_config.image_shape)}")
    _check_validation(run, splits)
    mode = binarize or run.train_config.binarize
    return binarize_splits(splits, mode, run.train_config.binarize_seed, train=False)


def _check_validation(run: RunRecord, splits: Splits) -> None:
    """The data found must carve the validation split the run recorded: the same training images, so the
    test numbers are those of the run that chose its epochs on that split."""
    if run.data.get("val_indices_sha256") is None:
        return
    from vaekit.data.validation import carve_validation, validation_problem

    _, val = carve_validation(splits, run.data.get("val_fraction") or 0.0)
    problem = validation_problem(run.data, val)
    if problem is not None:
        raise RunFolderError(f"the data found for {run.path} is not what the run was trained on: {problem}")

