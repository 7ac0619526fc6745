"""fit(): the training loop, epoch by epoch and step by step, with everything else in callbacks.

The blog post iterates a ``DataLoader`` that converts every image from PIL to a tensor in Python; here the
whole split is one uint8 tensor on the training device and a batch is ``data[perm[i:i + B]]``, so the loop
does no per-sample Python work. What happens around the optimization (the bar, checkpoints, metrics.csv,
logging) is a :class:`~vaekit.training.callbacks.Callback`, so this file is the method and nothing more.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vaekit import run as runs
from vaekit.errors import Interrupted, NonFiniteError
from vaekit.eval.elbo import evaluate_elbo
from vaekit.training import distributed
from vaekit.training.callbacks import Callback, CallbackList, StepResult
from vaekit.training.checkpoint import TrainState
from vaekit.training.objective import Noise, draw_noise
from vaekit.training.schedule import kl_weight
from vaekit.training.signals import StopFlag
from vaekit.training.trainer import Trainer


@dataclass(frozen=True)
class StepInputs:
    """What one step computes on: the batch (uint8 rows), its noise, and the KL weight."""

    x: Tensor
    noise: Noise
    kl_weight: float


class EpochBatches:
    """The batches of one epoch: a fresh permutation, then batch s is rows ``perm[s*B:(s+1)*B]``.

    Under torchrun each rank gathers the rows of its slices of every global batch onto its device at the
    start of the epoch (:func:`distributed.shard_rows`), so a device holds 1/N of the data.
    """

    def __init__(self, t: Trainer) -> None:
        self.t = t
        self.perm = torch.randperm(t.data.n, generator=t.gens["shuffle"])
        if t.ctx.enabled:
            positions, self.offsets = distributed.shard_rows(t.data.n, t.data.batch_size, t.ctx.world_size,
                                                             t.ctx.rank)
            self.rows = t.data.x_all.index_select(0, self.perm[positions]).to(t.device)
        else:
            self.perm = self.perm.to(t.device)

    def batch(self, step: int) -> tuple[Tensor, int, tuple[int, int] | None]:
        """Step ``step``'s images, the global batch size, and which rows of it this rank holds."""
        t, bs = self.t, self.t.data.batch_size
        if not t.ctx.enabled:
            x = t.data.x_train.index_select(0, self.perm[step * bs : (step + 1) * bs])  # rows copied with memcpy
            return x, x.shape[0], None
        x = self.rows[self.offsets[step] : self.offsets[step + 1]]
        rows = min(bs, t.data.n - step * bs)
        return x, rows, (rows * t.ctx.rank // t.ctx.world_size, x.shape[0])


def fit(t: Trainer, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train from ``t.state`` to ``t.config.epochs`` epochs; returns the final state.

    Ctrl-C or SIGTERM stops at the next step boundary: the callbacks save a consistent checkpoint and
    :class:`~vaekit.errors.Interrupted` says how to resume. A non-finite loss or gradient stops before it
    reaches the weights, as :class:`~vaekit.errors.NonFiniteError`.
    """
    for _ in fit_steps(t, callbacks):
        pass
    return t.state


def fit_steps(t: Trainer, callbacks: Sequence[Callback] = (), stop: StopFlag | None = None
              ) -> Generator[StepInputs, None, None]:
    """:func:`fit`, paused before each step: it yields the step's inputs, and the step runs when it resumes.

    Several runs driven in lockstep this way can have their steps computed together (one stacked
    computation for several seeds, :mod:`vaekit.experiments.together`) while each keeps its own loop,
    callbacks and run folder. ``stop``: a flag shared by such runs (installed by the caller); by default
    fit installs its own for the duration.
    """
    cbs = CallbackList(callbacks)
    try:
        cbs.on_fit_start(t)
        with (contextlib.nullcontext(stop) if stop is not None else StopFlag()) as flag, \
                torch.autograd.set_detect_anomaly(t.config.detect_anomaly):
            for epoch in range(t.state.epoch + 1, t.config.epochs + 1):
                if t.stop_reason is not None:  # a callback ended training (early stopping, a time budget)
                    break
                stopped = yield from train_epoch(t, epoch, flag, cbs)
                cbs.on_epoch_end(t, t.state.history[-1])
                if stopped and epoch < t.config.epochs and t.stop_reason is None:
                    raise Interrupted(f"interrupted after epoch {epoch}; checkpoint saved; "
                                      f"continue with: vaekit train --resume --out {t.run_dir}", flag.signal or 2)
        cbs.on_fit_end(t)
    finally:
        t.step.close()
        cbs.teardown(t)


def train_epoch(t: Trainer, epoch: int, stop: StopFlag, cbs: Callback) -> Generator[StepInputs, None, bool]:
    """Run epoch ``epoch`` from where ``t.state`` stands and record its row; True if a stop was asked for.
    Yields each step's inputs before the step (see :func:`fit_steps`)."""
    t.gens["shuffle"].set_state(t.epoch_shuffle)
    batches = EpochBatches(t)
    cbs.on_epoch_start(t, epoch)
    spe = t.data.steps_per_epoch
    loss_sum = torch.tensor(t.state.epoch_loss_sum, dtype=torch.float64, device=t.device)
    t0 = time.perf_counter()
    step, stopping = t.state.step_in_epoch, False
    while step < spe:
        x, rows, keep = batches.batch(step)
        if t.schedule.scheduled:
            for group in t.opt.param_groups:
                group["lr"] = t.schedule.at(t.state.global_step)
        noise = draw_noise(t.gens, t.config, rows, t.model.latent_size, x.shape[1], t.device, keep)
        weight = kl_weight(t.config.beta, t.config.kl_warmup, epoch - 1 + step / spe)
        yield StepInputs(x, noise, weight)
        loss = t.step(x, noise, weight, step + 1)
        step += 1
        due = bool(t.config.checkpoint_every) and (t.state.global_step + 1) % t.config.checkpoint_every == 0
        stopping = _check_step(t, step, due, epoch, stop)
        if not t.step.update():
            t.state.skipped_updates += 1
        t.state.global_step += 1
        loss_sum += loss.detach()
        cbs.on_step_end(t, StepResult(step, loss, x.shape[0]))
        if (due or stopping) and step < spe:
            cbs.on_save_point(t, replace(t.state, step_in_epoch=step, **_partial(t, loss_sum, t0)))
        if stopping:
            if step == spe:
                break  # the epoch is complete: finish it and save at its end, as usual
            raise Interrupted(f"interrupted at epoch {epoch}, step {step}; checkpoint saved; "
                              f"continue with: vaekit train --resume --out {t.run_dir}", stop.signal or 2)
    _end_epoch(t, epoch, loss_sum, t.state.epoch_seconds + time.perf_counter() - t0)
    return stopping


def _partial(t: Trainer, loss_sum: Tensor, t0: float) -> dict:
    """The in-epoch totals of a mid-epoch save point (collective under torchrun: every rank calls it)."""
    return dict(epoch_loss_sum=t.ctx.all_reduce_(loss_sum.clone()).item(),
                epoch_seconds=t.state.epoch_seconds + time.perf_counter() - t0, scaler=t.step.prec.state(),
                lr_schedule=t.schedule.state())


def _check_step(t: Trainer, step: int, due: bool, epoch: int, stop: StopFlag) -> bool:
    """Read the non-finite flag when it is time to (raising if it is set); whether to stop now.

    Under torchrun every rank must agree to stop, and on the flag the optimizer honours, so both are
    all-reduced whenever they are read.
    """
    if not (step % t.step.every == 0 or step == t.data.steps_per_epoch or due):
        return stop.raised and not t.ctx.enabled
    bad = t.step.guard.first_bad()
    stopping = stop.raised
    if t.ctx.enabled:
        flags = torch.tensor([float(bad is not None), float(stopping)], device=t.device)
        bad_anywhere, stopping = (v > 0 for v in t.ctx.all_reduce_(flags, "max").tolist())
        if bad_anywhere and bad is None:
            bad = (step, 0.0)  # the loss was finite here; it was not on another rank
    if bad is not None:
        raise nonfinite_error(t, bad, step, epoch)
    return stopping


def _end_epoch(t: Trainer, epoch: int, loss_sum: Tensor, seconds: float) -> None:
    """Evaluate on the validation set, or without one the test set, and move ``t.state`` to the end of
    ``epoch`` with its metrics row."""
    train_loss = t.ctx.all_reduce_(loss_sum.clone()).item() / t.data.n
    metrics = _test_metrics(t) if t.data.x_val is None else validation_metrics(t)
    row = {"epoch": epoch, "train_loss": train_loss, **metrics, "seconds": seconds,
           "lr": float(t.opt.param_groups[0]["lr"])}
    t.state = replace(t.state, epoch=epoch, step_in_epoch=0, epoch_loss_sum=0.0, epoch_seconds=0.0,
                      history=[*t.state.history, row], scaler=t.step.prec.state(), lr_schedule=t.schedule.state())
    t.epoch_shuffle = t.gens["shuffle"].get_state()


def _test_metrics(t: Trainer) -> dict[str, float]:
    """The test ELBO of a run without a validation split: rank 0 evaluates, the others' row holds NaN."""
    if not t.ctx.is_main:  # only rank 0 evaluates and records; the others go on to the next epoch
        return {"test_loss": math.nan, "test_recon": math.nan, "test_kl": math.nan}
    c = t.config
    return evaluate_elbo(t.eval_model, t.data.x_test, c.likelihood, c.sigma, c.eval_batch_size)


def validation_metrics(t: Trainer) -> dict[str, float]:
    """The ELBO on the validation images: ``val_loss``, ``val_recon``, ``val_kl`` (nats per image).

    Rank 0 evaluates and shares the numbers, so that every process's callbacks see the same ``val_loss``
    and may stop training on it alike (collective under torchrun: every rank calls it).
    """
    values = torch.zeros(3, dtype=torch.float64, device=t.device)
    if t.ctx.is_main:
        c = t.config
        m = evaluate_elbo(t.eval_model, t.data.x_val, c.likelihood, c.sigma, c.eval_batch_size)
        values = torch.tensor([m["test_loss"], m["test_recon"], m["test_kl"]], dtype=torch.float64, device=t.device)
    return dict(zip(runs.VAL_METRIC_COLUMNS, t.ctx.all_reduce_(values).tolist(), strict=True))


def nonfinite_error(t: Trainer, bad: tuple[int, float], step: int, epoch: int) -> NonFiniteError:
    """The one-line error for a non-finite loss or gradient; nothing written so far has been touched."""
    bad_step, loss = bad
    if not math.isfinite(loss):
        what = f"the loss became {loss}"
    elif bad_step == step:
        what = f"the gradient became {t.step.guard.grad_norm()}"
    else:
        what = "the gradient became non-finite"
    saved = t.run_dir / runs.CHECKPOINT
    kept = f"the last good checkpoint {saved} is kept" if saved.exists() else "no checkpoint had been written yet"
    return NonFiniteError(
        f"{what} at epoch {epoch}, step {bad_step}; "
        f"{kept}. Likely causes: a learning rate too high (try a smaller --lr), input pixels outside [0, 1] "
        "for the bernoulli likelihood, or reduced precision overflow; --detect-anomaly finds the operation"
    )
