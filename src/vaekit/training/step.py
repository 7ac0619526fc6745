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
from vaekit.training.distributed import DistContext
from vaekit.training.fused import FusedLoss, applies
from vaekit.training.objective import Noise, Objective
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
        self._step = torch.full((), -1, dtype=torch.int64, device=device)
        self._loss = torch.zeros((), device=device)
        self._last: tuple[int, Tensor] | None = None

    def observe(self, loss: Tensor, global_step: int) -> None:
        """Queue the checks for the step numbered ``global_step`` (after backward, before the update)."""
        loss = loss.detach()
        if self.check_grads:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self._one)
        if self.every > 1:
            self.found.masked_fill_(~torch.isfinite(loss), 1.0)
            first = (self.found > 0) & (self._step < 0)
            self._step.masked_fill_(first, global_step)
            torch.where(first, loss.float(), self._loss, out=self._loss)
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
        found, step, loss = torch.stack([self.found.double(), self._step.double(), self._loss.double()]).tolist()
        return (int(step), loss) if found else None

    def grad_norm(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def sync_every(device: torch.device, fused: bool) -> int:
    """How often (in steps) the host reads the non-finite flag and the loss back from the device.

    Every step on the CPU, where reading is free; every 50 steps on an accelerator, where a read stalls the
    queue of kernels. In between, the fused optimizer skips any update the flag marks, so non-finite values
    never reach the weights either way (an optimizer without that ability is checked every step).
    """
    return 1 if device.type == "cpu" or not fused else 50


class TrainStep:
    """Forward and backward of one batch, then the optimizer update; the parts of a step, named.

    ``__call__`` computes the loss and gradients (``precision``'s autocast, ``torch.compile`` with its eager
    fallback, DistributedDataParallel's gradient averaging) and queues the non-finite checks; ``update``
    applies Adam, skipping the update when the guard's flag is set.
    """

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, config: TrainConfig, prec: Precision,
                 ctx: DistContext, device: torch.device, warn: Callable[[str], None]) -> None:
        self.opt, self.prec, self.ctx = opt, prec, ctx
        self.params = list(model.parameters())
        self.fused = bool(opt.param_groups[0].get("fused"))
        self.every = sync_every(device, self.fused)
        self.guard = FiniteGuard(self.params, device, self.every, check_grads=prec.scaler is None)
        module: torch.nn.Module = Objective(model, config)
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        prec.attach(model)
        self.forward = CompiledForward(module, device, [], self.params, warn, enabled=config.compile)
        # The post's objective goes through the hand-written step: the same numbers, less overhead.
        self.by_hand = FusedLoss(model) if applies(model, config, ctx.enabled) else None
        # DDP averages gradients over ranks while the post's loss is a sum: scale each rank's loss back up.
        self.loss_factor = float(ctx.world_size)

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Loss (summed over the batch) and gradients of one batch; the guard sees both."""
        if self.by_hand is not None:
            loss = self.by_hand(x, noise, kl_weight)  # sets every .grad afresh
            self.guard.observe(loss, global_step)
            return loss
        for p in self.params:  # zero_grad(set_to_none=True) without Optimizer.zero_grad's 30 us of wrapping
            p.grad = None
        loss = self.forward.run(lambda fwd: self._forward_backward(fwd, x, noise, kl_weight))
        self.guard.observe(loss, global_step)
        return loss

    def _forward_backward(self, fwd: Callable[..., Tensor], x: Tensor, noise: Noise, kl_weight: float) -> Tensor:
        with self.prec.autocast():
            loss = fwd(x, noise.eps, noise.uniforms, kl_weight)
        self.prec.backward(loss * self.loss_factor if self.ctx.enabled else loss)
        return loss

    def update(self) -> None:
        """The optimizer step; with rare reads the fused kernel skips it itself when the flag is set."""
        self.prec.step(self.opt, self.guard.found if self.fused and self.every > 1 else None)

    def close(self) -> None:
        self.prec.detach()
