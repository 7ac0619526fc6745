"""Models: the VAE (:mod:`.vae`) and its named presets (:mod:`.presets`)."""

from __future__ import annotations

from .presets import PRESETS, model_config
from .vae import VAE, n_params

__all__ = ["PRESETS", "VAE", "model_config", "n_params"]
