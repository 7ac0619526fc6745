"""Mean and standard error over seeds, the way papers report a setting trained several times."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """One number over the runs of an entry: its mean, standard error (None for one run) and every value."""

    mean: float
    stderr: float | None
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "stderr": self.stderr, "values": list(self.values), "n": len(self.values)}


def mean_stderr(values: Sequence[float]) -> Stat:
    """The mean and the standard error of the mean (sample standard deviation, n - 1, over sqrt n).

    One value has no spread to estimate, so its standard error is None rather than a misleading 0.
    """
    if not values:
        raise ValueError("mean_stderr needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(mean, None, tuple(values))
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Stat(mean, math.sqrt(var / n), tuple(values))
