"""A hierarchical VAE in the style of VDVAE (Child, 2021) and NVAE (Vahdat and Kautz, 2020).

One latent layer limits a VAE's likelihood: the posterior of a single Gaussian group cannot describe an image's
detail. A hierarchy splits the latents into groups at several resolutions, coarse to fine. The bottom-up
network (the encoder) turns the image into activations at each resolution with residual blocks; the top-down
network (the decoder) starts from a learned constant at the coarsest resolution and, group by group,

* predicts the prior p(z_i | z_<i) from its current state h (the first group's prior is N(0, I)),
* predicts the posterior q(z_i | x, z_<i) from h and the bottom-up activations at that resolution,
* draws z_i from the posterior (training, likelihood) or takes it from the caller, adds a projection of
  z_i to h and runs a residual block,

upsampling between resolutions, and ends in a 3x3 convolution to the per-pixel likelihood parameters.
Both distributions are diagonal Gaussians, so the KL of each group given its sampled parents is analytic.

The noise of every group is one flat vector per image (groups in top-down order, each laid out (C, H, W)),
drawn outside the model like the flat VAE's ``eps``, so runs stay reproducible and resumable bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.model.conv import ToImage, ToRows, level_sizes
from vaekit.objectives import diagonal_normal_log_prob, gaussian_kl_between, standard_normal_log_prob


@dataclass(frozen=True)
class Group:
    """One latent group: its level (0 = coarsest), channels and spatial size; ``dim`` values per image."""

    level: int
    channels: int
    height: int
    width: int

    @property
    def dim(self) -> int:
        return self.channels * self.height * self.width


@dataclass
class LatentPass:
    """One top-down pass: the decoder's ``logits`` and, per image, the KL of every group given its sampled
    parents (summed), log q(z|x) and log p(z) of the draws (summed over the groups)."""

    logits: Tensor
    kl: Tensor
    log_q: Tensor
    log_p: Tensor


def hierarchy_groups(image_shape: tuple[int, ...], channels: list[int], groups: list[int],
                     zdim: int) -> list[Group]:
    """The latent groups, top-down: ``groups[l]`` groups of ``zdim`` channels at level l (coarsest first).

    The levels are the image's resolution halved ``len(channels) - 1`` times, as the conv models halve it.
    """
    sizes = level_sizes(image_shape[0], image_shape[1], len(channels) - 1)[::-1]
    return [Group(level, zdim, *sizes[level]) for level, n in enumerate(groups) for _ in range(n)]


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 when autocast computed it in a narrower type (float32 and float64 stay as they are)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class ResBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))), the last convolution scaled down so a deep stack starts near identity."""

    def __init__(self, channels: int, act: Callable[[], nn.Module], depth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1), act(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        with torch.no_grad():
            self.body[-1].weight.mul_(1 / math.sqrt(depth))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class BottomUp(nn.Module):
    """The encoder: the image through residual blocks and strided convolutions, keeping every level's output."""

    def __init__(self, shape: tuple[int, int, int], channels: list[int], act: Callable[[], nn.Module]) -> None:
        super().__init__()
        h, w, c = shape
        self.to_image = ToImage(h, w, c)
        self.stem = nn.Conv2d(c, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(ch, act, len(channels)) for ch in channels)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1)
                                  for a, b in zip(channels[:-1], channels[1:], strict=True))

    def forward(self, rows: Tensor) -> list[Tensor]:
        """Activations per level, coarsest first (the order the top-down pass reads them)."""
        h = self.stem(self.to_image(rows))
        out = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            out.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        return out[::-1]


class GroupBlock(nn.Module):
    """The top-down step of one latent group: its prior and posterior heads, the projection of z_i into the
    state h, and a residual block. The first group (``first``) has the fixed prior N(0, I) and no prior head."""

    def __init__(self, channels: int, zdim: int, act: Callable[[], nn.Module], depth: int, first: bool) -> None:
        super().__init__()
        self.zdim = zdim
        self.prior = None if first else nn.Conv2d(channels, 2 * zdim, 3, padding=1)
        self.posterior = nn.Conv2d(2 * channels, 2 * zdim, 3, padding=1)
        self.project = nn.Conv2d(zdim, channels, 1)
        self.block = ResBlock(channels, act, depth)
        if self.prior is not None:  # start every prior at N(0, I), as the first group's is
            nn.init.zeros_(self.prior.weight)
            nn.init.zeros_(self.prior.bias)

    def prior_params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of p(z_i | z_<i) from the state ``h``."""
        if self.prior is None:
            zeros = h.new_zeros(h.shape[0], self.zdim, *h.shape[2:])
            return zeros, zeros
        mean, logvar = self.prior(h).chunk(2, dim=1)
        return mean, logvar

    def posterior_params(self, h: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of q(z_i | x, z_<i) from the state and the bottom-up activation."""
        mean, logvar = self.posterior(torch.cat([h, act], dim=1)).chunk(2, dim=1)
        return mean, logvar

    def absorb(self, h: Tensor, z: Tensor) -> Tensor:
        """The state after z_i: its projection added, then the residual block."""
        return self.block(h + self.project(z))


