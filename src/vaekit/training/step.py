"""One optimizer step: the loss under the chosen precision (compiled where asked, data-parallel under
torchrun), backward, a non-finite guard without per-step syncs, and fused Adam.

At the post's settings (batch 128, a 440k-parameter MLP) a CPU step is a few milliseconds, so what the
step spends outside the matrix products matters: the finiteness check is one multi-tensor kernel plus one
read, and Adam is one fused kernel. On a GPU, reading any value back stalls the queue of kernels, so the
check leaves a flag on the device that the fused optimizer honours (it skips the update, as with
GradScaler), and the host reads the flag only every N steps; a non-finite value still never reaches the
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaekit.compiled import CompiledForward
from vaekit.config import TrainConfig
from vaekit.model import VAE
from vaekit.training import graphs
from vaekit.training.distributed import DistContext
from vaekit.training.fused import FusedLoss, applies
from vaekit.training.objective import Noise, Objective
from vaekit.training.optim import adam_state, adam_step
from vaekit.training.precision import Precision


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


def sync_every(device: torch.device, fused: bool, graph: bool = False) -> int:
    """How often (in steps) the host reads the non-finite flag and the loss back from the device.

    Every step on the CPU, where reading is free; every 50 steps on an accelerator, where a read stalls the
    queue of kernels, and for a recorded step, whose guard keeps its record on the device. In between, the
    fused optimizer skips any update the flag marks, so non-finite values never reach the weights either way
    (an optimizer without that ability is checked every step).
    """
    return 50 if graph or (device.type != "cpu" and fused) else 1


class TrainStep:
    """Forward and backward of one batch, then the optimizer update; the parts of a step, named.

    ``__call__`` computes the loss and gradients (``precision``'s autocast, ``torch.compile`` with its eager
    fallback, DistributedDataParallel's gradient averaging; the post's objective by the hand-written step of
    :mod:`~vaekit.training.fused`) and queues the non-finite checks; ``update`` applies Adam, skipping the
    update when the guard's flag is set. Where :func:`graphs.applies` (or ``graph=True``, which on a CPU runs
    the recorded step's logic without recording), the whole step including the update is one recorded CUDA
    graph, replayed per batch, and ``update`` has nothing left to do.
    """

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, config: TrainConfig, prec: Precision,
                 ctx: DistContext, device: torch.device, warn: Callable[[str], None],
                 graph: bool | None = None) -> None:
        self.opt, self.prec, self.ctx, self.warn = opt, prec, ctx, warn
        self.params = list(model.parameters())
        self.fused = bool(opt.param_groups[0].get("fused"))
        use_graph = graphs.applies(config, device, ctx.enabled, self.fused, prec.name) if graph is None else graph
        self.every = sync_every(device, self.fused, use_graph)
        self.guard = FiniteGuard(self.params, device, self.every, check_grads=prec.scaler is None)
        module: torch.nn.Module = Objective(model, config)
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        prec.attach(model)
        self.forward = CompiledForward(module, device, [], self.params, warn, enabled=config.compile)
        # The post's objective goes through the hand-written step: the same numbers, less overhead.
        self.by_hand = FusedLoss(model) if applies(model, config, ctx.enabled, prec.name) else None
        # DDP averages gradients over ranks while the post's loss is a sum: scale each rank's loss back up.
        self.loss_factor = float(ctx.world_size)
        self.graph: graphs.StepGraph | None = None
        # Beside a recording the rate is a float32 device scalar, for recorded and unrecorded steps alike.
        self.lr: Tensor | None = None
        if use_graph:
            self.lr = torch.tensor(float(opt.param_groups[0]["lr"]), device=device)
            self.graph = graphs.StepGraph(self._recorded_step, self._mutable_state, device, device.type == "cuda",
                                          config.batch_size)
        self._updated = False  # whether the last step updated the weights itself (a replayed graph does)

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Loss (summed over the batch) and gradients of one batch; the guard sees both."""
        if self.lr is not None:
            self.lr.fill_(self.opt.param_groups[0]["lr"])
        if self.graph is not None and self.graph.fits(x, noise):
            loss = self._replay(x, noise, kl_weight, global_step)
            if loss is not None:
                return loss
        self._updated = False
        loss = self._loss_and_grads(x, noise, kl_weight)
        self.guard.observe(loss, global_step)
        return loss

    def _loss_and_grads(self, x: Tensor, noise: Noise, kl_weight: float | Tensor) -> Tensor:
        if self.by_hand is not None:
            return self.by_hand(x, noise, kl_weight)  # sets every .grad afresh
        for p in self.params:  # zero_grad(set_to_none=True) without Optimizer.zero_grad's 30 us of wrapping
            p.grad = None
        return self.forward.run(lambda fwd: self._forward_backward(fwd, x, noise, kl_weight))

    def _forward_backward(self, fwd: Callable[..., Tensor], x: Tensor, noise: Noise,
                          kl_weight: float | Tensor) -> Tensor:
        with self.prec.autocast():
            loss = fwd(x, noise.eps, noise.uniforms, kl_weight)
        self.prec.backward(loss * self.loss_factor if self.ctx.enabled else loss)
        return loss

    def _recorded_step(self, x: Tensor, noise: Noise, kl_weight: Tensor, step: Tensor) -> Tensor:
        """The whole step on the graph's static tensors: loss, gradients, guard and the Adam update."""
        loss = self._loss_and_grads(x, noise, kl_weight)
        self.guard.observe(loss, step)
        adam_step(self.opt, self.guard.found, lr=self.lr)
        return loss

    def _mutable_state(self) -> list[Tensor]:
        """What a step changes: the weights, Adam's state and the guard's record."""
        g = self.guard
        return [*self.params, *adam_state(self.opt), g.found, g.first_step, g.first_loss]

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
        if self.graph.graph is not None:  # replays write the recording's gradients; .grad should show them
            if self.graph.grads is None:
                self.graph.grads = [p.grad for p in self.params]
            elif self.params[0].grad is not self.graph.grads[0]:  # an unrecorded step replaced them
                for p, g in zip(self.params, self.graph.grads, strict=True):
                    p.grad = g
        return loss

    def update(self) -> None:
        """The optimizer step; with rare reads the fused kernel skips it itself when the flag is set."""
        if self._updated:
            return  # the replayed graph has updated the weights already
        found = self.guard.found if self.fused and self.every > 1 else None
        self.prec.step(self.opt, found, self.lr)

    def close(self) -> None:
        self.prec.detach()
