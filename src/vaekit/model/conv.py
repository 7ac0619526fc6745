"""Convolutional encoder and decoder bodies for images of any size, grey or colour.

The VAE works on flattened images (rows of H*W*C values, channels last, as the data pipeline stores them),
so the conv bodies begin by laying a row out as a (C, H, W) image and end by flattening back; everything
around them (the posterior split, the reparametrization, every likelihood) is the MLP VAE's.

Each encoder level is a 3x3 convolution with stride 2 and padding 1, halving the size (rounding up), so
any size works, 28 included: 28 -> 14 -> 7 -> 4. The decoder mirrors it, each level either nearest-neighbour
upsampling to exactly the encoder's size followed by a 3x3 convolution (the ``conv`` preset: no checkerboard
artefacts) or a 3x3 transposed convolution whose ``output_padding`` (0 or 1) lands on that size
(``pytorch-vae-vanilla``, and ``conv`` runs stored before it changed), then one 3x3 convolution to the image's
channels. No batch norm: evaluation never depends on the batch.

``res_blocks`` adds that many residual blocks (:class:`Residual`, x + conv(act(conv(x))) at constant size and
channels) after every level of both the encoder and the decoder: more depth per resolution without a longer
path for the gradient, each block starting as the identity.
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


class Residual(nn.Module):
    """``x + conv(act(conv(x)))`` with 3x3 convolutions that keep the size and channels of ``x``.

    The second convolution starts at zero, so a block starts as the identity: adding blocks does not change the
    function a fresh model computes, nor the scale of its activations, and the first steps train the levels
    as if the blocks were not there (SkipInit; De and Smith, 2020).
    """

    def __init__(self, channels: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), act(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """The (H, W) of the image and of every encoder level after it."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def conv_encoder(shape: tuple[int, int, int], channels: list[int], zdim: int,
                 act: Callable[[], nn.Module], res_blocks: int = 0) -> nn.Sequential:
    """Strided 3x3 convolutions through ``channels`` (each followed by ``res_blocks`` residual blocks), then one
    linear map to (mu, logvar)."""
    h, w, c = shape
    layers: list[nn.Module] = [ToImage(h, w, c)]
    c_in = c
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
        layers += [Residual(c_out, act) for _ in range(res_blocks)]
        c_in = c_out
    h_last, w_last = level_sizes(h, w, len(channels))[-1]
    layers += [nn.Flatten(), nn.Linear(c_in * h_last * w_last, 2 * zdim)]
    return nn.Sequential(*layers)


def conv_decoder(shape: tuple[int, int, int], channels: list[int], zdim: int,
                 act: Callable[[], nn.Module], upsample: str = "transposed",
                 out_channels: int | None = None, res_blocks: int = 0) -> nn.Sequential:
    """The encoder mirrored: a linear map to the last level, one level up at a time, a 3x3 conv out.

    ``channels`` are in encoder order; level l (from the last) goes from ``channels[l]`` to
    ``channels[l - 1]`` (the first level to ``channels[0]`` again), as in PyTorch-VAE's VanillaVAE.
    ``upsample`` says how a level goes up (:func:`up_level`); ``out_channels`` is the final convolution's
    output channels (default: the image's), so a likelihood with several parameters per pixel can widen it.
    Every level ends with ``res_blocks`` residual blocks, the full-size level included.
    """
    h, w, c = shape
    sizes = level_sizes(h, w, len(channels))
    h_last, w_last = sizes[-1]
    layers: list[nn.Module] = [nn.Linear(zdim, channels[-1] * h_last * w_last),
                               nn.Unflatten(-1, (channels[-1], h_last, w_last))]
    for level in range(len(channels), 0, -1):
        c_in, c_out = channels[level - 1], channels[max(level - 2, 0)]
        layers += [*up_level(c_in, c_out, sizes[level], sizes[level - 1], upsample), act()]
        layers += [Residual(c_out, act) for _ in range(res_blocks)]
    layers += [nn.Conv2d(channels[0], c if out_channels is None else out_channels, 3, padding=1), ToRows()]
    return nn.Sequential(*layers)


def up_level(c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int],
             upsample: str) -> list[nn.Module]:
    """The layers that take a (c_in, *size_in) image to (c_out, *size_out), about twice its size.

    ``"transposed"``: a 3x3 transposed convolution with stride 2 whose ``output_padding`` (0 or 1 per axis)
    lands on ``size_out``. Its kernel overlaps unevenly (output pixels alternately receive 4, 2 or 1 taps),
    which draws the checkerboard pattern of Odena et al. (2016). ``"nearest"``: nearest-neighbour upsampling
    to exactly ``size_out`` (so odd sizes need no padding rule), then a 3x3 convolution, in which every output
    pixel sees the same number of taps: no checkerboard, for 4x the transposed convolution's products.
    """
    if upsample == "nearest":
        return [nn.Upsample(size=size_out, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
    if upsample != "transposed":
        raise ValueError(f"unknown upsample {upsample!r}")
    (h_in, w_in), (h_out, w_out) = size_in, size_out
    pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
    return [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad)]


def conv_levels(height: int, width: int, most: int) -> int:
    """How many halvings the ``conv`` preset makes: down to about 4 x 4, at most ``most``."""
    levels = 0
    while levels < most and min(height, width) > 4:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        levels += 1
    return max(levels, 1)
