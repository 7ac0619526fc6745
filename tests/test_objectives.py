"""The ELBO's parts against independent references: Monte Carlo, torch.distributions, closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaekit.eval.likelihood import bernoulli_log_px_z
from vaekit.objectives import (
    bernoulli_cross_entropy,
    bernoulli_log_likelihood,
    diagonal_normal_log_prob,
    elbo_terms,
    gaussian_kl,
    gaussian_kl_per_dim,
    gaussian_log_likelihood,
    standard_normal_log_prob,
)

pytestmark = pytest.mark.usefixtures("float64")  # references in double precision


def test_kl_matches_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=g)
    logvar = torch.randn(4, 3, generator=g) * 0.5
    n = 100_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 4, 3, generator=g)
    log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    stderr = (log_q - log_p).std(0) / math.sqrt(n)
    assert torch.all((gaussian_kl(mu, logvar) - mc).abs() < 5 * stderr)


def test_kl_matches_torch_distributions_and_is_zero_at_prior() -> None:
    mu = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    logvar = torch.tensor([[0.1, -0.7], [1.5, 0.0]])
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), ref)
    assert gaussian_kl(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0


def test_bernoulli_log_likelihood_matches_distribution_and_is_stable() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g) * 3
    x = (torch.rand(5, 7, generator=g) > 0.5).double()
    ref = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), ref)
    # confident, correct predictions cost ~0 nats instead of the -100 clamp of log(sigmoid)
    big = torch.full((1, 3), 200.0)
    assert bernoulli_log_likelihood(torch.ones(1, 3), big).item() == pytest.approx(0.0, abs=1e-12)
    assert bernoulli_log_likelihood(torch.zeros(1, 3), big).item() == pytest.approx(-600.0)


def test_gaussian_log_likelihood_is_a_normalized_density() -> None:
    mean = torch.tensor([[0.2, 0.8, 0.5]])
    x = torch.tensor([[0.1, 0.9, 0.4]])
    ref = Normal(mean, 0.3).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_likelihood(x, mean, math.log(0.3)), ref)
    # integrates to 1 in one dimension
    grid = torch.linspace(-10, 10, 200_001)[:, None]
    dens = gaussian_log_likelihood(grid, torch.zeros(1, 1), math.log(0.7)).exp()
    assert torch.trapezoid(dens, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_normal_log_probs_match_torch() -> None:
    z = torch.tensor([[0.5, -1.0]])
    mu = torch.tensor([[0.1, 0.2]])
    logvar = torch.tensor([[-0.3, 0.4]])
    torch.testing.assert_close(standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    torch.testing.assert_close(diagonal_normal_log_prob(z, mu, logvar),
                               Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))


def _linear_gaussian(seed: int = 0, d: int = 6, k: int = 2, sigma: float = 0.5):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I), W with orthogonal columns.

    Then p(x) = N(b, W W^T + sigma^2 I) exactly, and the posterior is a diagonal Gaussian:
    Sigma = (I + W^T W / sigma^2)^-1, mu = Sigma W^T (x - b) / sigma^2.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    W = q * torch.tensor([2.0, 0.7])[:k]
    b = torch.randn(d, generator=g)
    x = b + W @ torch.randn(k, generator=g) + sigma * torch.randn(d, generator=g)
    cov = W @ W.T + sigma**2 * torch.eye(d)
    log_px = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    post_var = 1 / (1 + (W * W).sum(0) / sigma**2)
    post_mu = post_var * (W.T @ (x - b)) / sigma**2
    return W, b, x, sigma, log_px, post_mu, post_var


def _elbo_mc(W, b, x, sigma, mu, logvar, n: int = 50_000, seed: int = 1) -> tuple[float, float]:
    """Monte Carlo ELBO (closed-form KL) and the standard error of its estimate."""
    eps = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed))
    z = mu + torch.exp(0.5 * logvar) * eps
    log_px_z = gaussian_log_likelihood(x.expand(n, -1), z @ W.T + b, math.log(sigma))
    return (log_px_z.mean() - gaussian_kl(mu, logvar)).item(), (log_px_z.std() / math.sqrt(n)).item()


def test_elbo_is_tight_at_the_exact_posterior_and_below_log_px_elsewhere() -> None:
    W, b, x, sigma, log_px, mu, var = _linear_gaussian()
    tight, se = _elbo_mc(W, b, x, sigma, mu, var.log())
    assert abs(tight - log_px.item()) < 4 * se
    for shift, scale in [(0.3, 1.0), (0.0, 3.0), (-1.0, 0.5)]:
        loose, se = _elbo_mc(W, b, x, sigma, mu + shift, (var * scale).log())
        gap = kl_divergence(Normal(mu + shift, (var * scale).sqrt()), Normal(mu, var.sqrt())).sum().item()
        assert loose < log_px.item()
        assert abs(log_px.item() - loose - gap) < 4 * se  # the gap is KL(q || posterior)


def test_elbo_terms_add_up() -> None:
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(3, 10, generator=g), torch.rand(3, 10, generator=g)
    mu, logvar = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = elbo_terms(logits, x, mu, logvar)
    torch.testing.assert_close(t.loss, t.recon + t.kl)
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)
    torch.testing.assert_close(t.recon, bce)


def test_each_term_has_one_definition_that_its_other_forms_compute() -> None:
    """The estimator's two-pass Bernoulli term, the cross-entropy training minimizes and the KL per dimension
    are the definitions above, in other arrangements."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 40, generator=g)
    logits = torch.randn(7, 5, 40, generator=g) * 5
    torch.testing.assert_close(bernoulli_log_px_z(x, logits), bernoulli_log_likelihood(x.expand_as(logits), logits),
                               rtol=1e-12, atol=1e-10)
    assert torch.equal(bernoulli_cross_entropy(x, logits[0]), -bernoulli_log_likelihood(x, logits[0]))
    mu, logvar = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar).sum(dim=-1), gaussian_kl(mu, logvar),
                               rtol=1e-14, atol=1e-14)
