"""What a running fit() holds: the model, optimizer, step, generators, data and where training stands.

A plain record, so that callbacks can read it without importing the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaekit.config import TrainConfig
from vaekit.model import VAE
from vaekit.training.checkpoint import TrainState
from vaekit.training.distributed import DistContext
from vaekit.training.schedule import LRSchedule
from vaekit.training.stabilise import WeightAverage
from vaekit.training.step import TrainStep


@dataclass
class TrainData:
    """The training split as flattened uint8 rows (on the host, and on the device for one process) and the
    test split on rank 0's device; batches are index slices of these. ``x_val``, the validation split (on rank
    0's device, on the host elsewhere), is ``None`` without one: the test split is then evaluated every epoch."""

    x_all: Tensor
    x_train: Tensor | None
    x_test: Tensor | None
    batch_size: int
    x_val: Tensor | None = None

    @property
    def n(self) -> int:
        return self.x_all.shape[0]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)


@dataclass
class Trainer:
    """Everything a running :func:`fit` holds. Callbacks read it; ``state`` is where training stands."""

    config: TrainConfig
    model: VAE
    opt: torch.optim.Optimizer
    step: TrainStep
    gens: dict[str, torch.Generator]
    state: TrainState
    schedule: LRSchedule
    data: TrainData
    run_dir: Path
    ctx: DistContext
    device: torch.device
    epoch_shuffle: Tensor  # the shuffle generator's state at the start of the current epoch
    # Set by a callback (early stopping, a time budget) to end training after the current epoch: the run then
    # finishes as usual (weights, summary, artifacts) with fewer epochs than configured. Say why, in words.
    stop_reason: str | None = None
    ema: WeightAverage | None = None  # the weight average of --ema

    @property
    def eval_model(self) -> VAE:
        """The weights evaluated, saved as model.safetensors and drawn from: the average with --ema."""
        return self.model if self.ema is None else self.ema.model  # type: ignore[return-value]

    @property
    def average(self) -> VAE | None:
        """The model holding the weight average, for the checkpoint (None without --ema)."""
        return None if self.ema is None else self.ema.model  # type: ignore[return-value]
