"""One optimizer step as the plan names it: loss and gradients, a non-finite guard without per-step syncs,
and fused Adam; or all of it as one recorded CUDA graph.

At the post's settings (batch 128, a 440k-parameter MLP) a CPU step is a few milliseconds, so what the
step spends outside the matrix products matters: the finiteness check is one multi-tensor kernel plus one
read, and Adam is one fused kernel. On a GPU, reading any value back stalls the queue of kernels, so the
check leaves a flag on the device that the fused optimizer honours (it skips the update, as with
GradScaler), and the host reads the flag only every N steps; a non-finite value still never reaches the
weights.

Which step runs is decided before training by :func:`vaekit.training.plan.choose_plan`; :class:`TrainStep`
builds what that plan names: the gradients (:mod:`vaekit.training.gradients`), run by :class:`EagerStep`
(gradients, guard, then the update) or by :class:`RecordedStep` (the same, recorded as a CUDA graph).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaekit.config import TrainConfig
from vaekit.model import VAE
from vaekit.training import graphs
from vaekit.training.distributed import DistContext
from vaekit.training.gradients import Gradients, make_gradients
from vaekit.training.objective import Noise
from vaekit.training.optim import adam_state, adam_step, is_fused
from vaekit.training.plan import StepPlan
from vaekit.training.precision import Precision
from vaekit.training.stabilise import Stabiliser, WeightAverage


class FiniteGuard:
    """Notices the first non-finite loss or gradient, reading from the device only when asked.

    :meth:`observe` queues the checks of one step: one multi-tensor kernel sets :attr:`found` when a
    gradient is NaN or infinite (the kernel GradScaler uses, with a scale of 1), and a non-finite loss sets
    it too. The flag is sticky, and when reads are rare (``every`` > 1) the step and loss where it was
    first set are kept on the device so the error can name them. :meth:`first_bad` is the only read.
    """

    def __init__(self, params: list[Tensor], device: torch.device, every: int, check_grads: bool = True) -> None:
        self.params = params
        self.every = every
        self.check_grads = check_grads
        self.found = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_loss = torch.zeros((), device=device)
        self._last: tuple[int, Tensor] | None = None

    def observe(self, loss: Tensor, global_step: int | Tensor) -> None:
        """Queue the checks for the step numbered ``global_step`` (after backward, before the update; a device
        scalar inside a recorded step)."""
        loss = loss.detach()
        if self.check_grads:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self._one)
        if self.every > 1:
            self.found.masked_fill_(~torch.isfinite(loss), 1.0)
            first = (self.found > 0) & (self.first_step < 0)
            if isinstance(global_step, Tensor):  # masked_fill_ would read a device value back to the host
                torch.where(first, global_step, self.first_step, out=self.first_step)
            else:
                self.first_step.masked_fill_(first, global_step)
            torch.where(first, loss.float(), self.first_loss, out=self.first_loss)
        else:  # read back at once: the loss is checked on the host, three small operations fewer per step
            self._last = (global_step, loss)

    def first_bad(self) -> tuple[int, float] | None:
        """``(global step, loss there)`` of the first non-finite step, or None while all is finite."""
        if self.every == 1:
            assert self._last is not None
            step, loss = self._last[0], self._last[1].item()
            if bool(self.found) or not math.isfinite(loss):
                self.found.fill_(1.0)
                return step, loss
            return None
        record = torch.stack([self.found.double(), self.first_step.double(), self.first_loss.double()])
        found, step, loss = record.tolist()
        return (int(step), loss) if found else None

    def grad_norm(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


class EagerStep:
    """The step dispatched operation by operation: loss and gradients, the guard's checks, then Adam.

    ``lr``: None, or a float32 device scalar holding the learning rate (beside a recording, so the steps it
    does not replay use the very rate the recorded ones do).
    """

    def __init__(self, gradients: Gradients, opt: torch.optim.Optimizer, prec: Precision, guard: FiniteGuard,
                 fused_adam: bool) -> None:
        self.gradients, self.opt, self.prec, self.guard = gradients, opt, prec, guard
        # With rare reads the fused kernel skips a flagged update itself; other optimizers are read every step.
        self.skip_flagged = fused_adam and guard.every > 1
        self.lr: Tensor | None = None
        self.supplied: Tensor | None = None  # the next batch's loss, its gradients set already (TrainStep.supply)

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Loss (summed over the batch) and gradients of one batch; the guard sees both."""
        loss, self.supplied = self.supplied, None
        if loss is None:
            loss = self.gradients(x, noise, kl_weight)
        self.guard.observe(loss, global_step)
        return loss

    def update(self) -> None:
        """The optimizer step, skipped by the fused kernel when the guard's flag is set."""
        self.prec.step(self.opt, self.guard.found if self.skip_flagged else None, self.lr)


