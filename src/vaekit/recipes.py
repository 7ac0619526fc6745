"""Named recipes: sets of training settings chosen for a purpose, with the user's own flags on top.

``post`` is the blog post's recipe (every default). ``fast`` reaches the test loss of the post's 50 epochs
in a fraction of the wall time on the same data (measured by ``benchmarks/time_to_quality.py``):

* a learning rate 17 times the post's (5e-3) with a linear warm-up over the first epoch, so the first steps
  at that rate do not blow up the young network, and a cosine decay to zero at the last step, whose final
  low-rate steps settle the weights the way many more epochs at a constant rate would: 16 epochs match the
  post's 50 (measured on Fashion-MNIST: 256.9 against 257.4 nats);
* batch 256, twice the post's: fewer, larger matrix products, so less fixed cost per image, at a sample
  efficiency still close to batch 128's (batch 512 needed more epochs than it saved);
* bf16 matrix products where the hardware computes them natively (CUDA, CPUs with AVX-512 BF16 or AMX),
  about 1.3x the fp32 rate at this batch on such a CPU; elsewhere it trains in fp32, with a warning.

The epochs are part of the recipe: the schedule decays over exactly that many.
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, TrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    "post": {},
    "fast": {
        "batch_size": 256,
        "lr": 5e-3,
        "lr_schedule": "cosine",
        "lr_warmup": 1.0,
        "epochs": 16,
        "precision": "bf16",
    },
}


def recipe_config(name: str | None, given: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of recipe ``name`` (None: the defaults), with the fields in ``given`` set on top."""
    given = dict(given or {})
    if name is None:
        return TrainConfig(**given)
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **given, "recipe": name})
