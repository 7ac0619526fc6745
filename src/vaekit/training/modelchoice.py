"""Which model a run trains: the preset chosen for the data when none is named, sized for its images."""

from __future__ import annotations

import sys

from vaekit.config import DEFAULT_MIXTURES, EIGHT_BIT_LIKELIHOODS, ModelConfig, TrainConfig
from vaekit.data import Splits
from vaekit.model import model_config


def preset_for(shape: tuple[int, ...]) -> str:
    """The preset for images of ``shape`` when none is named: the post's ``seed`` for 28x28 grey, else ``conv``."""
    return "seed" if tuple(shape) == (28, 28) else "conv"


def default_model(splits: Splits, announce: bool) -> str:
    """The post's ``seed`` model for 28x28 grey images; otherwise ``conv``, which fits any size, said once."""
    shape = tuple(splits.train_images.shape[1:])
    if preset_for(shape) == "seed":
        return "seed"
    if announce:
        size = "x".join(map(str, shape[:2])) + (" colour" if len(shape) == 3 else " grey")
        print(f"vaekit train: {size} images: using the conv preset, a convolutional VAE for any image size "
              "(choose another with --model)", file=sys.stderr, flush=True)
    return "conv"


def model_config_for(config: TrainConfig, image_shape: tuple[int, ...]) -> ModelConfig:
    """The model a run trains: its preset and overrides sized for the data, with the likelihood's head.

    An 8-bit likelihood's decoder outputs each pixel's parameters (its ``head``), scales included, so
    only a learned Gaussian sigma is a weight of its own.
    """
    head = config.likelihood if config.likelihood in EIGHT_BIT_LIKELIHOODS else "logits"
    mixtures = (config.mixtures or DEFAULT_MIXTURES) if head == "logistic-mixture" else 0
    return model_config(config.model, config.zdim, config.hidden, config.activation, image_shape,
                        learn_sigma=config.learn_sigma, sigma_init=config.sigma, width=config.width, head=head,
                        mixtures=mixtures, res_blocks=config.res_blocks or 0, context=config.context)
