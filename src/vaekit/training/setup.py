"""Where a run is written: the run folder checked, created, locked and, when resuming, its stored settings.

A fresh run refuses an existing run folder unless told to replace it; a resumed one takes its settings from
the folder's ``config.json`` (but those in ``RESUMABLE``). While training, rank 0 holds the folder's lock.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from vaekit import run as runs
from vaekit.config import ConfigError, TrainConfig
from vaekit.errors import NonFiniteError, RunFolderError
from vaekit.training import distributed

# Settings a resumed run may change; everything else must match the stored run. precision, compile,
# fused_step and cuda_graph change how a step is computed, not what it computes (bit-for-bit continuation
# holds when they stay; fused_step changes no bit at all).
RESUMABLE = ("epochs", "device", "progress", "checkpoint_every", "detect_anomaly", "precision", "compile", "fused_step",
             "cuda_graph", "artifacts", "tensorboard", "mlflow", "wandb", "strict_trackers")


def settle(config: TrainConfig, out: str | os.PathLike | None, resume: bool, force: bool,
           ctx: distributed.DistContext) -> tuple[Path, TrainConfig, Stored | None]:
    """The run folder, the config to train with and, when resuming, what the stored run's config says."""
    run_dir = Path(out) if out is not None else Path("runs") / time.strftime("vae-%Y%m%d-%H%M%S")
    runs.check_path_length(run_dir, "--out")
    if ctx.enabled and out is None:
        raise ConfigError("training with torchrun needs --out: every process must name the same run folder")
    if resume and not (run_dir / runs.CONFIG).exists():
        if not (run_dir.is_dir() and runs.is_unstarted(run_dir)):
            raise RunFolderError(f"nothing to resume at {run_dir}: it has no {runs.CONFIG}")
        resume = False  # killed before it wrote its config: nothing was done, so start it afresh
    if resume:
        _, stored, recorded = runs.read_config(run_dir)
        # --data may name where the run's images are now: what they are is checked against the run's record,
        # whose absolute path is preferred over the stored --data, which may be relative to another directory.
        own = recorded.get("own")
        where = config.data or (own.get("path") if isinstance(own, dict) else None) or stored.data
        config = replace(stored, **{k: getattr(config, k) for k in RESUMABLE}, data=where)
        config.validate()
        return run_dir, config, Stored(stored.epochs, recorded)
    if ctx.is_main:
        check_fresh_folder(run_dir, force)
    return run_dir, config, None


class Stored(NamedTuple):
    """What a resumed run's config.json says beyond its settings: the epochs it was set to, its data section."""

    epochs: int
    data: dict[str, Any]


def check_fresh_folder(run_dir: Path, force: bool) -> None:
    """Refuse a folder holding another run (unless ``force``) or one that cannot be written, before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and not runs.is_unstarted(run_dir) and not force:
        raise RunFolderError(f"run folder {run_dir} already exists; use --resume to continue it, "
                             "--force to train into it anyway, or another --out")
    parent = run_dir if run_dir.exists() else run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise RunFolderError(f"cannot create run folder {run_dir}: {parent} is not writable")


def remove_created(folders: list[Path]) -> None:
    """Remove the (empty) folders a failed start created, deepest first."""
    for folder in reversed(folders):  # leave no empty folder behind
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def folder_held(run_dir: Path, config: TrainConfig, resume: bool, ctx: distributed.DistContext) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (the others wait for it); a --detect-anomaly NaN becomes one line."""
    if not ctx.is_main:
        ctx.barrier()  # wait until rank 0 has checked and locked the folder
        with anomaly_as_error(config, run_dir):
            yield
        return
    with runs.RunLock(run_dir), anomaly_as_error(config, run_dir):
        if not resume:  # --force: no file of the replaced run may be mistaken for one of this run
            from vaekit.artifacts import replaced_outputs  # all but a README.md the user wrote

            runs.remove_run_files(run_dir, replaced_outputs(run_dir))
        ctx.barrier()
        yield


@contextlib.contextmanager
def anomaly_as_error(config: TrainConfig, run_dir: Path) -> Iterator[None]:
    """Report the error autograd raises under ``--detect-anomaly`` like any non-finite stop: one line.

    Anomaly mode raises inside the backward pass, at the operation whose gradient became NaN, before
    vaekit's own check sees it; torch has already printed the forward call that created that operation.
    """
    try:
        yield
    except RuntimeError as e:
        if not (config.detect_anomaly and "returned nan values" in str(e)):
            raise
        saved = run_dir / runs.CHECKPOINT
        kept = f"the last good checkpoint {saved} is kept" if saved.exists() else "no checkpoint had been written yet"
        raise NonFiniteError(f"--detect-anomaly stopped training: {str(e).splitlines()[0].rstrip('.')} "
                             f"(the forward call that produced it is printed above); {kept}") from e


def final_outputs() -> tuple[str, ...]:
    """Files a run writes after its summary; a run is finished only once they all exist."""
    from vaekit.artifacts import FINAL_OUTPUTS

    return FINAL_OUTPUTS


def outputs(config: TrainConfig) -> tuple[str, ...]:
    """The files after the summary that this run writes: none without artifacts."""
    return final_outputs() if config.artifacts else ()
