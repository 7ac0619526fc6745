"""Several seeds in one process with their steps computed together: the seeds' weights stacked, and one
``torch.func.vmap`` of the step computing every seed's loss and gradients at once.

Each seed keeps its own run. Its trainer, callbacks, checkpoints, generators and run folder are the ones
``vaekit train --seed N`` builds (:func:`vaekit.training.session.open_session`). Its loop
(:func:`vaekit.training.loop.fit_steps`) pauses before each step, so the steps of all seeds can be computed at
once. Only the loss and gradients are shared work; Adam, the non-finite guard, evaluation and every file stay per seed.

Whether the stacked step gives the same bits as a seed's own step depends on the kernels. A batched matrix
product may add in another order than the product a single run makes. :func:`mismatch` runs both on the same
inputs, at both batch shapes an epoch has, and compares the loss and every gradient bit for bit. With
``--seeds-together auto`` the seeds are stacked only where all agree, so every seed stays the run it would be
alone. ``yes`` stacks them anyway: each seed is then that run within rounding, and the summary says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from vaekit.errors import Interrupted
from vaekit.training.loop import StepInputs, fit_steps
from vaekit.training.objective import Noise, Objective
from vaekit.training.plan import HAND_WRITTEN
from vaekit.training.session import Session
from vaekit.training.signals import StopFlag
from vaekit.training.trainer import Trainer


def together_blocker(trainers: Sequence[Trainer]) -> str | None:
    """Why these seeds cannot have their steps stacked (None: they can).

    The stacked step is the post's objective through ``torch.func``, so it takes what the hand-written step
    takes (an MLP, the single-draw ELBO, Bernoulli, fp32, one process), run eagerly: a seed whose own step is
    recorded as a CUDA graph computes it inside the recording, where nothing else can supply it.
    """
    if len(trainers) < 2:
        return "one seed to train"
    first = trainers[0]
    if first.step.plan.gradients != HAND_WRITTEN:
        return f"only the post's MLP objective is stacked, and this run's step is {first.step.plan.gradients}"
    if first.step.plan.graph:
        return "each seed's step is recorded as a CUDA graph (--no-cuda-graph stacks them instead)"
    if any(t.model.config != first.model.config or t.data.batch_size != first.data.batch_size for t in trainers):
        return "the seeds' models or batch sizes differ"
    return None


class StackedStep:
    """Every seed's loss and gradients in one vmapped computation over their stacked weights.

    The seeds' parameters become views into one stacked tensor per parameter (``p.data``: the same
    Parameter objects, so each seed's optimizer, checkpoint and weights file see them as before). Each step
    sets every seed's ``.grad`` to its slice of the stacked gradients, copying nothing.
    """

    def __init__(self, trainers: Sequence[Trainer]) -> None:
        self.trainers = list(trainers)
        first = trainers[0]
        self.objective = Objective(first.model, first.config)
        self.names = [name for name, _ in first.model.named_parameters()]
        self.stacked: dict[str, Tensor] = {}
        for name in self.names:
            own = [dict(t.model.named_parameters())[name] for t in trainers]
            self.stacked[name] = torch.stack([p.detach() for p in own])
            for i, p in enumerate(own):
                p.data = self.stacked[name][i]

    def _seed_loss(self, params: dict[str, Tensor], x: Tensor, eps: Tensor, uniforms: Tensor | None,
                   kl_weight: Tensor) -> Tensor:
        """One seed's summed negative ELBO as a function of its weights (what vmap maps over the seeds)."""
        named = {f"model.{name}": value for name, value in params.items()}
        return functional_call(self.objective, named, (x, eps, uniforms, kl_weight))

    def __call__(self, inputs: Sequence[StepInputs]) -> list[Tensor]:
        """The loss of each seed's batch (``inputs[i]`` is seed i's), with every seed's ``.grad`` set."""
        x = torch.stack([i.x for i in inputs])
        eps = torch.stack([i.noise.eps for i in inputs])
        uniforms = None if inputs[0].noise.uniforms is None else torch.stack([i.noise.uniforms for i in inputs])
        weights = torch.tensor([i.kl_weight for i in inputs], device=x.device)
        params = {name: self.stacked[name] for name in self.names}
        dims = (0, 0, 0, None if uniforms is None else 0, 0)
        grads, losses = vmap(grad_and_value(self._seed_loss), in_dims=dims)(params, x, eps, uniforms, weights)
        for i, t in enumerate(self.trainers):
            for name, p in zip(self.names, t.model.parameters(), strict=True):
                p.grad = grads[name][i]
        return list(losses.unbind(0))


