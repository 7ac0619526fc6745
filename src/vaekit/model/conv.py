"""Convolutional encoder and decoder bodies for images of any size, grey or colour.

The VAE works on flattened images (rows of H*W*C values, channels last, as the data pipeline stores them),
so the conv bodies begin by laying a row out as a (C, H, W) image and end by flattening back; everything
around them (the posterior split, the reparametrization, every likelihood) is the MLP VAE's.

Each encoder level is a 3x3 convolution with stride 2 and padding 1, halving the size (rounding up), so
any size works, 28 included: 28 -> 14 -> 7 -> 4. The decoder mirrors it with 3x3 transposed convolutions
whose ``output_padding`` (0 or 1) is chosen per level to land exactly on the encoder's sizes, then one 3x3
convolution to the image's channels. No batch norm: evaluation never depends on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn


class ToImage(nn.Module):
    """Rows of H*W*C values (channels last) -> (N, C, H, W) images."""

    def __init__(self, height: int, width: int, channels: int) -> None:
        super().__init__()
        self.shape = (height, width, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-1], *self.shape).movedim(-1, -3)


class ToRows(nn.Module):
    """(..., C, H, W) images -> rows of H*W*C values (channels last), the layout of the data."""

    def forward(self, x: Tensor) -> Tensor:
        return x.movedim(-3, -1).flatten(-3)


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """The (H, W) of the image and of every encoder level after it."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def conv_encoder(shape: tuple[int, int, int], channels: list[int], zdim: int,
                 act: Callable[[], nn.Module]) -> nn.Sequential:
    """Strided 3x3 convolutions through ``channels``, then one linear map to (mu, logvar)."""
    h, w, c = shape
    layers: list[nn.Module] = [ToImage(h, w, c)]
    c_in = c
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
        c_in = c_out
    h_last, w_last = level_sizes(h, w, len(channels))[-1]
    layers += [nn.Flatten(), nn.Linear(c_in * h_last * w_last, 2 * zdim)]
    return nn.Sequential(*layers)


def conv_decoder(shape: tuple[int, int, int], channels: list[int], zdim: int,
                 act: Callable[[], nn.Module], out_channels: int | None = None) -> nn.Sequential:
    """The encoder mirrored: a linear map to the last level, transposed convolutions up, a 3x3 conv out.

    ``channels`` are in encoder order; level l (from the last) goes from ``channels[l]`` to
    ``channels[l - 1]`` (the first level to ``channels[0]`` again), as in PyTorch-VAE's VanillaVAE. The last
    convolution outputs ``out_channels`` values per pixel (default: the image's channels, one logit each; an
    8-bit likelihood head needs more, see :func:`vaekit.heads.params_per_pixel`).
    """
    h, w, c = shape
    sizes = level_sizes(h, w, len(channels))
    h_last, w_last = sizes[-1]
    layers: list[nn.Module] = [nn.Linear(zdim, channels[-1] * h_last * w_last),
                               nn.Unflatten(-1, (channels[-1], h_last, w_last))]
    for level in range(len(channels), 0, -1):
        (h_in, w_in), (h_out, w_out) = sizes[level], sizes[level - 1]
        c_in, c_out = channels[level - 1], channels[max(level - 2, 0)]
        pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
        layers += [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad), act()]
    layers += [nn.Conv2d(channels[0], out_channels or c, 3, padding=1), ToRows()]
    return nn.Sequential(*layers)


def conv_levels(height: int, width: int, most: int) -> int:
    """How many halvings the ``conv`` preset makes: down to about 4 x 4, at most ``most``."""
    levels = 0
    while levels < most and min(height, width) > 4:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        levels += 1
    return max(levels, 1)
