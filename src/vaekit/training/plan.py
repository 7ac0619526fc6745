"""The plan of the training step, chosen once from the settings, the model and the device, with the reasons.

A training step can compute the loss's gradients three ways (autograd, autograd under ``torch.compile``, or
the post's objective written out by hand in :mod:`~vaekit.training.fused`), may run the whole step as one
recorded CUDA graph (:mod:`~vaekit.training.graphs`), trains in one precision (fp32, or bf16/fp16 autocast,
fp16 with a loss scaler), on one process or several (DistributedDataParallel under torchrun), and reads the
non-finite flag back every step or every few steps. Which of these applies follows from rules about the
settings, the model and the device; :func:`choose_plan` applies them all here, in one place, before training,
and the :class:`StepPlan` it returns names every choice and why it was made, so ``vaekit train`` can say in
one line which step runs (:meth:`StepPlan.line`). :class:`~vaekit.training.step.TrainStep` builds the step the plan
names and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaekit.config import TrainConfig
from vaekit.model import VAE
from vaekit.training import precision as precisions
from vaekit.training.fused import model_blocker

HAND_WRITTEN, AUTOGRAD, COMPILED = "hand-written", "autograd", "compiled"
CUDA_GRAPH = "cuda-graph"
# Steps between reads of the non-finite flag where a read stalls the device's queue of kernels.
DEFERRED_SYNC = 50
_PRECISION_NAMES = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}


@dataclass(frozen=True)
class StepPlan:
    """How each training step is computed, and why.

    ``gradients``: ``"hand-written"``, ``"autograd"`` or ``"compiled"``; ``graph``: whether the whole step
    (gradients, the non-finite guard and Adam) is recorded once as a CUDA graph and replayed; ``precision``:
    the one trained in, after any fallback (``precision_warning`` says why it differs from the one asked
    for); ``world_size``: processes, more than one meaning DistributedDataParallel; ``fused_adam``: whether
    Adam runs as its fused kernel, which can skip an update on the guard's device flag; ``sync_every``: steps
    between host reads of that flag; ``channels_last``: whether a conv model's weights and images are laid out
    channels last (see :func:`channels_last_reason`). ``why``: one phrase per choice.
    """

    gradients: str
    graph: bool
    precision: str
    world_size: int
    fused_adam: bool
    sync_every: int
    why: tuple[str, ...] = ()
    precision_warning: str | None = None
    channels_last: bool = False

    @property
    def strategy(self) -> str:
        """The step that runs: ``cuda-graph`` (around the gradients named by ``gradients``) or ``gradients``."""
        return CUDA_GRAPH if self.graph else self.gradients

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def line(self) -> str:
        """The plan in one line, as ``vaekit train`` prints it at the start."""
        label = f"{CUDA_GRAPH} of {self.gradients}" if self.graph else self.gradients
        processes = "one process" if not self.distributed else f"DDP over {self.world_size} processes"
        check = "every step" if self.sync_every == 1 else f"every {self.sync_every} steps"
        return (f"step: {label} ({'; '.join(self.why)}); {_PRECISION_NAMES[self.precision]}; {processes}; "
                f"non-finite check {check}")


def choose_plan(config: TrainConfig, model: VAE, device: torch.device, world_size: int = 1,
                fused_adam: bool = True) -> StepPlan:
    """The step to train ``model`` with under ``config`` on ``device`` with ``world_size`` processes.

    ``fused_adam``: whether the optimizer runs Adam's fused kernel (:func:`~vaekit.training.optim.make_adam`
    falls back where it has none). Only the device's type (and, for bf16, whether it has bf16 arithmetic) is
    inspected, so the choice for a CUDA run can be checked on a machine without one. ``torch.compile`` can
    still turn out not to work when the step first runs; it then falls back to autograd with a warning.
    """
    conv = model.config.architecture == "conv"
    prec, warning = precisions.resolve(config.precision, device, conv)
    blocker = hand_written_blocker(config, model, prec, world_size)
    if blocker is None:
        gradients, why = HAND_WRITTEN, ["MLP, single-draw ELBO, Bernoulli, fp32, one process"]
    elif config.compile:
        gradients, why = COMPILED, ["--compile"]
    else:
        gradients, why = AUTOGRAD, [blocker]
    graph_blocker = cuda_graph_blocker(config, device, prec, world_size, fused_adam)
    if graph_blocker is None:
        why.append("recorded on CUDA in fp32 with fused Adam on one process")
    elif device.type == "cuda":
        why.append(f"no CUDA graph: {graph_blocker}")
    graph = graph_blocker is None
    default_why = precisions.default_precision(device, conv)[1] if config.precision == "auto" else None
    if default_why is not None:
        why.append(default_why)
    layout_why = channels_last_reason(conv, device)
    if layout_why is not None:
        why.append(layout_why)
    why.extend(stabiliser_phrases(config))
    return StepPlan(gradients, graph, prec, world_size, fused_adam, sync_every(device, fused_adam, graph),
                    tuple(why), warning, channels_last=layout_why is not None)


def channels_last_reason(conv: bool, device: torch.device) -> str | None:
    """Why a conv model trains with channels-last weights and images on this device (None: it does not).

    On a CPU, oneDNN's convolutions run faster on channels-last tensors (the data already arrive channels
    last), in fp32 and even more in bf16, and compute the same sums in another order: the loss changes by
    rounding only (``benchmarks/throughput.py --model conv --variants``). Not on CUDA, where it is unmeasured.
    """
    if conv and device.type == "cpu":
        return "channels-last convolutions"
    return None


def hand_written_blocker(config: TrainConfig, model: VAE, prec: str, world_size: int) -> str | None:
    """Why the hand-written step does not compute this run's gradients (None: it does).

    It computes the post's objective (the single-draw ELBO, the Bernoulli likelihood) in float32 (``prec``:
    the precision trained in, after any fallback) on one process for an MLP it knows, with nothing asking for
    autograd's graph (``--compile``, ``--detect-anomaly``) or for autograd itself (``--no-fused-step``).
    """
    if not config.fused_step:
        return "--no-fused-step"
    if config.compile:
        return "--compile traces the autograd step"
    if config.objective != "elbo":
        return f"--objective {config.objective} has no hand-written step"
    if config.k != 1:
        return f"--k {config.k} has no hand-written step (one draw per image only)"
    if config.likelihood != "bernoulli":
        return f"--likelihood {config.likelihood} has no hand-written step"
    if prec != "fp32":
        return f"{prec} autocast has no hand-written step"
    if config.detect_anomaly:
        return "--detect-anomaly watches autograd's backward"
    if world_size > 1:
        return "DDP averages the gradients inside autograd's backward"
    return model_blocker(model)


def cuda_graph_blocker(config: TrainConfig, device: torch.device, prec: str, world_size: int,
                       fused_adam: bool) -> str | None:
    """Why the step is not recorded as a CUDA graph (None: it is).

    Recorded on a CUDA device in float32 (``prec``: the precision trained in) with fused Adam (whose kernel
    takes the learning rate as a device scalar), on one process, neither compiled nor under anomaly
    detection; ``--no-cuda-graph`` turns it off.
    """
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if not config.cuda_graph:
        return "--no-cuda-graph"
    if prec != "fp32":
        return f"{prec} autocast is not recorded"
    if not fused_adam:
        return "Adam has no fused kernel here"
    if config.compile:
        return "--compile"
    if config.detect_anomaly:
        return "--detect-anomaly"
    if world_size > 1:
        return "DDP is not recorded"
    if config.grad_clip or config.skip_threshold or config.ema:
        return "--grad-clip, --skip-threshold and --ema act between the recorded gradients and Adam"
    return None


def stabiliser_phrases(config: TrainConfig) -> list[str]:
    """The stabilisers on, as the plan's line names them (none by default)."""
    phrases = [f"gradient norm clipped to {config.grad_clip:g}"] if config.grad_clip else []
    if config.skip_threshold:
        phrases.append(f"updates with a gradient norm above {config.skip_threshold:g} skipped")
    if config.ema:
        phrases.append(f"weights averaged at rate {config.ema:g} for evaluation")
    return phrases


def sync_every(device: torch.device, fused_adam: bool, graph: bool = False) -> int:
    """How often (in steps) the host reads the non-finite flag and the loss back from the device.

    Every step on the CPU, where reading is free; every ``DEFERRED_SYNC`` steps on an accelerator, where a
    read stalls the queue of kernels, and for a recorded step, whose guard keeps its record on the device. In
    between, the fused optimizer skips any update the flag marks, so non-finite values never reach the
    weights either way (an optimizer without that ability is checked every step).
    """
    return DEFERRED_SYNC if graph or (device.type != "cpu" and fused_adam) else 1
