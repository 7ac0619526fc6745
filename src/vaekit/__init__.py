"""vaekit: variational auto-encoders that train fast, evaluate like the papers and never lose your work.

The path from data to a trained model, one module each::

    vaekit.data        IDX files -> uint8 arrays (registry, checksums, cache, downloads)
    vaekit.models      the encoder q(z|x) and decoder p(x|z) (presets: seed, mlp, burda, pytorch-example)
    vaekit.objectives  KL, log-likelihoods, the ELBO, the IWAE bound
    vaekit.train       the training loop, checkpoints, resume (engine, precision, distributed: its machinery)
    vaekit.runs        the run folder: safetensors + JSON, atomic writes, the lock
    vaekit.likelihood  importance-sampled log p(x) for evaluation
    vaekit.viz, explore, report   figures, the latent explorer page, the run report
"""

from __future__ import annotations

__version__ = "0.1.0"

# `train` is both a module and the function users call: importing the function here makes
# `vaekit.train(config)` the function (use `from vaekit.train import ...` for the module's contents).
from .api import evaluate_run, load_run_data, plot_run  # noqa: E402
from .config import ModelConfig, TrainConfig  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .models import VAE, model_config  # noqa: E402
from .runs import Run, load_model, load_run  # noqa: E402
from .train import train  # noqa: E402

__all__ = [
    "VAE", "ModelConfig", "Run", "TrainConfig", "VaekitError", "__version__", "evaluate_run", "load_model",
    "load_run", "load_run_data", "model_config", "plot_run", "train",
]
