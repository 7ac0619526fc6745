"""The training objective of one batch, and the random draws it needs, made before it runs.

The objective is a pure function of the batch and of its noise: the reparametrization's standard normal
draws ``eps`` and, for dynamic binarization, the uniforms that binarize the pixels. Drawing them outside
(from the run's generators, for the global batch, then keeping this process's rows) is what lets data
parallelism give every image the noise a single process would, and lets ``torch.compile`` see one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vaekit.config import TrainConfig
from vaekit.data.binarize import binarize_with
from vaekit.data.tensors import to_unit
from vaekit.model import VAE
from vaekit.objectives import elbo_terms, gaussian_kl, iwae_bound, log_importance_weights


@dataclass
class Noise:
    """The random inputs of one step: ``eps`` (batch, zdim), or (k, batch, zdim) for k > 1 or iwae, and
    ``uniforms`` (batch, pixels) for dynamic binarization (else None)."""

    eps: Tensor
    uniforms: Tensor | None = None


def single_draw(config: TrainConfig) -> bool:
    """Whether the objective is the post's: one reparametrized draw per image (elbo, k = 1)."""
    return config.objective == "elbo" and config.k == 1


def draw_noise(gens: dict[str, torch.Generator], config: TrainConfig, rows: int, zdim: int, pixels: int,
               device: torch.device, keep: tuple[int, int] | None = None) -> Noise:
    """Noise for a global batch of ``rows`` images; ``keep = (start, count)`` keeps those rows only.

    Every process draws the whole global batch, so the generators advance identically everywhere (rank 0's
    checkpoint resumes all ranks) and image i of a batch gets the same noise whichever process holds it.
    """
    uniforms = None
    if "binarize" in gens:
        uniforms = torch.rand((rows, pixels), generator=gens["binarize"], device=device)
    shape = (rows, zdim) if single_draw(config) else (config.k, rows, zdim)
    eps = torch.randn(shape, generator=gens["noise"], device=device)
    if keep is not None and keep[1] != rows:
        eps = eps.narrow(-2, *keep).contiguous()
        uniforms = uniforms.narrow(0, *keep).contiguous() if uniforms is not None else None
    return Noise(eps, uniforms)


def batch_loss(model: VAE, x_u8: Tensor, noise: Noise, config: TrainConfig, kl_weight: float = 1.0) -> Tensor:
    """The training objective of one batch, summed over its images as the blog post's loss is.

    Summing rather than averaging keeps the post's objective exactly; Adam's updates barely depend on the
    scale of the loss, and reported numbers are divided by the number of images. The default (elbo, k 1,
    weight 1) is the post's negative ELBO with the closed-form KL; ``elbo`` with k > 1 averages the
    reconstruction over k draws; ``iwae`` is minus the k-sample importance-weighted bound.
    """
    x = to_unit(x_u8)
    if noise.uniforms is not None:
        x = binarize_with(x, noise.uniforms)
    if model.hierarchical:
        return hierarchical_loss(model, x, noise.eps, config, kl_weight)
    if single_draw(config):
        logits, mu, logvar = model(x, noise.eps)
        t = elbo_terms(model.head_params(x, logits), x, mu, logvar, config.likelihood, config.sigma, model.log_sigma,
                       model.channels, model.config.mixtures)
        return (t.recon + kl_weight * t.kl).sum()  # weight 1.0: bit for bit the plain negative ELBO
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar, noise.eps)
    log_px_z = model.log_px_z(config.likelihood, x, model.decode(z), config.sigma)
    if config.objective == "elbo":
        return (kl_weight * gaussian_kl(mu, logvar) - log_px_z.mean(dim=0)).sum()
    return -iwae_bound(log_importance_weights(log_px_z, noise.eps, logvar, z, kl_weight)).sum()


def hierarchical_loss(model: VAE, x: Tensor, eps: Tensor, config: TrainConfig, kl_weight: float = 1.0) -> Tensor:
    """The objective of a hierarchy, summed over the batch: the negative ELBO with every group's KL given its
    sampled parents (averaged over k draws), or minus the k-sample bound with log w = log p(x|z) +
    ``kl_weight`` * (log p(z) - log q(z|x)) summed over the groups."""
    p = model.latent_pass(x, eps)
    log_px_z = model.log_px_z(config.likelihood, x, p.logits, config.sigma)
    if config.objective == "elbo":
        per_draw = kl_weight * p.kl - log_px_z
        return (per_draw if eps.dim() == 2 else per_draw.mean(dim=0)).sum()
    return -iwae_bound(log_px_z + kl_weight * (p.log_p - p.log_q)).sum()


class Objective(nn.Module):
    """The loss of one batch as a module around the VAE.

    DistributedDataParallel synchronizes the gradients of what runs inside its wrapped module's forward,
    and torch.compile fuses what it sees, so both must see the whole objective (likelihood and KL as well
    as the network), not only the VAE.
    """

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x_u8: Tensor, eps: Tensor, uniforms: Tensor | None, kl_weight: float) -> Tensor:
        return batch_loss(self.model, x_u8, Noise(eps, uniforms), self.config, kl_weight)
