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

from vaekit.heads import (  # HALF_LEVEL and LOG_SCALE_MIN: defined beside the heads, importable here as before
    DEFAULT_MIXTURES,
    EIGHT_BIT_HEADS,
    HALF_LEVEL,  # noqa: F401
    LOG_SCALE_MIN,  # noqa: F401
    head_log_prob,
    log_bin_mass,
)

LOG_2PI = math.log(2 * math.pi)


def _kl_inner(mu: Tensor, logvar: Tensor) -> Tensor:
    """1 + log sigma_j^2 - mu_j^2 - sigma_j^2, elementwise: the KL's terms before the factor -1/2."""
    return 1 + logvar - mu.pow(2) - logvar.exp()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in closed form.

    KL = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)

    The one definition of the KL: training (autograd and the hand-written step of
    :mod:`vaekit.training.fused`, whose gradient of it ``tests/test_fused_step.py`` checks against this),
    evaluation and :func:`gaussian_kl_per_dim` all compute it here.
    """
    return -0.5 * torch.sum(_kl_inner(mu, logvar), dim=-1)


def gaussian_kl_between(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) elementwise: one latent group's KL given its parents.

    KL = 1/2 * (logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1)
    """
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """The closed-form KL of each latent dimension, elementwise (``gaussian_kl`` is their sum per row)."""
    return -0.5 * _kl_inner(mu, logvar)


def bernoulli_cross_entropy(x: Tensor, logits: Tensor) -> Tensor:
    """-log p(x|z) under the Bernoulli likelihood per row: the blog post's binary cross-entropy, summed.

    The one definition of the Bernoulli term: :func:`bernoulli_log_likelihood` is its negative, the
    hand-written training step computes it through this function, and the estimator's faster form
    (:func:`vaekit.eval.likelihood.bernoulli_log_px_z`) is tested against it.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x|z) = sum_k x_k log p_k + (1 - x_k) log(1 - p_k), with p = sigmoid(logits), per row.

    For grey-level x in [0, 1] this is minus the blog post's binary cross-entropy (not a normalized
    density then, but the same objective).
    """
    return -bernoulli_cross_entropy(x, logits)


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


# Below this |logit| the continuous Bernoulli's log-normalizer uses its Taylor series: the closed form is
# 0/0 at logit 0 and loses digits near it, while the series' first omitted term (1.8e-7 eta^12, < 1e-10
# here) is far below float32 rounding.
CB_TAYLOR_BELOW = 0.5


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(lambda) of the continuous Bernoulli with lambda = sigmoid(logits), elementwise.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), which with eta = logit(lambda) is
    eta / tanh(eta / 2): even in eta, equal to 2 at eta = 0. In the lambda form the ratio cancels
    catastrophically near lambda = 1/2; in the logit form it is only 0/0 at eta = 0 exactly, where the
    Taylor series log 2 + eta^2/12 - 7 eta^4/1440 + 31 eta^6/90720 - 127 eta^8/4838400 + 73 eta^10/34214400
    takes over (for |eta| < ``CB_TAYLOR_BELOW``).
    Elsewhere log tanh(|eta|/2) = log(-expm1(-|eta|)) - log1p(e^-|eta|) keeps full relative precision.
    """
    a = logits.abs()
    small = a < CB_TAYLOR_BELOW
    safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch (and its gradient) finite
    exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    s = a * a
    series = math.log(2.0) + s * (1 / 12 + s * (-7 / 1440 + s * (31 / 90720 + s * (-127 / 4838400
                                                                               + s * 73 / 34214400))))
    return torch.where(small, series, exact)


def continuous_bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log CB(x | lambda) = x log lambda + (1 - x) log(1 - lambda) + log C(lambda) per row, x in [0, 1].

    The normalized density of Loaiza-Ganem and Cunningham (2019): the Bernoulli expression plus the
    log-normalizer that makes it integrate to 1 over [0, 1], so grey-level pixels get a proper density.
    """
    return bernoulli_log_likelihood(x, logits) + continuous_bernoulli_log_norm(logits).sum(dim=-1)


