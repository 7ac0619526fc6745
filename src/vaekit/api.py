"""Python API over run folders, mirroring the command line: evaluate and plot a finished run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import viz
from .data import Splits, load_splits
from .errors import RunFolderError
from .evaluate import evaluate_elbo
from .runs import Run, load_run
from .train import resolve_device


def load_run_data(run: Run, data_dir: str | os.PathLike | None = None) -> Splits:
    """The dataset a run was trained on, found the same way training found it (``data_dir`` overrides)."""
    name = run.data.get("dataset") or run.train_config.dataset
    splits = load_splits(name, data_dir or run.train_config.data_dir, progress=False)
    if tuple(splits.test_images.shape[1:]) != tuple(run.model_config.image_shape):
        raise RunFolderError(f"the data found for {run.path} has images of shape {splits.test_images.shape[1:]}, "
                             f"but the model expects {tuple(run.model_config.image_shape)}")
    return splits


def evaluate_run(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Test-set metrics of a run: the keys of ``summary.json``'s ``test_*`` entries and more."""
    run = load_run(path, resolve_device(device))
    splits = load_run_data(run, data_dir)
    x_test = torch.from_numpy(splits.test_images.reshape(len(splits.test_images), -1))
    metrics = evaluate_elbo(run.model, x_test, run.train_config.likelihood, run.train_config.sigma,
                            run.train_config.eval_batch_size)
    return {**metrics, "dataset": splits.name, "n_test": len(x_test),
            "n_params": sum(p.numel() for p in run.model.parameters()),
            "epochs": run.summary.get("epochs", len(run.metrics))}


def plot_run(path: str | os.PathLike, data_dir: str | os.PathLike | None = None, grid_size: int | None = None,
             spacing: str | None = None) -> list[Path]:
    """Redraw the five figures of a run folder."""
    run = load_run(path)
    cfg = run.train_config
    if grid_size is not None:
        cfg.grid_size = grid_size
    if spacing is not None:
        cfg.grid_spacing = spacing
    return viz.plot_run(run.path, run.model, load_run_data(run, data_dir), run.metrics, cfg)
