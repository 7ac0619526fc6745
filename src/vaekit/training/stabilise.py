"""The stabilisers deep VAE hierarchies need (Child's VDVAE, Vahdat and Kautz's NVAE): gradient clipping,
skipping updates with a huge gradient norm, and an exponential moving average of the weights.

A deep hierarchy's KL terms occasionally produce gradient spikes of many orders of magnitude; clipping the
global norm bounds a step, skipping the rare update above a threshold keeps a single bad batch from wrecking
the weights, and the weight average smooths the optimizer's noise out of the weights that are evaluated and
sampled. All three act between the gradients and the optimizer, so they apply to every model and every way
of computing the gradients; each is off by default, which leaves a run's step untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def global_grad_norm(params: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together (a device scalar): the norm clipping and skipping measure."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class Stabiliser:
    """Clips and skips on the gradients of ``params`` before each update.

    :meth:`admit` is called after the gradients are set and before the optimizer: it measures the global norm,
    returns False when the update is to be skipped (norm above ``skip_threshold``), and otherwise clips the
    gradients in place to ``grad_clip``. ``last_norm`` keeps the norm measured.
    """

    def __init__(self, params: list[Tensor], grad_clip: float, skip_threshold: float) -> None:
        self.params, self.grad_clip, self.skip_threshold = params, float(grad_clip), float(skip_threshold)
        self.last_norm = 0.0

    @property
    def active(self) -> bool:
        return self.grad_clip > 0 or self.skip_threshold > 0

    def admit(self) -> bool:
        """Whether to apply this step's update; clips the gradients when it is applied."""
        norm = global_grad_norm(self.params)
        if self.skip_threshold > 0:
            self.last_norm = float(norm)  # one read per step: the decision is the host's
            if self.last_norm > self.skip_threshold:  # (a NaN norm is not skipped: the non-finite guard stops it)
                return False
        if self.grad_clip > 0:
            grads = [p.grad for p in self.params if p.grad is not None]
            factor = torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0)
            torch._foreach_mul_(grads, factor.to(grads[0].device))
        return True


class WeightAverage:
    """An exponential moving average of a model's weights, in a copy of the model used for evaluation.

    After every applied update, each floating-point tensor of the state (parameters and buffers) becomes
    ``rate * average + (1 - rate) * current``. The copy is a whole model, so evaluation, the figures and
    ``model.safetensors`` take it as they take the trained one; its tensors are checkpointed so a resumed
    run continues the same average.
    """

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = float(rate)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self._live = _float_tensors(model)
        self._avg = _float_tensors(self.model)

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights."""
        torch._foreach_mul_(self._avg, self.rate)
        torch._foreach_add_(self._avg, self._live, alpha=1.0 - self.rate)


def _float_tensors(model: nn.Module) -> list[Tensor]:
    """The floating-point tensors of the model's state, in state-dict order (the ones an average makes sense of)."""
    return [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]
