"""How long a run trains: a budget in optimizer steps turned into epochs, and the checks early stopping needs.

A recipe's budget is in steps (``TrainConfig.steps``) because what a model needs is updates, not passes over
the data: 3,000 steps of 64 images are 94 epochs of 2,000 training images and 4 of Fashion-MNIST. The epochs
are decided once, when a run starts and its training split is known, and stored in config.json like any other
setting, so a resumed run keeps them (and ``--epochs`` still extends it).
"""

from __future__ import annotations

import math
from dataclasses import replace

from vaekit.config import ConfigError, TrainConfig, epochs_for_steps
from vaekit.training.callbacks import log


def settle_budget(config: TrainConfig, n_train: int, has_val: bool, fresh: bool, announce: bool) -> TrainConfig:
    """``config`` with its epochs decided by its step budget and its patience by ``patience_steps`` (a fresh run
    only; said in one line when ``announce``), after checking that early stopping has a validation split."""
    if config.patience and not has_val:
        raise ConfigError(f"--patience {config.patience} stops on the validation loss, and this run has no "
                          "validation split: give --val-fraction F (above 0), or --patience 0")
    if not fresh or (config.steps is None and not config.patience_steps):
        return config
    per_epoch = max(1, math.ceil(n_train / config.batch_size))
    epochs = config.epochs if config.steps is None else epochs_for_steps(config.steps, n_train, config.batch_size)
    patience = config.patience
    if patience and config.patience_steps:  # a small data set's epochs are a few noisy steps: wait enough of them
        patience = max(patience, math.ceil(config.patience_steps / per_epoch))
    said = [(f"{epochs:,} epochs for about {config.steps:,} steps", "--epochs")] if config.steps is not None else []
    if patience and config.patience_steps:
        said.append((f"early stopping after {patience:,} epochs ({patience * per_epoch:,} steps) without a better "
                     "val_loss", "--patience"))
    if announce and said:
        flags = " and ".join(flag for _, flag in said)
        log(f"vaekit train: {n_train:,} training images, batch {config.batch_size}: {'; '.join(p for p, _ in said)} "
            f"({flags} {'override' if len(said) > 1 else 'overrides'})")
    return replace(config, epochs=epochs, patience=patience)