class TopDown(nn.Module):
    """The decoder: a learned constant at the coarsest level, the latent groups coarse to fine, the output layer."""

    def __init__(self, shape: tuple[int, int, int], channels: list[int], groups: list[Group], zdim: int,
                 act: Callable[[], nn.Module], out_per_pixel: int) -> None:
        super().__init__()
        h, w, _ = shape
        td = channels[::-1]
        self.sizes = level_sizes(h, w, len(channels) - 1)[::-1]
        self.groups = groups
        depth = len(groups) + 2 * len(channels)
        self.start = nn.Parameter(torch.zeros(1, td[0], *self.sizes[0]))
        self.steps = nn.ModuleList(GroupBlock(td[g.level], zdim, act, depth, i == 0) for i, g in enumerate(groups))
        self.level_blocks = nn.ModuleList(ResBlock(c, act, depth) for c in td)
        self.up = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(td[:-1], td[1:], strict=True))
        self.out = nn.Sequential(act(), nn.Conv2d(td[-1], out_per_pixel, 3, padding=1), ToRows())

    def forward(self, n: int, acts: list[Tensor] | None, eps: Tensor | None,
                top: Tensor | None = None) -> LatentPass:
        """A pass for ``n`` images. With ``acts`` (the bottom-up outputs) every z_i is drawn from the posterior
        with the standard normals ``eps`` (n, total); without, z_i comes from the prior: the first group is
        ``top`` (n, its dim) when given, and each group is its prior mean plus its scale times its part of
        ``eps``, or the prior mean (temperature 0) where ``eps`` is None."""
        h = self.start.expand(n, -1, -1, -1)
        parts = self._split(eps) if eps is not None else [None] * len(self.groups)
        kl = log_q = log_p = torch.zeros(n, device=h.device, dtype=torch.promote_types(h.dtype, torch.float32))
        i = 0
        for level in range(len(self.sizes)):
            while i < len(self.groups) and self.groups[i].level == level:
                step, g = self.steps[i], self.groups[i]
                p_mean, p_logvar = step.prior_params(h)
                if acts is not None:  # the terms in float32 also under autocast (a no-op in float32)
                    p_mean, p_logvar = _wide(p_mean), _wide(p_logvar)
                    q_mean, q_logvar = (_wide(t) for t in step.posterior_params(h, acts[level]))
                    z = q_mean + torch.exp(0.5 * q_logvar) * parts[i]
                    kl = kl + gaussian_kl_between(q_mean, q_logvar, p_mean, p_logvar).flatten(1).sum(-1)
                    log_q = log_q + diagonal_normal_log_prob(z.flatten(1), q_mean.flatten(1), q_logvar.flatten(1))
                    log_p = log_p + (standard_normal_log_prob(z.flatten(1)) if i == 0 else
                                     diagonal_normal_log_prob(z.flatten(1), p_mean.flatten(1), p_logvar.flatten(1)))
                elif i == 0 and top is not None:
                    z = top.reshape(n, g.channels, g.height, g.width)
                else:
                    z = p_mean if parts[i] is None else p_mean + torch.exp(0.5 * p_logvar) * parts[i]
                h = step.absorb(h, z)
                i += 1
            h = self.level_blocks[level](h)
            if level + 1 < len(self.sizes):
                h = self.up[level](F.interpolate(h, size=self.sizes[level + 1], mode="nearest"))
        return LatentPass(_wide(self.out(h)), kl, log_q, log_p)

    def first_posterior(self, acts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of q(z_1|x), flattened per image: the first group sees only the constant start."""
        h = self.start.expand(acts[0].shape[0], -1, -1, -1)
        mean, logvar = self.steps[0].posterior_params(h, acts[0])
        return mean.flatten(1), logvar.flatten(1)

    def _split(self, eps: Tensor) -> list[Tensor]:
        """``eps`` (n, total) cut into each group's (n, C, H, W) standard normals."""
        chunks = torch.split(eps, [g.dim for g in self.groups], dim=-1)
        return [c.reshape(-1, g.channels, g.height, g.width) for c, g in zip(chunks, self.groups, strict=True)]
