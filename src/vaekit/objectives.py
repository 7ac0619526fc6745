"""The ELBO and its parts, as small pure functions of tensors.

Every value here is per image (summed over pixels and latent dimensions, not averaged) and in nats,
so numbers are comparable across batch sizes and with the literature.

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))            (the ELBO)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in closed form.

    KL = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x|z) = sum_k x_k log p_k + (1 - x_k) log(1 - p_k), with p = sigmoid(logits), per row.

    For grey-level x in [0, 1] this is minus the blog post's binary cross-entropy (not a normalized
    density then, but the same objective).
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_sigma: Tensor | float) -> Tensor:
    """log N(x | mean, sigma^2 I) per row, constants included so it is a proper log density."""
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    z = (x - mean) * torch.exp(-log_sigma)
    return torch.sum(-0.5 * z.pow(2) - log_sigma - 0.5 * LOG_2PI, dim=-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z | 0, I) per row."""
    return torch.sum(-0.5 * z.pow(2) - 0.5 * LOG_2PI, dim=-1)


def diagonal_normal_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z | mu, diag(exp(logvar))) per row."""
    return torch.sum(-0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI), dim=-1)


def log_likelihood(name: str, x: Tensor, logits: Tensor, sigma: float = 1.0) -> Tensor:
    """log p(x|z) for the decoder output ``logits`` under the named likelihood, per row.

    The Gaussian likelihood uses ``sigmoid(logits)`` as its mean (the blog decoder ends in a sigmoid)
    and a fixed standard deviation ``sigma``.
    """
    if name == "bernoulli":
        return bernoulli_log_likelihood(x, logits)
    if name == "gaussian":
        return gaussian_log_likelihood(x, torch.sigmoid(logits), math.log(sigma))
    raise ValueError(f"unknown likelihood {name!r}")


@dataclass
class ELBOTerms:
    """Per-image terms of one ELBO estimate: ``loss = recon + kl`` is the negative ELBO."""

    loss: Tensor
    recon: Tensor  # -log p(x|z), one reparametrized sample
    kl: Tensor  # closed-form KL(q(z|x) || p(z))


def elbo_terms(
    logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, likelihood: str = "bernoulli", sigma: float = 1.0
) -> ELBOTerms:
    """Negative ELBO per image from one reparametrized forward pass."""
    recon = -log_likelihood(likelihood, x, logits, sigma)
    kl = gaussian_kl(mu, logvar)
    return ELBOTerms(loss=recon + kl, recon=recon, kl=kl)
