"""The three ways a training step computes the loss and its gradients, one class each, with one interface.

``gradients(x, noise, kl_weight)`` returns the loss of one batch (summed over its images, as the post's loss
is) and leaves every parameter's ``.grad`` set to its gradient, nothing else: the non-finite guard and the
optimizer update are the step's (:mod:`vaekit.training.step`). Which class a run uses is the plan's choice
(:func:`vaekit.training.plan.choose_plan`); :func:`make_gradients` builds the one it names.

* :class:`HandWritten`: the post's objective written out by hand (:mod:`vaekit.training.fused`), the same
  numbers as autograd without the engine's bookkeeping;
* :class:`Autograd`: ``loss.backward()`` on :class:`~vaekit.training.objective.Objective`, under the precision's
  autocast (fp16 through its loss scaler), wrapped in DistributedDataParallel under torchrun;
* :class:`Compiled`: the autograd step through ``torch.compile``, which falls back to it if compiling fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from vaekit.compiled import CompiledForward
from vaekit.config import TrainConfig
from vaekit.model import VAE
from vaekit.training.distributed import DistContext
from vaekit.training.fused import FusedLoss
from vaekit.training.objective import Noise, Objective
from vaekit.training.plan import AUTOGRAD, COMPILED, HAND_WRITTEN, StepPlan
from vaekit.training.precision import Precision


class Gradients(Protocol):
    """Loss and gradients of one batch; ``compiled``: whether a compiled step computes them."""

    @property
    def compiled(self) -> bool: ...

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float | Tensor) -> Tensor: ...


class HandWritten(FusedLoss):
    """The post's objective by hand: sets every ``.grad`` afresh, builds no autograd graph."""

    compiled = False


class Autograd:
    """``backward()`` through autograd, under ``prec``'s autocast, data-parallel when ``ctx`` is."""

    def __init__(self, model: VAE, config: TrainConfig, prec: Precision, ctx: DistContext, device: torch.device,
                 warn: Callable[[str], None], compile: bool = False) -> None:  # noqa: A002 - the flag's name
        self.prec = prec
        self.params = list(model.parameters())
        module: torch.nn.Module = Objective(model, config)
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        # DDP averages gradients over ranks while the post's loss is a sum: scale each rank's loss back up.
        self.loss_factor = float(ctx.world_size) if ctx.enabled else None
        self.forward = CompiledForward(module, device, [], self.params, warn, enabled=compile)

    @property
    def compiled(self) -> bool:
        return self.forward.active

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float | Tensor) -> Tensor:
        for p in self.params:  # zero_grad(set_to_none=True) without Optimizer.zero_grad's 30 us of wrapping
            p.grad = None
        return self.forward.run(lambda fwd: self._forward_backward(fwd, x, noise, kl_weight))

    def _forward_backward(self, fwd: Callable[..., Tensor], x: Tensor, noise: Noise,
                          kl_weight: float | Tensor) -> Tensor:
        with self.prec.autocast():
            loss = fwd(x, noise.eps, noise.uniforms, kl_weight)
        self.prec.backward(loss * self.loss_factor if self.loss_factor is not None else loss)
        return loss


class Compiled(Autograd):
    """The autograd step through ``torch.compile``; where compiling cannot work or fails, eager autograd with
    the same numbers, after one warning (:class:`~vaekit.compiled.CompiledForward`)."""

    def __init__(self, model: VAE, config: TrainConfig, prec: Precision, ctx: DistContext, device: torch.device,
                 warn: Callable[[str], None]) -> None:
        super().__init__(model, config, prec, ctx, device, warn, compile=True)


def make_gradients(plan: StepPlan, model: VAE, config: TrainConfig, prec: Precision, ctx: DistContext,
                   device: torch.device, warn: Callable[[str], None]) -> Gradients:
    """The gradients ``plan`` names, for ``model``."""
    if plan.gradients == HAND_WRITTEN:
        return HandWritten(model)
    if plan.gradients == COMPILED:
        return Compiled(model, config, prec, ctx, device, warn)
    assert plan.gradients == AUTOGRAD, plan.gradients
    return Autograd(model, config, prec, ctx, device, warn)
