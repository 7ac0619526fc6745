"""Likelihood heads for 8-bit images: what the decoder outputs per pixel, and what those outputs mean.

A decoder ends in ``params_per_pixel`` values per pixel, laid out like the data (rows of H*W pixels, each
pixel's values together). Every function here takes such flat parameter rows and the number of channels,
and is pure, so training, evaluation, the figures and any other model (a hierarchical decoder included)
share one definition of each head:

* ``discretized-logistic``: per pixel ``[means (C), log-scales (C)]``: each sub-pixel a logistic whose
  location ``sigmoid(mean)`` and scale both depend on z, discretized to the 256 levels.
* ``logistic-mixture``: per pixel ``[logits (K), means (K x C), log-scales (K x C), coefficients
  (K x C(C-1)/2)]``, component-major, as in PixelCNN++ (Salimans et al., 2017) and VDVAE: a mixture of K
  discretized logistics whose colour channels depend linearly on the channels before them. For RGB,
  component k's green location is ``mu_g + a x_r`` and its blue ``mu_b + b x_r + c x_g`` with
  ``(a, b, c) = tanh(coefficients)`` and x the image's own (8-bit) values, so P(r) P(g | r) P(b | r, g)
  is a normalized distribution over the 256^3 colours. The locations are used as they are (in [0, 1] units).

Any other likelihood takes one value per sub-pixel (logits). The log-scales are floored at
``LOG_SCALE_MIN``; :func:`init_head_bias` starts a head near the 8-bit uniform code (8 bits/dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit.config import DEFAULT_MIXTURES, EIGHT_BIT_LIKELIHOODS

# Half the width of one of the 256 levels of an 8-bit pixel scaled to [0, 1] (level k sits at k / 255).
HALF_LEVEL = 0.5 / 255
# Floor of a discretized logistic's log-scale, as in PixelCNN++ (Salimans et al., 2017): a scale of e^-7 is
# about a quarter of a level, fine enough that a pixel predicted exactly gets about 80% of its level's mass,
# and 1 / scale stays finite; unbounded, float32 exp(-log_scale) overflows below about -88 and gives NaN.
LOG_SCALE_MIN = -7.0
# The heads whose decoder outputs a distribution's parameters per pixel (the list is config.py's).
EIGHT_BIT_HEADS = EIGHT_BIT_LIKELIHOODS
# Starting scales, measured as bits/dim on uniform noise (the worst case: 8 bits is its entropy, which no
# non-uniform code reaches): one logistic at 0.5 is best near scale 0.2 (8.29 bits); K logistics spread evenly
# over [0, 1] (locations (k + 1/2) / K) with scale 0.3 / K give 8.03 bits (grey). Real images, which are not
# uniform, start below 8 bits.
LOGISTIC_INIT_SCALE = 0.2
MIXTURE_INIT_SCALE = 0.3


def n_coefficients(channels: int) -> int:
    """Coupling coefficients per component: one per pair of channels (3 for RGB, 0 for grey)."""
    return channels * (channels - 1) // 2


def params_per_pixel(likelihood: str, channels: int, mixtures: int = DEFAULT_MIXTURES) -> int:
    """Decoder outputs per pixel for ``likelihood``: C logits, 2C for the discretized logistic, or
    K (1 + 2C + C(C-1)/2) for the mixture (100 for RGB with K = 10, 30 for grey)."""
    if likelihood == "discretized-logistic":
        return 2 * channels
    if likelihood == "logistic-mixture":
        return mixtures * (1 + 2 * channels + n_coefficients(channels))
    return channels


def log_bin_mass(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x), elementwise, for 8-bit values ``x`` in {0, 1/255, ..., 1} under a logistic discretized to 256 levels.

    Level k gets the logistic's mass over [k/255 - h, k/255 + h] (h = ``HALF_LEVEL``); the first and last
    levels take the tails, so the 256 probabilities sum to 1. With a = (x + h - mean) / s and
    b = (x - h - mean) / s the bin's mass is sigmoid(a) - sigmoid(b), whose log is computed without
    cancellation as log(expm1(a - b)) - softplus(-b) - softplus(a), and the tails as -softplus(-a) and
    -softplus(b). The log-scale is floored at ``LOG_SCALE_MIN`` (its gradient is then zero).
    """
    inv_scale = torch.exp(-log_scale.clamp(min=LOG_SCALE_MIN))
    a = (x - mean + HALF_LEVEL) * inv_scale
    b = (x - mean - HALF_LEVEL) * inv_scale
    d = 2 * HALF_LEVEL * inv_scale
    bin_mass = d + torch.log(-torch.expm1(-d)) - F.softplus(-b) - F.softplus(a)
    first, last = -F.softplus(-a), -F.softplus(b)
    return torch.where(x < HALF_LEVEL, first, torch.where(x > 1 - HALF_LEVEL, last, bin_mass))


