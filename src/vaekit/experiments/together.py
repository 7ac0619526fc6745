"""Several seeds in one process with their steps computed together: the seeds' weights stacked, and one
``torch.func.vmap`` of the step computing every seed's loss and gradients at once.

Each seed keeps its own run. Its trainer, callbacks, checkpoints, generators and run folder are the ones
``vaekit train --seed N`` builds (:func:`vaekit.training.session.open_session`). Its loop
(:func:`vaekit.training.loop.fit_steps`) pauses before each step, so the steps of all seeds can be computed at
once. Only the loss and gradients are shared work; Adam, the non-finite guard, evaluation and every file stay per seed.

Whether the stacked step gives the same bits as a seed's own step depends on the kernels. A batched matrix
product may add in another order than the product a single run makes. :func:`probe` runs both on the same
inputs, at both batch shapes an epoch has, and compares the loss and every gradient bit for bit; it also times
both. With ``--seeds-together auto`` the seeds are stacked only where all agree and stacking is faster, so every
seed stays the run it would be alone. ``yes`` stacks them anyway: each seed is then that run within rounding
where the bits differed, and the summary says so.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from vaekit.errors import Interrupted
from vaekit.training.callbacks import Callback, EpochLog, ProgressBar
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
        params = [dict(t.model.named_parameters()) for t in trainers]
        for name in self.names:
            own = [p[name] for p in params]
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


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` found: where the stacked step's bits differ from the seeds' own steps (None: nowhere),
    and the median milliseconds of one step of all seeds, stacked and one seed after another."""

    differs: str | None
    stacked_ms: float
    own_ms: float

    @property
    def faster(self) -> bool:
        return self.stacked_ms < self.own_ms

    def times(self) -> str:
        return f"{self.stacked_ms:.1f} ms a step of all seeds stacked, {self.own_ms:.1f} ms one seed after another"


def probe(stacked: StackedStep, rows: Sequence[int], repeats: int = 3) -> Probe:
    """Run the stacked step and each seed's own step on the same random inputs of each batch size in ``rows``:
    compare their loss and every gradient bit for bit, and time both (median of ``repeats`` after a warm-up,
    at the full batch size ``rows[-1]``). Nothing of the seeds' training state changes: the ``.grad`` set here
    are replaced by the first step, and no generator of theirs is drawn from."""
    gen = torch.Generator().manual_seed(0)
    differs = None
    for n in rows:
        inputs = _random_inputs(stacked.trainers[0], n, len(stacked.trainers), gen)
        differs = differs or _differs(stacked, inputs)
    device = stacked.trainers[0].device

    def timed(step: Callable[[], object]) -> float:
        step()  # warm-up: the first vmapped call traces
        ms = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            ms.append(1000 * (time.perf_counter() - start))
        return statistics.median(ms)

    own = [t.step.gradients for t in stacked.trainers]
    stacked_ms = timed(lambda: stacked(inputs))
    own_ms = timed(lambda: [g(i.x, i.noise, 1.0) for g, i in zip(own, inputs, strict=True)])
    return Probe(differs, stacked_ms, own_ms)


def _random_inputs(t: Trainer, n: int, seeds: int, gen: torch.Generator) -> list[StepInputs]:
    """A batch of ``n`` random images and noise per seed, as the seeds' loops would give them."""
    pixels, zdim = t.model.config.input_dim, t.model.latent_size

    def one() -> StepInputs:
        x = torch.randint(0, 256, (n, pixels), generator=gen, dtype=torch.uint8)
        uniforms = torch.rand(n, pixels, generator=gen) if "binarize" in t.gens else None
        noise = Noise(torch.randn(n, zdim, generator=gen).to(t.device),
                      None if uniforms is None else uniforms.to(t.device))
        return StepInputs(x.to(t.device), noise, 1.0)

    return [one() for _ in range(seeds)]


def _differs(stacked: StackedStep, inputs: list[StepInputs]) -> str | None:
    """Where the stacked step on ``inputs`` differs from each seed's own step on its input (None: nowhere)."""
    n = inputs[0].x.shape[0]
    losses = stacked(inputs)
    together = [[p.grad for p in t.model.parameters()] for t in stacked.trainers]
    for i, t in enumerate(stacked.trainers):
        own = t.step.gradients(inputs[i].x, inputs[i].noise, 1.0)
        if not torch.equal(own, losses[i]):
            return f"the loss of a batch of {n} differs by {_relative(own, losses[i]):.2g} of its size"
        for name, p, q in zip(stacked.names, t.model.parameters(), together[i], strict=True):
            if not torch.equal(p.grad, q):
                return (f"the gradient of {name} for a batch of {n} differs by up to {_relative(p.grad, q):.2g} of "
                        "its size")
    return None


def _relative(a: Tensor, b: Tensor) -> float:
    """The largest difference between ``a`` and ``b`` over the largest magnitude in ``a``: rounding shows as
    about 1e-7 in float32, whatever the scale of the numbers compared."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(torch.finfo(a.dtype).tiny)).item()


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a GPU's time is of the work and not of its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_together(sessions: Sequence[Session], stacked: StackedStep | None) -> None:
    """Fit every session in lockstep, each round of steps computed by ``stacked`` (None: each seed's own step).

    A round where a seed has finished (early stopping) or the batches differ in size runs each seed's own
    step instead. Ctrl-C reaches every seed through one shared flag, so each saves its checkpoint at the same
    step before :class:`~vaekit.errors.Interrupted` ends the whole; any other error ends it at once.
    """
    interrupted: list[Interrupted] = []
    with RoundStop() as stop:
        loops = [fit_steps(s.trainer, s.callbacks if i == 0 else _without_bar(s.callbacks), stop)
                 for i, s in enumerate(sessions)]
        try:
            pending = _advance(loops, dict.fromkeys(range(len(loops))), interrupted)
            while pending:
                inputs = list(pending.values())
                if stacked is not None and len(pending) == len(loops) and len({i.x.shape for i in inputs}) == 1:
                    for t, loss in zip(stacked.trainers, stacked(inputs), strict=True):
                        t.step.supply(loss)
                stop.latch()
                pending = _advance(loops, pending, interrupted)
        finally:
            for loop in loops:
                loop.close()
    if interrupted:
        raise Interrupted("interrupted; every seed's checkpoint is saved", interrupted[0].exit_code - 128)


class RoundStop(StopFlag):
    """The stop flag of seeds in lockstep, read as it stood when the round of steps began (:meth:`latch`): a
    Ctrl-C that lands between two seeds' steps stops every seed after the same step, so that they resume
    together, as one round, and not one step apart."""

    def __init__(self) -> None:
        super().__init__()
        self._latched: int | None = None

    def latch(self) -> None:
        self._latched = self.signal

    @property
    def raised(self) -> bool:
        return self._latched is not None


def _without_bar(callbacks: list[Callback]) -> list[Callback]:
    """A seed's callbacks less the progress bar and epoch log: seeds fitted in lockstep show the first's only."""
    return [c for c in callbacks if not isinstance(c, (ProgressBar, EpochLog))]


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