class RecordedStep:
    """The whole step (gradients, guard and the Adam update) recorded once as a CUDA graph and replayed.

    Full batches replay the recording (or, on a CPU, run its logic on its static buffers without recording);
    an epoch's short last batch, or every batch after a recording failed (one warning), goes through
    ``eager``, with the same float32 device learning rate. A replay has updated the weights already, so
    :meth:`update` then has nothing left to do.
    """

    def __init__(self, eager: EagerStep, params: list[Tensor], device: torch.device, rows: int,
                 warn: Callable[[str], None]) -> None:
        self.eager, self.params, self.warn = eager, params, warn
        self.lr = eager.lr = torch.tensor(float(eager.opt.param_groups[0]["lr"]), device=device)
        self.graph: graphs.StepGraph | None = graphs.StepGraph(self._body, self._mutable_state, device,
                                                               device.type == "cuda", rows)
        self._updated = False  # whether the last step updated the weights itself (a replay does)

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Loss and gradients of one batch, and for a replayed batch the update too."""
        self.lr.fill_(self.eager.opt.param_groups[0]["lr"])
        if self.graph is not None and self.graph.fits(x, noise):
            loss = self._replay(x, noise, kl_weight, global_step)
            if loss is not None:
                return loss
        self._updated = False
        return self.eager(x, noise, kl_weight, global_step)

    def update(self) -> None:
        if not self._updated:  # a replayed graph has updated the weights already
            self.eager.update()

    def _body(self, x: Tensor, noise: Noise, kl_weight: Tensor, step: Tensor) -> Tensor:
        """The whole step on the graph's static tensors: loss, gradients, guard and the Adam update."""
        e = self.eager
        loss = e.gradients(x, noise, kl_weight)
        e.guard.observe(loss, step)
        adam_step(e.opt, e.guard.found, lr=self.lr)
        return loss

    def _mutable_state(self) -> list[Tensor]:
        """What a step changes: the weights, Adam's state and the guard's record."""
        g = self.eager.guard
        return [*self.params, *adam_state(self.eager.opt), g.found, g.first_step, g.first_loss]

    def _replay(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor | None:
        """The recorded step on this batch, or None (and no more recording) if it cannot be recorded here."""
        assert self.graph is not None
        try:
            loss = self.graph(x, noise, kl_weight, global_step)
        except graphs.RecordingError as e:
            self.warn(f"CUDA graph: the step could not be recorded ({e}); dispatching every step instead")
            self.graph = None
            return None
        self._updated = True
        if self.graph.graph is not None:
            self._show_recorded_grads()
        return loss

    def _show_recorded_grads(self) -> None:
        """Point every ``.grad`` at the tensor the recording writes, so the guard's error message reads the
        replayed step's gradients (an unrecorded step, which sets ``.grad`` afresh, repoints them)."""
        assert self.graph is not None
        if self.graph.grads is None:
            self.graph.grads = [p.grad for p in self.params]
        elif self.params[0].grad is not self.graph.grads[0]:
            for p, g in zip(self.params, self.graph.grads, strict=True):
                p.grad = g


class TrainStep:
    """The step ``plan`` names, built for ``model`` and ``opt``: call it on a batch, then :meth:`update`.

    ``step(x, noise, kl_weight, global_step)`` computes the loss and gradients and queues the non-finite
    checks (a replayed CUDA graph updates the weights too); ``update()`` applies Adam unless a replay has.
    ``guard`` holds the checks, ``every`` how often the loop reads them, ``prec`` the precision's state.
    """

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, config: TrainConfig, plan: StepPlan,
                 ctx: DistContext, device: torch.device, warn: Callable[[str], None],
                 ema: WeightAverage | None = None) -> None:
        if plan.fused_adam != is_fused(opt):
            raise ValueError("the step plan was chosen for another optimizer: choose_plan's fused_adam must be "
                             "is_fused(opt)")
        self.plan, self.opt = plan, opt
        if plan.channels_last:  # the same Parameters, their storage reordered; weights files stay contiguous
            model.to(memory_format=torch.channels_last)
        self.prec = Precision.create(plan.precision, device)
        self.params = list(model.parameters())
        self.every = plan.sync_every
        self.guard = FiniteGuard(self.params, device, self.every, check_grads=self.prec.scaler is None)
        self.gradients = make_gradients(plan, model, config, self.prec, ctx, device, warn)
        self.prec.attach(model)  # autocast's outputs back to float32 (see precision.py); fp32: nothing
        eager = EagerStep(self.gradients, opt, self.prec, self.guard, plan.fused_adam)
        self.runner: EagerStep | RecordedStep = (
            RecordedStep(eager, self.params, device, config.batch_size, warn) if plan.graph else eager)
        self.stabiliser = Stabiliser(self.params, config.grad_clip, config.skip_threshold)
        self.ema = ema

    @property
    def graph(self) -> graphs.StepGraph | None:
        """The recording (None when the step is not recorded, or recording failed)."""
        return self.runner.graph if isinstance(self.runner, RecordedStep) else None

    @property
    def compiled(self) -> bool:
        """Whether a compiled step computes the gradients (False once it has fallen back)."""
        return self.gradients.compiled

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Loss (summed over the batch) and gradients of one batch; the guard sees both."""
        return self.runner(x, noise, kl_weight, global_step)

    def supply(self, loss: Tensor) -> None:
        """The next step's loss, computed elsewhere with every ``.grad`` already set: the step then computes no
        gradients itself, and guards and updates as usual (several seeds' steps computed together by
        :mod:`vaekit.experiments.together`). Only an unrecorded step can be supplied."""
        if not isinstance(self.runner, EagerStep):
            raise ValueError("a recorded step computes its own gradients inside the recording")
        self.runner.supplied = loss

    def update(self) -> bool:
        """The optimizer step (nothing when a replayed graph has done it), after the clipping and skipping the
        settings ask for, then the weight average; False when the update was skipped."""
        if self.stabiliser.active and not self.stabiliser.admit():
            return False
        self.runner.update()
        if self.ema is not None:
            self.ema.update()
        return True

    def close(self) -> None:
        self.prec.detach()
