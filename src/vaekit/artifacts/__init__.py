"""Artifacts of a finished run: figures, the latent explorer page, the report and the model card, one stage.

The stage reads only the run folder (``config.json``, ``model.safetensors``, ``metrics.csv``,
``summary.json``) and the test data the run names, so it runs the same at the end of ``vaekit train``
and later from ``vaekit plot``, ``vaekit explore`` and ``vaekit report``, after a crash, or on a run
copied from another machine. This module is light to import; the drawing code loads when called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vaekit.config import ConfigError

if TYPE_CHECKING:
    from vaekit.data import Splits
    from vaekit.run import Run

FIGURES = ("latent_grid.png", "latent_scatter.png", "reconstructions.png", "samples.png", "loss_curve.png")
EXPLORER = "explorer.html"
REPORT = "report.html"
CARD = "README.md"  # the model card, the page a model hub shows for the folder
# In the order they are written: the report links the explorer, the card lists every file before it.
STAGES = ("figures", "explorer", "report", "card")
# Every file the full stage writes: a run is complete once these exist beside its summary.
FINAL_OUTPUTS = (*FIGURES, EXPLORER, REPORT, CARD)

__all__ = ["CARD", "EXPLORER", "FIGURES", "FINAL_OUTPUTS", "REPORT", "STAGES", "load_inputs", "plot_run",
           "replaced_outputs", "write_artifacts"]


def _stages(which: Iterable[str]) -> list[str]:
    which = [which] if isinstance(which, str) else list(which)
    unknown = [w for w in which if w not in STAGES]
    if unknown:
        raise ConfigError(f"unknown artifact {unknown[0]!r}; choose from {', '.join(STAGES)}")
    return [s for s in STAGES if s in which]


def load_inputs(run_dir: str | os.PathLike, *, splits: Splits | None = None, device: str = "cpu",
                data_dir: str | os.PathLike | None = None, need_data: bool = True) -> tuple[Run, Splits | None]:
    """The run (model on ``device``) and, when ``need_data``, its test data: ``splits`` or as training found it.

    Training passes the splits it holds (the test set it evaluated on), so the stage need not find the
    data again; later commands rebuild them with :func:`vaekit.eval.run.load_run_data`.
    """
    from vaekit.devices import resolve_device
    from vaekit.eval.run import load_run_data
    from vaekit.run import load_run

    run = load_run(run_dir, resolve_device(device))
    if need_data and splits is None:
        splits = load_run_data(run, data_dir)
    return run, splits


def _grid_settings(run: Run, grid_size: int | None, spacing: str | None) -> tuple[int, str]:
    """The run's latent-grid settings with the given overrides, checked as the training config checks them."""
    cfg = dataclasses.replace(run.train_config)
    cfg.grid_size = cfg.grid_size if grid_size is None else grid_size
    cfg.grid_spacing = cfg.grid_spacing if spacing is None else spacing
    cfg.validate()
    return cfg.grid_size, cfg.grid_spacing


def write_artifacts(run_dir: str | os.PathLike, *, splits: Splits | None = None, device: str = "cpu",
                    which: Iterable[str] = STAGES, grid_size: int | None = None, spacing: str | None = None,
                    data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the artifacts of the finished run in ``run_dir``; returns the paths written, in order.

    ``which`` picks among ``"figures"`` (the five PNGs of ``FIGURES``), ``"explorer"`` (``explorer.html``),
    ``"report"`` (``report.html``, which links the explorer) and ``"card"`` (``README.md``, the model card,
    left out where the folder holds a README.md vaekit did not write). ``splits`` is the
    run's data (only its test arrays are read); without it the data is found as training found it, in
    ``data_dir`` if given. ``grid_size`` and ``spacing`` override the run's latent-grid settings.
    """
    stages = _stages(which)
    run, _ = load_inputs(run_dir, device=device, need_data=False)
    grid = _grid_settings(run, grid_size, spacing) if "figures" in stages else None
    if splits is None and ("figures" in stages or "explorer" in stages):
        from vaekit.eval.run import load_run_data

        splits = load_run_data(run, data_dir)
    paths: list[Path] = []
    if grid is not None:
        from vaekit.artifacts.figures import write_figures

        paths += write_figures(run.path, run.model, splits, run.metrics, *grid)
    if "explorer" in stages:
        from vaekit.artifacts.explorer import write_explorer

        paths.append(write_explorer(run, splits))
    if "report" in stages:
        from vaekit.artifacts.report import write_report

        paths.append(write_report(run))
    if "card" in stages:
        from vaekit.artifacts.card import write_card

        card = write_card(run)
        paths += [card] if card is not None else []
    return paths


def replaced_outputs(run_dir: str | os.PathLike) -> tuple[str, ...]:
    """The final outputs a run trained into ``run_dir`` again replaces: all but a README.md that is not vaekit's."""
    from vaekit.artifacts.card import users_readme

    keep = users_readme(Path(run_dir) / CARD)
    return tuple(name for name in FINAL_OUTPUTS if not (keep and name == CARD))


def plot_run(path: str | os.PathLike, data_dir: str | os.PathLike | None = None, grid_size: int | None = None,
             spacing: str | None = None, device: str = "cpu") -> list[Path]:
    """Redraw the five figures of a run folder: :func:`write_artifacts` with ``which=("figures",)``."""
    return write_artifacts(path, which=("figures",), data_dir=data_dir, grid_size=grid_size, spacing=spacing,
                           device=device)