def discretized_logistic_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per row for 8-bit pixels ``x`` in {0, 1/255, ..., 1} under logistics discretized to 256 levels.

    The sum over a row of :func:`vaekit.heads.log_bin_mass` (the one definition of a bin's log-mass, floored
    log-scale included); here with the location and log-scale given per value, as runs of the per-pixel
    global scale convention store them.
    """
    return log_bin_mass(x, mean, log_scale).sum(dim=-1)


def log_likelihood(name: str, x: Tensor, logits: Tensor, sigma: float = 1.0, log_sigma: Tensor | None = None,
                   channels: int = 1, mixtures: int = DEFAULT_MIXTURES) -> Tensor:
    """log p(x|z) for the decoder output ``logits`` under the named likelihood, per row.

    The Gaussian likelihood uses ``sigmoid(logits)`` as its mean (the blog decoder ends in a sigmoid)
    and a fixed standard deviation ``sigma``, or the per-pixel ``log_sigma`` when the model learns it. The
    8-bit heads (:mod:`vaekit.heads`) read their parameters from the decoder's outputs, ``channels`` and
    ``mixtures`` saying how they are laid out; a discretized logistic given ``log_sigma`` is a run of the
    older convention: location ``sigmoid(logits)`` and one learned log-scale per pixel for every image.
    ``x`` may have fewer leading dimensions than ``logits`` (one image, many latent draws): it broadcasts.
    """
    if name in EIGHT_BIT_HEADS and not (name == "discretized-logistic" and log_sigma is not None):
        return head_log_prob(name, x, logits, channels, mixtures)
    if x.shape != logits.shape:
        x = x.expand_as(logits)
    if name == "bernoulli":
        return bernoulli_log_likelihood(x, logits)
    if name == "continuous-bernoulli":
        return continuous_bernoulli_log_likelihood(x, logits)
    if name == "gaussian":
        return gaussian_log_likelihood(x, torch.sigmoid(logits), math.log(sigma) if log_sigma is None else log_sigma)
    if name == "discretized-logistic":
        return discretized_logistic_log_likelihood(x, torch.sigmoid(logits), log_sigma)
    raise ValueError(f"unknown likelihood {name!r}")


def log_importance_weights(log_px_z: Tensor, eps: Tensor, logvar: Tensor, z: Tensor, beta: float = 1.0) -> Tensor:
    """log w = log p(x|z) + beta * (log p(z) - log q(z|x)) for z = mu + sigma * eps, per draw.

    Because z was drawn as mu + sigma * eps, log q(z|x) = log N(eps | 0, I) - sum(logvar) / 2 exactly,
    which avoids recomputing (z - mu) / sigma. ``beta`` < 1 or > 1 weights the prior/posterior term the
    way the beta-VAE weights the KL; beta = 1 gives the importance weight of p(x, z) / q(z|x).
    """
    log_q = standard_normal_log_prob(eps) - 0.5 * logvar.sum(dim=-1)
    return log_px_z + beta * (standard_normal_log_prob(z) - log_q)


def iwae_bound(log_w: Tensor) -> Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i over the first dimension (k draws).

    With k = 1 it is log p(x|z) + log p(z) - log q(z|x), the single-sample ELBO whose expectation is the
    ELBO; it increases with k towards log p(x) (Burda, Grosse and Salakhutdinov, 2016).
    """
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


@dataclass
class ELBOTerms:
    """Per-image terms of one ELBO estimate: ``loss = recon + kl`` is the negative ELBO."""

    loss: Tensor
    recon: Tensor  # -log p(x|z), one reparametrized sample
    kl: Tensor  # closed-form KL(q(z|x) || p(z))


def elbo_terms(
    logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, likelihood: str = "bernoulli", sigma: float = 1.0,
    log_sigma: Tensor | None = None, channels: int = 1, mixtures: int = DEFAULT_MIXTURES,
) -> ELBOTerms:
    """Negative ELBO per image from one reparametrized forward pass (``channels``, ``mixtures``: the 8-bit heads')."""
    recon = -log_likelihood(likelihood, x, logits, sigma, log_sigma, channels, mixtures)
    kl = gaussian_kl(mu, logvar)
    return ELBOTerms(loss=recon + kl, recon=recon, kl=kl)
