"""A causal context for the 8-bit heads: each pixel's distribution also reads the pixels before it (PixelVAE).

A decoder that gives every pixel's distribution from z alone (a factorized p(x|z)) must spend z on every local
detail: the neighbouring pixels' likeness, which PNG and WebP predict from the pixels already coded, is left to
a latent that cannot afford it, and such a VAE codes photos worse than PNG. PixelVAE (Gulrajani et al., 2017)
adds a small autoregressive network over the image itself. Here that is:

* one masked ("type A", van den Oord et al., 2016) convolution over the image whose (2N+1) x (2N+1) kernel
  sees only the pixels strictly before the centre in raster order, every channel of them: the N rows
  above and the N pixels before it in its own row (N = ``ModelConfig.context``);
* its features added to a linear map of the z-decoder's outputs for that pixel (the head's parameters given
  z), then two per-pixel layers whose output is added to those parameters: the context network starts at
  zero, so a model starts where the factorized one does.

Within a pixel the head's own coupling (the mixture's red -> green -> blue) orders the channels, so
log p(x|z) = sum_i log p(x_i | x_<i, z) stays an exact, normalized likelihood: the ELBO, the importance-sampled
NLL and every number that reads them are unchanged in meaning. Drawing an image goes pixel by pixel in raster
order (:meth:`CausalContext.generate`): the z-decoder runs once, the small network H x W times on one window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Hidden features per pixel of the context network.
WIDTH = 64


def causal_mask(radius: int) -> Tensor:
    """The (1, 1, 2r+1, 2r+1) type-A mask: 1 at the rows above the centre and before it in its row, else 0."""
    k = 2 * radius + 1
    mask = torch.zeros(1, 1, k, k)
    mask[..., :radius, :] = 1
    mask[..., radius, :radius] = 1
    return mask


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed ops on one intra-op thread, then restore the setting.

    Each step of the pixel-by-pixel pass is a handful of operations on a few hundred numbers: with several threads
    every one of them waits at a barrier for the others, and on a busy machine that made drawing 64 images of
    32x32 pixels take 67 s instead of 3 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CausalContext(nn.Module):
    """The causal network over an image of ``shape`` (H, W, C) beside a decoder of ``per_pixel`` outputs a pixel."""

    def __init__(self, shape: tuple[int, int, int], per_pixel: int, radius: int, act: Callable[[], nn.Module],
                 width: int = WIDTH) -> None:
        super().__init__()
        self.shape, self.radius = shape, radius
        self.window = nn.Conv2d(shape[2], width, 2 * radius + 1, padding=radius)
        self.register_buffer("mask", causal_mask(radius), persistent=False)
        self.from_z = nn.Linear(per_pixel, width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, per_pixel)
        self.act = act()
        with torch.no_grad():  # a zero correction at first: the model starts as the factorized one
            self.out.weight.zero_()
            self.out.bias.zero_()

    def _mix(self, seen: Tensor, params: Tensor) -> Tensor:
        """The head's parameters (..., P) of pixels whose window features are ``seen`` (..., WIDTH)."""
        h = self.act(seen + self.from_z(params))
        return params + self.out(self.act(self.hidden(h)))

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        """The head's parameters (rows (..., H*W*P)) given z's ``params`` and the image ``x`` (rows (..., H*W*C) in
        [0, 1]) whose earlier pixels each pixel reads; ``x`` broadcasts against the leading dimensions of
        ``params`` (one image, k latent draws), and its window is computed once for all of them."""
        h, w, c = self.shape
        img = (2 * x - 1).reshape(-1, h, w, c).permute(0, 3, 1, 2)
        seen = F.conv2d(img, self.window.weight * self.mask, self.window.bias, padding=self.radius)
        seen = seen.flatten(2).transpose(1, 2).reshape(*x.shape[:-1], h * w, -1)
        p = params.reshape(*params.shape[:-1], h * w, -1)
        return self._mix(seen, p).flatten(-2)

    @torch.no_grad()
    def generate(self, params: Tensor, draw: Callable[[Tensor], Tensor]) -> Tensor:
        """Images (rows (..., H*W*C) in [0, 1]) made pixel by pixel in raster order from z's ``params``.

        ``draw`` turns one pixel's head parameters (M, P) into its values (M, C): a sample, or the head's mean for
        the image to show. Each step runs the masked kernel on the (r+1) x (2r+1) window that ends at the pixel,
        the only part of the image it reads, so a step costs one pixel's work, not an image's.
        """
        h, w, c = self.shape
        r = self.radius
        p = params.reshape(-1, h, w, params.shape[-1] // (h * w))
        weight = (self.window.weight * self.mask)[:, :, : r + 1]
        # The image as the network reads it (2x - 1), zero-padded as the training convolution pads it.
        canvas = p.new_zeros(p.shape[0], c, h + r, w + 2 * r)
        out = p.new_empty(p.shape[0], h, w, c)
        with one_thread():
            for i in range(h):
                for j in range(w):
                    seen = F.conv2d(canvas[:, :, i : i + r + 1, j : j + 2 * r + 1], weight, self.window.bias)
                    value = draw(self._mix(seen.flatten(1), p[:, i, j]))
                    out[:, i, j] = value
                    canvas[:, :, i + r, j + r] = 2 * value - 1
        return out.reshape(*params.shape[:-1], h * w * c)
