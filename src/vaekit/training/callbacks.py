"""Callbacks: the named parts of training that are not the optimization itself.

:func:`vaekit.training.loop.fit` calls every callback's hooks in order; the defaults are the progress bar,
the checkpoints, ``metrics.csv`` and the per-epoch log line, and ``--tensorboard`` adds TensorBoard scalars
(``--mlflow`` and ``--wandb`` add the trackers of :mod:`vaekit.training.trackers` after them).
Write your own by subclassing :class:`Callback` and passing it as ``vaekit.train(..., callbacks=[...])``
(see docs/callbacks.md). Under torchrun every process calls the hooks; ``trainer.ctx.is_main`` is rank 0,
the only process that should write files.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm import tqdm

from vaekit import run as runs
from vaekit.config import ConfigError
from vaekit.text import printable
from vaekit.training.checkpoint import TrainState, save_checkpoint
from vaekit.training.trainer import Trainer


@dataclass
class StepResult:
    """One finished optimizer step: its number in the epoch (1-based), its summed loss and images."""

    step: int
    loss: Tensor
    images: int


class Callback:
    """Hooks into :func:`~vaekit.training.loop.fit`; override the ones you need. All do nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (of this process: a resumed run starts mid-way)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of ``epoch`` (1-based) or, resumed, its next step."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After each optimizer step. ``result.loss`` lives on the device: reading it costs a sync there."""

    def on_save_point(self, trainer: Trainer, state: TrainState) -> None:
        """Mid-epoch, when ``--checkpoint-every`` is due or a stop was asked for: ``state`` is consistent."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        """After an epoch and its evaluation; ``row`` is the epoch's line of metrics.csv.

        With a validation split, ``row`` has ``val_loss``, ``val_recon`` and ``val_kl``, the numbers to choose
        and stop on, and no test numbers (the test set is evaluated once, after training); without one it has
        ``test_loss``, ``test_recon`` and ``test_kl``.
        """

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def teardown(self, trainer: Trainer) -> None:
        """Always, last, whether training finished, stopped or failed: release what the callback holds."""


class CallbackList(Callback):
    """Calls the hooks of several callbacks in order; ``teardown`` reaches every one even if one fails."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(trainer, epoch)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, result)

    def on_save_point(self, trainer: Trainer, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_save_point(trainer, state)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, row)

    def on_fit_end(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(trainer)

    def teardown(self, trainer: Trainer) -> None:
        errors = []
        for cb in self.callbacks:
            try:
                cb.teardown(trainer)
            except Exception as e:  # noqa: BLE001 - re-raised below, after every callback had its turn
                errors.append(e)
        if errors:
            raise errors[0]


class ProgressBar(Callback):
    """The post's tqdm bar, one per epoch, with the loss per image of the latest step."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.bar = tqdm(total=trainer.data.steps_per_epoch, initial=trainer.state.step_in_epoch, ascii=" >=",
                        desc=f"epoch {epoch}/{trainer.config.epochs}", leave=False, dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        assert self.bar is not None
        self.bar.update(1)
        every = trainer.step.every
        if result.step % (20 if every == 1 else every) == 0 or result.step == trainer.data.steps_per_epoch:
            self.bar.set_postfix(loss=f"{result.loss.item() / result.images:.6f}")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self.teardown(trainer)

    def teardown(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpointer(Callback):
    """``checkpoint.safetensors`` at every save point and epoch end, ``model.safetensors`` at epoch ends."""

    def on_save_point(self, trainer: Trainer, state: TrainState) -> None:
        if trainer.ctx.is_main:
            save_checkpoint(trainer.run_dir, trainer.model, trainer.opt, trainer.gens, trainer.epoch_shuffle, state,
                            trainer.average)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        if trainer.ctx.is_main:
            self.on_save_point(trainer, trainer.state)
            runs.save_weights(trainer.run_dir, trainer.eval_model)


class MetricsCSV(Callback):
    """``metrics.csv``: one row per epoch, rewritten whole (atomically) after each."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.ctx.is_main and trainer.state.history:  # a kill between checkpoint and metrics: catch up
            runs.write_metrics(trainer.run_dir / runs.METRICS, trainer.state.history)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        if trainer.ctx.is_main:
            runs.write_metrics(trainer.run_dir / runs.METRICS, trainer.state.history)


class EpochLog(Callback):
    """On stderr, the step's plan in one line before training, then one line per epoch: the losses
    (validation, or without it test) and the time."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.epoch < trainer.config.epochs:  # a finished run resumed for its outputs trains no step
            log(trainer.step.plan.line())

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        split = "val" if "val_loss" in row else "test"
        log(f"epoch {row['epoch']}/{trainer.config.epochs}  train {row['train_loss']:.3f}  "
            f"{split} {row[f'{split}_loss']:.3f} (recon {row[f'{split}_recon']:.3f}, kl {row[f'{split}_kl']:.3f})  "
            f"{row['seconds']:.1f}s")


def best_epoch(history: list[dict[str, float]]) -> int:
    """The epoch of the lowest finite ``val_loss`` so far (the first of equals), 0 for none."""
    rows = [r for r in history if math.isfinite(r.get("val_loss", math.nan))]
    return int(min(rows, key=lambda r: r["val_loss"])["epoch"]) if rows else 0


class EarlyStopping(Callback):
    """Stop once ``val_loss`` has not improved for ``patience`` epochs, and end with the best epoch's weights.

    Those weights are written to ``RUN/best.safetensors`` whenever ``val_loss`` improves (before the epoch's
    checkpoint, so a kill in between redoes the epoch and writes them again), and at the end of training they
    become the model the run evaluates on its test set and saves as ``model.safetensors``. Its state is the
    metrics history, which the checkpoint holds, so a resumed run stops at the epoch an uninterrupted one would.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_fit_start(self, trainer: Trainer) -> None:
        self._check(trainer)  # a run resumed after it had stopped trains no further epoch

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        if "val_loss" not in row:
            raise ConfigError("early stopping needs a validation split (--val-fraction above 0)")
        if best_epoch(trainer.state.history) == int(row["epoch"]) and trainer.ctx.is_main:
            runs.save_weights(trainer.run_dir, trainer.eval_model, runs.BEST_WEIGHTS)  # the weights validated
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        history = trainer.state.history
        best = best_epoch(history)
        if best and history and int(history[-1]["epoch"]) - best >= self.patience:
            trainer.stop_reason = (f"early stopping: val_loss has not improved for {self.patience} epochs since "
                                   f"epoch {best}")

    def on_fit_end(self, trainer: Trainer) -> None:
        """Load the best epoch's weights into the model evaluated (the weight average with --ema), for the test
        evaluation and model.safetensors."""
        history = trainer.state.history
        best = best_epoch(history)
        path = trainer.run_dir / runs.BEST_WEIGHTS
        if not best or not trainer.ctx.is_main or not path.exists():
            return
        tensors, _ = runs.read_tensors(path)
        trainer.eval_model.load_state_dict({k: v.to(trainer.device) for k, v in tensors.items()})
        if trainer.config.progress:
            why = trainer.stop_reason or f"trained {int(history[-1]['epoch'])} epochs"
            log(f"{why}; keeping the weights of epoch {best}, the best val_loss "
                f"({history[best - 1]['val_loss']:.3f})")


def require_tensorboard() -> type:
    """TensorBoard's ``SummaryWriter``; without the package one line naming the extra (training checks this
    before it reads any data)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install "vaekit[tensorboard]" '
                          "(or train without --tensorboard)") from e
    return SummaryWriter


class TensorBoard(Callback):
    """Per-epoch scalars for TensorBoard in ``RUN/tensorboard/``: train/loss, test/loss, test/recon, test/kl, lr,
    or with a validation split val/loss, val/recon and val/kl in place of the test ones.

    Needs the ``tensorboard`` package (``pip install "vaekit[tensorboard]"``); without it training does not
    start. Scalars are indexed by epoch, so a resumed run continues the same curves.
    """

    TAGS = {"train/loss": "train_loss", "val/loss": "val_loss", "val/recon": "val_recon", "val/kl": "val_kl",
            "test/loss": "test_loss", "test/recon": "test_recon", "test/kl": "test_kl", "lr": "lr"}

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / "tensorboard"
        self._writer_class = require_tensorboard()
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.ctx.is_main:
            self.writer = self._writer_class(log_dir=str(self.folder))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, key in self.TAGS.items():
                if key in row:  # a run has either the val or the test scalars per epoch
                    self.writer.add_scalar(tag, row[key], global_step=int(row["epoch"]))
            self.writer.flush()

    def teardown(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_callbacks(progress: bool, tensorboard: bool, run_dir: Path, patience: int = 0) -> list[Callback]:
    """The callbacks of ``vaekit train``, in the order they run at an epoch's end (early stopping before the
    checkpoint: see :class:`EarlyStopping`)."""
    callbacks: list[Callback] = [ProgressBar()] if progress else []
    callbacks += [EarlyStopping(patience)] if patience else []
    callbacks += [Checkpointer(), MetricsCSV()]
    if progress:
        callbacks.append(EpochLog())
    if tensorboard:
        callbacks.append(TensorBoard(run_dir))
    return callbacks


def log(msg: str) -> None:
    """A progress line on stderr that does not break the tqdm bar (paths in it shown on one line: see printable)."""
    tqdm.write(printable(msg), file=sys.stderr)
