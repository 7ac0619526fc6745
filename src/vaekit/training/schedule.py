"""Schedules as pure functions of the step: the learning rate and the KL weight.

Pure functions, so a resumed run recomputes exactly the values it would have used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


def lr_at(schedule: str, base_lr: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a pure function of the step number.

    A pure function, so a resumed run recomputes exactly the rates it would have used. ``constant`` is the
    post's; ``cosine`` decays from ``base_lr`` to 0 at the last step; both start with a linear warm-up over
    ``warmup_steps`` when it is positive.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def kl_weight(beta: float, warmup_epochs: int, progress: float) -> float:
    """The weight on the KL: ``beta``, ramped linearly from 0 over the first ``warmup_epochs`` epochs.

    ``progress`` counts epochs done, fractionally (1.5 = half-way through the second), so the ramp is
    smooth per step and a resumed run recomputes exactly the weight it would have used.
    """
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, progress / warmup_epochs)


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every step of a run, including runs extended with ``--resume --epochs N``.

    A fresh run follows :func:`lr_at` towards ``total_steps``. Extending a run that has begun to decay
    continues from the rate it had reached (``restart_lr``, from ``restart_step`` on) and decays that to 0
    by the new last step, instead of jumping back up the curve of a longer schedule.
    """

    kind: str
    base_lr: float
    warmup_steps: int
    total_steps: int
    restart_step: int = 0
    restart_lr: float | None = None

    @property
    def scheduled(self) -> bool:
        """False for the post's constant rate, which no step changes."""
        return self.kind != "constant" or self.warmup_steps > 0

    def at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if self.restart_lr is None or step < self.restart_step:
            return lr_at(self.kind, self.base_lr, self.warmup_steps, self.total_steps, step)
        t = min(1.0, (step - self.restart_step) / max(1, self.total_steps - self.restart_step))
        return self.restart_lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def extended(self, total_steps: int, step: int) -> LRSchedule:
        """This schedule with its end moved to ``total_steps``, the run standing at ``step``."""
        decaying = self.kind != "constant" and (self.restart_lr is not None or step > self.warmup_steps)
        if total_steps == self.total_steps or not decaying:
            return replace(self, total_steps=total_steps)
        return replace(self, total_steps=total_steps, restart_step=step, restart_lr=self.at(step - 1))

    def state(self) -> dict[str, float | int | None]:
        """What a checkpoint stores to resume this schedule exactly (the rest comes from the config)."""
        return {"total_steps": self.total_steps, "restart_step": self.restart_step, "restart_lr": self.restart_lr}
