"""Test-set evaluation of a trained model.

``test_loss`` is the negative ELBO per test image in nats with one reparametrized sample per image, as
the blog post computes its loss. The noise comes from a CPU generator seeded with a fixed seed and is moved
to the model's device, so the draws are the same on every device (a CUDA generator draws other numbers from
the same seed) and the number is a function of the weights: ``vaekit evaluate`` on the device training ran
on reproduces what training printed, and on another device differs only by its arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaekit.data.tensors import to_unit
from vaekit.model import VAE
from vaekit.objectives import ELBOTerms, elbo_terms

EVAL_SEED = 20230801


@torch.no_grad()
def evaluate_elbo(
    model: VAE,
    images: Tensor,
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
    batch_size: int = 1000,
    seed: int = EVAL_SEED,
) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL per image over ``images`` (uint8, flattened).

    Sums are accumulated in float64 so the mean does not depend on the batch size beyond rounding.
    A model with a learned per-pixel sigma uses it in place of ``sigma``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)  # on the CPU whatever the device: the same draws everywhere
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    n = images.shape[0]
    for i in range(0, n, batch_size):
        x = to_unit(images[i : i + batch_size].to(device, non_blocking=True))
        eps = torch.randn((x.shape[0], model.latent_size), generator=gen, dtype=x.dtype).to(device, non_blocking=True)
        t = image_terms(model, x, eps, likelihood, sigma)
        totals += torch.stack([t.loss.sum(), t.recon.sum(), t.kl.sum()]).double()
    model.train(was_training)
    loss, recon, kl = (totals / n).tolist()
    return {"test_loss": loss, "test_recon": recon, "test_kl": kl}


def image_terms(model: VAE, x: Tensor, eps: Tensor, likelihood: str, sigma: float) -> ELBOTerms:
    """One draw's ELBO terms per image (``eps``: the standard normals, (batch, latent_size)); a hierarchy's KL is
    the sum of its groups' given their sampled parents. Scoring images one by one reads the same terms."""
    if model.hierarchical:
        p = model.latent_pass(x, eps)
        recon = -model.log_px_z(likelihood, x, p.logits, sigma)
        return ELBOTerms(loss=recon + p.kl, recon=recon, kl=p.kl)
    logits, mu, logvar = model(x, eps)
    return elbo_terms(model.head_params(x, logits), x, mu, logvar, likelihood, sigma, model.log_sigma, model.channels,
                      model.config.mixtures)