def _pixels(params: Tensor, per_pixel: int) -> Tensor:
    """Flat rows (..., H*W*P) -> (..., H*W, P)."""
    return params.reshape(*params.shape[:-1], -1, per_pixel)


def split_mixture(params: Tensor, channels: int, mixtures: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mixture rows -> ``(logits (..., N, K), means, log_scales (..., N, K, C), coefficients (..., N, K, C(C-1)/2))``
    with N pixels; the coefficients are the raw outputs (``tanh`` makes them the coupling)."""
    k, c = mixtures, channels
    p = _pixels(params, params_per_pixel("logistic-mixture", c, k))
    logits, means, log_scales, coeffs = torch.split(p, [k, k * c, k * c, k * n_coefficients(c)], dim=-1)
    shape = (*p.shape[:-1], k)
    return logits, means.reshape(*shape, c), log_scales.reshape(*shape, c), coeffs.reshape(*shape, -1)


def coupled_means(means: Tensor, coefficients: Tensor, x: Tensor) -> Tensor:
    """Each channel's location plus tanh(coefficient) times every earlier channel's value in ``x``.

    ``means`` (..., K, C), ``coefficients`` (..., K, C(C-1)/2) in the order (1, 0), (2, 0), (2, 1), ...;
    ``x`` (..., 1, C) or (..., K, C): the values the later channels depend on (the image, or expected values).
    """
    c = means.shape[-1]
    coupling = torch.tanh(coefficients)
    out, j = [means[..., 0]], 0
    for ch in range(1, c):
        m = means[..., ch]
        for prev in range(ch):
            m = m + coupling[..., j] * x[..., prev]
            j += 1
        out.append(m)
    return torch.stack(out, dim=-1)


def mixture_log_prob(x: Tensor, params: Tensor, channels: int, mixtures: int) -> Tensor:
    """log P(x) per row of 8-bit images ``x`` (..., H*W*C) in [0, 1] under the mixture ``params`` (..., H*W*P)."""
    logits, means, log_scales, coeffs = split_mixture(params, channels, mixtures)
    xp = x.reshape(*x.shape[:-1], -1, 1, channels)  # (..., N, 1, C) against (..., N, K, C)
    per_channel = log_bin_mass(xp, coupled_means(means, coeffs, xp), log_scales)
    per_pixel = torch.logsumexp(per_channel.sum(dim=-1) + F.log_softmax(logits, dim=-1), dim=-1)
    return per_pixel.sum(dim=-1)


def logistic_log_prob(x: Tensor, params: Tensor, channels: int) -> Tensor:
    """log P(x) per row under the z-conditioned discretized logistic: per pixel ``[means (C), log-scales (C)]``."""
    p = _pixels(params, 2 * channels)
    means, log_scales = p[..., :channels], p[..., channels:]
    xp = x.reshape(*x.shape[:-1], -1, channels)
    return log_bin_mass(xp, torch.sigmoid(means), log_scales).sum(dim=(-2, -1))


def head_log_prob(likelihood: str, x: Tensor, params: Tensor, channels: int,
                  mixtures: int = DEFAULT_MIXTURES) -> Tensor:
    """log p(x|z) per row for one of the ``EIGHT_BIT_HEADS``; ``x`` broadcasts against the leading dimensions."""
    if x.shape[:-1] != params.shape[:-1]:
        x = x.expand(*params.shape[:-1], x.shape[-1])
    if likelihood == "discretized-logistic":
        return logistic_log_prob(x, params, channels)
    if likelihood == "logistic-mixture":
        return mixture_log_prob(x, params, channels, mixtures)
    raise ValueError(f"{likelihood!r} is not an 8-bit head; choose one of {', '.join(EIGHT_BIT_HEADS)}")


def head_mean(likelihood: str, params: Tensor, channels: int, mixtures: int = DEFAULT_MIXTURES) -> Tensor:
    """The image to display for decoder outputs ``params``: rows (..., H*W*C) in [0, 1].

    Logits give ``sigmoid(logits)``; the discretized logistic its locations ``sigmoid(mean)``; the mixture
    its expected value with the channel coupling, sum_k pi_k E_k, where component k's expected red is mu_r,
    green mu_g + a E_r, blue mu_b + b E_r + c E_g (the coupling is linear, so the expectation passes through
    it), ignoring the discretization's clipping of the tails at 0 and 1, then clamped to [0, 1].
    """
    if likelihood == "discretized-logistic":
        return torch.sigmoid(_pixels(params, 2 * channels)[..., :channels]).flatten(-2)
    if likelihood == "logistic-mixture":
        logits, means, _, coeffs = split_mixture(params, channels, mixtures)
        expected = means.clone()
        for ch in range(1, channels):  # each channel's expectation needs the earlier channels' expectations
            expected[..., ch] = coupled_means(means, coeffs, expected)[..., ch]
        mean = (torch.softmax(logits, dim=-1).unsqueeze(-1) * expected).sum(dim=-2)
        return mean.clamp(0, 1).flatten(-2)
    return torch.sigmoid(params)


def _logistic_draw(mean: Tensor, log_scale: Tensor, generator: torch.Generator | None) -> Tensor:
    """One 8-bit value per element from the discretized logistic: a logistic draw rounded to its level."""
    u = torch.rand(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype).clamp(1e-6, 1 - 1e-6)
    value = mean + torch.exp(log_scale.clamp(min=LOG_SCALE_MIN)) * (torch.log(u) - torch.log1p(-u))
    return torch.round(value.clamp(0, 1) * 255) / 255


def head_sample(likelihood: str, params: Tensor, channels: int, mixtures: int = DEFAULT_MIXTURES,
                generator: torch.Generator | None = None) -> Tensor:
    """Images drawn from p(x|z) (rows (..., H*W*C) of 8-bit values in [0, 1]) for one of the ``EIGHT_BIT_HEADS``.

    Rounding a logistic draw clamped to [0, 1] to the nearest level draws from exactly the discretized
    distribution (its bins are the rounding's cells, the tails the end levels); the mixture draws a
    component per pixel, then the channels in order, each coupled to the values drawn before it.
    """
    if likelihood not in EIGHT_BIT_HEADS:
        raise ValueError(f"{likelihood!r} is not an 8-bit head; choose one of {', '.join(EIGHT_BIT_HEADS)}")
    if likelihood == "discretized-logistic":
        p = _pixels(params, 2 * channels)
        return _logistic_draw(torch.sigmoid(p[..., :channels]), p[..., channels:], generator).flatten(-2)
    logits, means, log_scales, coeffs = split_mixture(params, channels, mixtures)
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator, device=logits.device,
                                              dtype=logits.dtype).clamp(1e-10, 1 - 1e-7)))
    pick = (logits + gumbel).argmax(dim=-1, keepdim=True).unsqueeze(-1)  # (..., N, 1, 1)
    take = lambda t: t.gather(-2, pick.expand(*t.shape[:-2], 1, t.shape[-1]))  # noqa: E731
    means, log_scales, coeffs = take(means), take(log_scales), take(coeffs)
    x = torch.zeros_like(means)
    for ch in range(channels):
        loc = coupled_means(means, coeffs, x)[..., ch]
        x[..., ch] = _logistic_draw(loc, log_scales[..., ch], generator)
    return x.squeeze(-2).flatten(-2)


def init_head_bias(likelihood: str, channels: int, mixtures: int = DEFAULT_MIXTURES) -> Tensor | None:
    """The starting bias of one pixel's outputs (P values), or None for a head that keeps its layer's own.

    The discretized logistic starts at location 0.5 with scale ``LOGISTIC_INIT_SCALE``. A grey mixture starts
    with its K components at (k + 1/2) / K, each with scale ``MIXTURE_INIT_SCALE`` / K and equal weights,
    close to the uniform code; a colour mixture cannot tile the 256^3 colours with K components that way (they
    would all lie on the grey diagonal: 12.8 bits/dim on uniform colour noise), so its components start as
    the single logistic does. The couplings start at 0. The caller scales the output layer's weights down so
    that z moves this start only a little at first.
    """
    if likelihood == "discretized-logistic":
        return torch.cat([torch.zeros(channels), torch.full((channels,), math.log(LOGISTIC_INIT_SCALE))])
    if likelihood == "logistic-mixture":
        k, c = mixtures, channels
        if c == 1:
            centres, scale = (torch.arange(k, dtype=torch.float32) + 0.5) / k, MIXTURE_INIT_SCALE / k
        else:
            centres, scale = torch.full((k * c,), 0.5), LOGISTIC_INIT_SCALE
        return torch.cat([torch.zeros(k), centres, torch.full((k * c,), math.log(scale)),
                          torch.zeros(k * n_coefficients(c))])
    return None
