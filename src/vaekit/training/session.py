"""``vaekit.train``: a training session around :func:`~vaekit.training.loop.fit`.

It checks the run folder and the settings (:mod:`.setup`), reads the data (:mod:`.inputs`), locks the
folder, chooses the model (:mod:`.modelchoice`), builds the model, optimizer and step (or restores them from
the checkpoint), runs ``fit`` with the callbacks, and writes the weights, the summary and the artifacts
(:mod:`.summary`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit import run as runs
from vaekit.config import ConfigError, ModelConfig, TrainConfig
from vaekit.data import Splits
from vaekit.data.tensors import as_rows
from vaekit.devices import resolve_device
from vaekit.errors import RunFolderError
from vaekit.model import VAE
from vaekit.training import distributed, precision
from vaekit.training.budget import settle_budget
from vaekit.training.callbacks import Callback, default_callbacks, log, require_tensorboard
from vaekit.training.checkpoint import TrainState, load_checkpoint
from vaekit.training.inputs import data_description, read_data, report_skipped
from vaekit.training.loop import fit
from vaekit.training.messages import warn
from vaekit.training.modelchoice import default_model, model_config_for
from vaekit.training.optim import is_fused, make_adam
from vaekit.training.plan import choose_plan
from vaekit.training.schedule import LRSchedule
from vaekit.training.setup import RESUMABLE, folder_held, outputs, settle
from vaekit.training.stabilise import WeightAverage
from vaekit.training.step import TrainStep
from vaekit.training.summary import finish
from vaekit.training.trackers import tracked, tracker_callbacks
from vaekit.training.trainer import TrainData, Trainer

__all__ = ["RESUMABLE", "Session", "build_trainer", "open_session", "train"]


def train(config: TrainConfig | None = None, out: str | os.PathLike | None = None, *, resume: bool = False,
          force: bool = False, callbacks: Sequence[Callback] = (), data: Any = None) -> runs.Run:
    """Train a VAE as ``config`` says and return the finished :class:`~vaekit.run.Run`.

    ``out`` is the run folder (default ``runs/vae-<time>``). With ``resume=True`` the folder's own config is
    used, with the settings in ``RESUMABLE`` taken from ``config`` (so ``epochs`` may grow). ``callbacks``
    run after the default ones (progress, checkpoints, metrics, log); see :mod:`vaekit.training.callbacks`.
    ``data`` is your own images: a folder or ``.npy``/``.npz`` path (as ``config.data``), a NumPy array or a
    tensor (N, H, W) or (N, H, W, C), or an ``(images, labels)`` pair.
    """
    config = config or TrainConfig()
    if data is not None and isinstance(data, (str, os.PathLike)):
        config, data = replace(config, data=os.fspath(data)), None
    config.validate()
    with distributed.session(config.device) as ctx:  # joins the process group when started by torchrun
        with contextlib.ExitStack() as held:
            s = open_session(held, ctx, config, out, resume=resume, force=force, callbacks=callbacks, data=data)
            fit(s.trainer, s.callbacks)
            s.finish()
        ctx.barrier()  # the other ranks return the run rank 0 has finished writing
    return runs.load_run(s.trainer.run_dir, s.trainer.device)


@dataclass
class Session:
    """A run ready to fit: its trainer and callbacks, and what :meth:`finish` writes once it has trained."""

    trainer: Trainer
    callbacks: list[Callback]
    data_info: dict[str, Any]
    test_labels: np.ndarray | None

    def finish(self) -> None:
        """The weights, the summary and the artifacts of the trained run."""
        finish(self.trainer, self.data_info, self.test_labels)


def open_session(held: contextlib.ExitStack, ctx: distributed.DistContext, config: TrainConfig,
                 out: str | os.PathLike | None, *, resume: bool = False, force: bool = False,
                 callbacks: Sequence[Callback] = (), data: Any = None) -> Session:
    """Everything :func:`train` does before ``fit``: the folder checked and locked, the data read, the model,
    optimizer and step built or restored, the config written. ``held`` keeps the folder's lock and the
    trackers open until the caller has fitted and finished the run."""
    run_dir, config, stored = settle(config, out, resume, force, ctx)
    if not ctx.is_main:
        config = replace(config, progress=False)  # one progress bar and one log: rank 0's
    device = ctx.device or resolve_device(config.device)
    precision.resolve(config.precision, device)  # fp16 away from CUDA fails here, before the data is read
    if config.tensorboard:
        require_tensorboard()  # and so does a missing tensorboard package
    trackers = tracker_callbacks(config, run_dir, stored is not None)  # or mlflow or wandb package
    splits, own, val = read_data(config, run_dir, ctx, data, stored, device)
    config = replace(config, model=config.model or default_model(splits, ctx.is_main),
                     val_fraction=val.fraction if val is not None else 0.0)
    config = settle_budget(config, len(splits.train_images), val is not None, stored is None,
                           ctx.is_main and config.progress)
    extra = default_callbacks(config.progress, config.tensorboard, run_dir, config.patience)  # settled patience
    extra += [*trackers, *callbacks]
    mcfg = model_config_for(config, tuple(splits.train_images.shape[1:]))
    held.enter_context(folder_held(run_dir, config, stored is not None, ctx))
    t = build_trainer(config, mcfg, splits, run_dir, device, ctx, val_images=None if val is None else val.images)
    data_info, test_labels = data_description(splits, own, val), splits.test_labels
    del splits, val
    if ctx.is_main and own is not None:
        report_skipped(run_dir, own)
    if stored is not None:
        _restore(t, stored.epochs)
    if ctx.is_main:
        runs.write_config(run_dir, mcfg, config, data_info)
    held.enter_context(tracked(extra))  # the trackers get the summary and files once they are written
    return Session(t, extra, data_info, test_labels)


def build_trainer(config: TrainConfig, mcfg: ModelConfig, splits: Splits, run_dir: Path, device: torch.device,
                  ctx: distributed.DistContext, val_images: np.ndarray | None = None) -> Trainer:
    """A fresh model, optimizer, generators and step, with the data laid out for the loop.

    ``val_images`` are the validation images: evaluated after each epoch instead of the test images.
    """
    torch.manual_seed(config.seed)
    model = VAE(mcfg).to(device)
    opt = make_adam(model.parameters(), config.lr)
    gens = {"shuffle": torch.Generator().manual_seed(config.seed),
            "noise": torch.Generator(device=device).manual_seed(config.seed + 1)}
    if config.binarize == "dynamic":  # redraws every batch's pixels; checkpointed like the others
        gens["binarize"] = torch.Generator(device=device).manual_seed(config.seed + 2)
    plan = choose_plan(config, model, device, ctx.world_size, is_fused(opt))
    if plan.precision_warning and ctx.is_main:
        warn(f"--precision {config.precision}: {plan.precision_warning}")
    ema = WeightAverage(model, config.ema) if config.ema else None
    step = TrainStep(model, opt, config, plan, ctx, device, warn if ctx.is_main else lambda _: None, ema)
    # The whole training split as one uint8 tensor (4x smaller than float); on the device for a single
    # process, on the host for data-parallel ranks, which gather their shard onto the device each epoch.
    x_all = as_rows(splits.train_images)
    x_test = as_rows(splits.test_images).to(device) if ctx.is_main else None
    x_val = None if val_images is None else as_rows(val_images).to(device if ctx.is_main else "cpu")
    data = TrainData(x_all, None if ctx.enabled else x_all.to(device), x_test, config.batch_size, x_val)
    warmup = round(config.lr_warmup * data.steps_per_epoch)
    schedule = LRSchedule(config.lr_schedule, config.lr, warmup, config.epochs * data.steps_per_epoch)
    return Trainer(config, model, opt, step, gens, TrainState(), schedule, data, run_dir, ctx, device,
                   gens["shuffle"].get_state(), ema=ema)


def _restore(t: Trainer, stored_epochs: int) -> None:
    """Continue from the checkpoint: weights, Adam, generators, position, and the LR schedule, extended
    (from the rate reached, decaying to 0 by the new end) when ``--epochs`` grew."""
    path = t.run_dir / runs.CHECKPOINT
    if not path.exists():
        return
    opt_flags = {k: t.opt.param_groups[0][k] for k in ("fused", "foreach") if k in t.opt.param_groups[0]}
    t.state, t.epoch_shuffle = load_checkpoint(t.run_dir, t.model, t.opt, t.gens, t.average)
    for group in t.opt.param_groups:  # keep this run's Adam implementation, whichever wrote the checkpoint
        group.update(opt_flags)
    t.step.prec.load_state(t.state.scaler)
    spe = t.data.steps_per_epoch
    if t.state.step_in_epoch >= spe:
        raise RunFolderError(f"{path} stands at step {t.state.step_in_epoch} of an epoch, but an epoch of this "
                             "data has fewer steps; the checkpoint does not belong to it")
    if t.state.epoch > t.config.epochs or (t.state.epoch == t.config.epochs
                                           and runs.is_complete(t.run_dir, t.state.epoch, outputs(t.config))):
        raise ConfigError(f"{t.run_dir} already has {t.state.epoch} epochs; pass a larger --epochs to train on")
    heading = t.state.lr_schedule or {"total_steps": stored_epochs * spe, "restart_step": 0, "restart_lr": None}
    t.schedule = replace(t.schedule, **heading).extended(t.config.epochs * spe, t.state.global_step)
    if t.config.progress:
        log(f"resuming {t.run_dir} at epoch {t.state.epoch + 1}, step {t.state.step_in_epoch}"
            if t.state.epoch < t.config.epochs
            else f"finishing {t.run_dir}: writing its weights and summary{' and figures' * t.config.artifacts}")


