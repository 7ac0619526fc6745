"""Typed configuration for models and training runs.

A run is described completely by a :class:`ModelConfig` (what to build) and a :class:`TrainConfig`
(how to train it). Both round-trip through plain JSON so a saved model can be rebuilt without the code
or command line that trained it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class ConfigError(ValueError):
    """An invalid setting; the message is one line naming the setting and the allowed values."""


ACTIVATIONS = ("elu", "relu", "tanh", "gelu", "silu", "leaky_relu")


@dataclass
class ModelConfig:
    """Architecture of an MLP VAE over flattened images.

    ``skip_first_decoder_activation`` reproduces the original blog model, whose decoder has no
    non-linearity between its first two linear layers (so they compose to a single linear map).
    """

    preset: str = "seed"
    zdim: int = 2
    image_shape: tuple[int, int] = (28, 28)
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 64, 32])
    decoder_hidden: list[int] = field(default_factory=lambda: [32, 64, 256])
    activation: str = "elu"
    skip_first_decoder_activation: bool = True

    @property
    def input_dim(self) -> int:
        return int(self.image_shape[0] * self.image_shape[1])

    def validate(self) -> None:
        if not isinstance(self.zdim, int) or self.zdim < 1:
            raise ConfigError(f"zdim must be an integer >= 1 (got {self.zdim!r})")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("encoder_hidden", "decoder_hidden"):
            sizes = getattr(self, name)
            if not sizes or any((not isinstance(h, int)) or h < 1 for h in sizes):
                raise ConfigError(f"{name} must be a non-empty list of positive integers (got {sizes!r})")
        if len(self.image_shape) != 2 or any(int(s) < 1 for s in self.image_shape):
            raise ConfigError(f"image_shape must be two positive integers (got {self.image_shape!r})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        cfg = cls(**_known(cls, d))
        cfg.image_shape = (int(cfg.image_shape[0]), int(cfg.image_shape[1]))
        cfg.encoder_hidden = list(cfg.encoder_hidden)
        cfg.decoder_hidden = list(cfg.decoder_hidden)
        return cfg


LIKELIHOODS = ("bernoulli", "gaussian")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """Training settings. The defaults are the blog post's: Adam, lr 3e-4, batch 128, 50 epochs, zdim 2."""

    dataset: str | None = None  # None: MNIST, falling back to the embedded subset when offline
    data_dir: str | None = None
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-4
    zdim: int | None = None  # None: the preset's own latent size (2 for `seed`)
    model: str = "seed"
    hidden: list[int] | None = None  # hidden sizes of the `mlp` preset (encoder order)
    activation: str | None = None
    likelihood: str = "bernoulli"
    sigma: float = 1.0  # fixed decoder standard deviation of the gaussian likelihood
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: only at epoch ends)
    eval_batch_size: int = 1000
    grid_size: int = 20
    grid_spacing: str = "linear"
    detect_anomaly: bool = False
    progress: bool = True

    def validate(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_batch_size", self.eval_batch_size)
        _positive_int("grid_size", self.grid_size)
        if self.zdim is not None and (not isinstance(self.zdim, int) or self.zdim < 1):
            raise ConfigError(f"zdim must be an integer >= 1 (got {self.zdim!r})")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and self.lr == self.lr and self.lr < float("inf")):
            raise ConfigError(f"lr must be a positive finite number (got {self.lr!r})")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if not (self.sigma > 0 and self.sigma < float("inf")):
            raise ConfigError(f"sigma must be a positive finite number (got {self.sigma!r})")
        if self.device not in DEVICES and not self.device.startswith(("cuda:", "mps:")):
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)} or cuda:N")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be an integer >= 0 (got {self.checkpoint_every!r})")
        if self.grid_spacing not in ("linear", "normal"):
            raise ConfigError(f"grid_spacing must be 'linear' or 'normal' (got {self.grid_spacing!r})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0 (got {self.seed!r})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**_known(cls, d))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer (got {value!r})")


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keep only the fields ``cls`` knows, so configs written by newer versions still load."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def to_json(obj: Any) -> str:
    """Serialize dataclasses (and nests of them) as indented JSON."""
    return json.dumps(asdict(obj) if dataclasses.is_dataclass(obj) else obj, indent=2, sort_keys=True)