def mismatch(stacked: StackedStep, rows: Sequence[int]) -> str | None:
    """Where the stacked step's bits differ from each seed's own step (None: nowhere), on random inputs of
    each batch size in ``rows``. Nothing of the seeds' training state changes (the ``.grad`` set here are
    replaced by the first step)."""
    gen = torch.Generator().manual_seed(0)
    first = stacked.trainers[0]
    pixels, zdim = first.model.config.input_dim, first.model.latent_size
    device = first.device
    for n in rows:
        inputs = [StepInputs(torch.randint(0, 256, (n, pixels), generator=gen, dtype=torch.uint8).to(device),
                             Noise(torch.randn(n, zdim, generator=gen).to(device),
                                   torch.rand(n, pixels, generator=gen).to(device)
                                   if "binarize" in first.gens else None), 1.0) for _ in stacked.trainers]
        losses = stacked(inputs)
        together = [[p.grad for p in t.model.parameters()] for t in stacked.trainers]
        for i, t in enumerate(stacked.trainers):
            own = t.step.gradients(inputs[i].x, inputs[i].noise, 1.0)
            if not torch.equal(own, losses[i]):
                return f"the loss of a batch of {n} differs by {abs(own.item() - losses[i].item()):.3g}"
            for name, p, q in zip(stacked.names, t.model.parameters(), together[i], strict=True):
                if not torch.equal(p.grad, q):
                    return f"the gradient of {name} for a batch of {n} differs by up to " \
                           f"{(p.grad - q).abs().max().item():.3g}"
    return None


def fit_together(sessions: Sequence[Session], stacked: StackedStep | None) -> None:
    """Fit every session in lockstep, each round of steps computed by ``stacked`` (None: each seed's own step).

    A round where a seed has finished (early stopping) or the batches differ in size runs each seed's own
    step instead. Ctrl-C reaches every seed through one shared flag, so each saves its checkpoint at the same
    step before :class:`~vaekit.errors.Interrupted` ends the whole; any other error ends it at once.
    """
    interrupted: list[Interrupted] = []
    with StopFlag() as stop:
        loops = [fit_steps(s.trainer, s.callbacks, stop) for s in sessions]
        try:
            pending = _advance(loops, dict.fromkeys(range(len(loops))), interrupted)
            while pending:
                inputs = list(pending.values())
                if stacked is not None and len(pending) == len(loops) and len({i.x.shape for i in inputs}) == 1:
                    for t, loss in zip(stacked.trainers, stacked(inputs), strict=True):
                        t.step.supply(loss)
                pending = _advance(loops, pending, interrupted)
        finally:
            for loop in loops:
                loop.close()
    if interrupted:
        raise Interrupted(f"interrupted; every seed's checkpoint is saved ({interrupted[0]})",
                          interrupted[0].exit_code - 128)


def _advance(loops: list[Generator[StepInputs, None, None]], pending: dict[int, StepInputs | None],
             interrupted: list[Interrupted]) -> dict[int, StepInputs]:
    """Run each pending loop's step and on to its next pause; the loops still training, with their inputs."""
    after: dict[int, StepInputs] = {}
    for i in pending:
        with contextlib.suppress(StopIteration):
            try:
                after[i] = next(loops[i])
            except Interrupted as e:
                interrupted.append(e)
    return after
