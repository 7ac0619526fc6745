"""MLP encoder/decoder VAEs and the named presets.

The encoder maps a flattened image ``x`` to the mean ``mu`` and log-variance ``logvar`` of the Gaussian
posterior q(z|x); the decoder maps a latent ``z`` to per-pixel *logits*. Likelihoods work on logits
(``binary_cross_entropy_with_logits``) because ``sigmoid`` followed by ``log`` underflows for confident
pixels, which is where the blog's ``Sigmoid`` + ``BCE`` pair clamps its log at -100.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

# Each preset is a ModelConfig minus the latent size, plus that size's default.
PRESETS: dict[str, dict] = {
    # The blog post's model: 784-256-64-32-2z encoder and z-32-64-256-784 decoder with ELU, and no
    # activation between the decoder's first two layers (kept on purpose: 439,956 parameters at zdim 2).
    "seed": dict(
        zdim=2,
        encoder_hidden=[256, 64, 32],
        decoder_hidden=[32, 64, 256],
        activation="elu",
        skip_first_decoder_activation=True,
    ),
    # A configurable symmetric MLP; ``--hidden`` sets the encoder sizes, the decoder mirrors them.
    "mlp": dict(
        zdim=2,
        encoder_hidden=[512, 256],
        decoder_hidden=[256, 512],
        activation="elu",
        skip_first_decoder_activation=False,
    ),
    # The one-stochastic-layer model of the IWAE paper (Burda, Grosse and Salakhutdinov, 2016): two
    # deterministic tanh layers of 200 units each way around a 50-dimensional latent.
    "burda": dict(
        zdim=50,
        encoder_hidden=[200, 200],
        decoder_hidden=[200, 200],
        activation="tanh",
        skip_first_decoder_activation=False,
    ),
    # The VAE of PyTorch's examples repository: one ReLU layer of 400 units each way, zdim 20.
    "pytorch-example": dict(
        zdim=20,
        encoder_hidden=[400],
        decoder_hidden=[400],
        activation="relu",
        skip_first_decoder_activation=False,
    ),
}


def model_config(
    preset: str,
    zdim: int | None = None,
    hidden: list[int] | None = None,
    activation: str | None = None,
    image_shape: tuple[int, int] = (28, 28),
    learn_sigma: bool = False,
    sigma_init: float = 1.0,
) -> ModelConfig:
    """Resolve a preset name and optional overrides into a validated :class:`ModelConfig`.

    ``learn_sigma`` adds a per-pixel decoder log standard deviation starting at ``log(sigma_init)``.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    spec = dict(PRESETS[preset])
    if hidden is not None:
        if preset == "seed":
            raise ConfigError("the seed preset has fixed hidden sizes; use --model mlp --hidden ...")
        spec["encoder_hidden"] = list(hidden)
        spec["decoder_hidden"] = list(reversed(hidden))
    if activation is not None:
        spec["activation"] = activation
    if zdim is not None:
        spec["zdim"] = zdim
    cfg = ModelConfig(preset=preset, image_shape=tuple(image_shape), learn_sigma=learn_sigma,
                      sigma_init=float(sigma_init) if learn_sigma else 1.0, **spec)
    cfg.validate()
    return cfg


def _mlp(sizes: list[int], activation: str, skip_first: bool = False) -> nn.Sequential:
    """Linear layers through ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        last = i == len(sizes) - 2
        if not last and not (skip_first and i == 0):
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A VAE with diagonal Gaussian posterior, standard normal prior and a logits-valued decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.zdim = config.zdim
        d = config.input_dim
        self.encoder = _mlp([d, *config.encoder_hidden, 2 * config.zdim], config.activation)
        self.decoder = _mlp(
            [config.zdim, *config.decoder_hidden, d], config.activation, config.skip_first_decoder_activation
        )
        # The learned per-pixel log standard deviation of a gaussian p(x|z); None (and absent from the
        # state dict) otherwise, so models without it keep their exact weights file.
        self.log_sigma: nn.Parameter | None
        if config.learn_sigma:
            self.log_sigma = nn.Parameter(torch.full((d,), math.log(config.sigma_init)))
        else:
            self.register_parameter("log_sigma", None)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)`` for flattened images ``x`` in [0, 1]."""
        mu, logvar = torch.split(self.encoder(x), self.zdim, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Per-pixel logits of p(x|z); ``torch.sigmoid`` of them is the decoded image."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        """z = mu + sigma * eps: sampling moved into ``eps`` so gradients flow to mu and sigma."""
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One reparametrized pass: returns ``(logits, mu, logvar)``."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
