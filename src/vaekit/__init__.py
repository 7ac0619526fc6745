"""vaekit: variational auto-encoders that train fast, evaluate like the papers and never lose your work.

The path from data to a trained model, one package each::

    vaekit.data        images on disk -> uint8 arrays (registry, checksums, cache, downloads)
    vaekit.model       the encoder q(z|x) and decoder p(x|z), and the named presets
    vaekit.objectives  KL, log-likelihoods, the ELBO, the IWAE bound
    vaekit.training    fit() and its step, schedules, checkpoints, callbacks, data parallelism
    vaekit.eval        the test ELBO and the importance-sampled log-likelihood
    vaekit.run         the run folder: safetensors + JSON, atomic writes, the lock
    vaekit.artifacts   figures, the latent explorer page and the report of a finished run
    vaekit.use         a trained run applied to images: encode, reconstruct, interpolate (also Run methods)
    vaekit.experiments several runs together: seeds trained as a group, runs and seed groups compared by protocol

``import vaekit`` is light: torch, matplotlib and the rest load when a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_EXPORTS = {
    "train": "vaekit.training", "Callback": "vaekit.training.callbacks",
    "TrainConfig": "vaekit.config", "ModelConfig": "vaekit.config", "VaekitError": "vaekit.errors",
    "VAE": "vaekit.model", "model_config": "vaekit.model",
    "Run": "vaekit.run", "load_run": "vaekit.run", "load_model": "vaekit.run",
    "evaluate_run": "vaekit.eval.run", "load_run_data": "vaekit.eval.run",
    "plot_run": "vaekit.artifacts", "write_artifacts": "vaekit.artifacts",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
