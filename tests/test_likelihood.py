"""The importance-sampled log-likelihood, the likelihoods and the latent statistics against exact references.

The reference model is linear-Gaussian: p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I) with orthogonal
columns of W, so log p(x) = log N(x | b, W W^T + sigma^2 I) exactly and the posterior is a diagonal
Gaussian; encoders that are deliberately wrong make importance sampling do real work.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, ContinuousBernoulli, MultivariateNormal, Normal

from vaekit.compiled import compile_unsupported_reason
from vaekit.eval.elbo import evaluate_elbo
from vaekit.eval.likelihood import (
    COMPILE_MIN_ROWS,
    LOG_SIGMOID_GROUP,
    StreamingLogMeanExp,
    estimate_log_px,
    is_binary,
    latent_statistics,
    log_mean_exp,
    model_log_px,
    sum_log_sigmoid,
    use_compile,
)
from vaekit.model import VAE, model_config, n_params
from vaekit.objectives import (
    continuous_bernoulli_log_likelihood,
    continuous_bernoulli_log_norm,
    gaussian_kl,
    gaussian_log_likelihood,
    iwae_bound,
    log_importance_weights,
    log_likelihood,
    standard_normal_log_prob,
)

pytestmark = pytest.mark.usefixtures("float64")  # references in double precision


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I); ``n`` data points drawn from the model."""

    def __init__(self, n: int = 64, d: int = 6, k: int = 2, sigma: float = 0.5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
        self.W = q * torch.tensor([2.0, 0.7])[:k]
        self.b = torch.randn(d, generator=g)
        self.sigma = sigma
        self.x = torch.randn(n, k, generator=g) @ self.W.T + self.b + sigma * torch.randn(n, d, generator=g)
        cov = self.W @ self.W.T + sigma**2 * torch.eye(d)
        self.log_px = MultivariateNormal(self.b, cov).log_prob(self.x)
        self.post_var = 1 / (1 + (self.W * self.W).sum(0) / sigma**2)

    def post_mu(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b) @ self.W * self.post_var / self.sigma**2

    def encoder(self, shift: float = 0.0, scale: float = 1.0):
        """q(z|x) = N(posterior mean + shift, scale * posterior variance): exact for (0, 1)."""
        def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mu = self.post_mu(x) + shift
            return mu, torch.log(self.post_var * scale).expand_as(mu)
        return encode

    def log_px_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_likelihood(x, z @ self.W.T + self.b, math.log(self.sigma))

    def elbo(self, shift: float, scale: float) -> torch.Tensor:
        """The ELBO in closed form: E_q log p(x|z) - KL(q || p(z)) per data point."""
        mu = self.post_mu(self.x) + shift
        var = self.post_var * scale
        mean_term = gaussian_log_likelihood(self.x, mu @ self.W.T + self.b, math.log(self.sigma))
        trace_term = 0.5 * (var * (self.W * self.W).sum(0)).sum() / self.sigma**2
        return mean_term - trace_term - gaussian_kl(mu, torch.log(var).expand_as(mu))


def test_exact_posterior_gives_the_exact_log_likelihood_with_zero_error() -> None:
    m = LinearGaussian()
    est = estimate_log_px(m.encoder(), m.log_px_z, m.x, samples=7, rows=16)
    torch.testing.assert_close(est.log_px, m.log_px, rtol=0, atol=1e-10)
    assert est.stderr.max().item() < 1e-6  # every weight equals p(x)


def test_estimate_converges_to_exact_log_px_within_its_standard_error() -> None:
    m = LinearGaussian(n=16, seed=1)
    est = estimate_log_px(m.encoder(shift=0.3, scale=2.0), m.log_px_z, m.x, samples=20_000, rows=40_000)
    err = (est.log_px - m.log_px).abs()
    assert torch.all(err < 4 * est.stderr + 1e-9), (err / est.stderr).max()
    s = est.summary()
    assert abs(s["nll"] + m.log_px.mean().item()) < 4 * s["nll_stderr"]
    assert 0 < s["nll_stderr"] < 0.01


def test_estimate_is_above_the_elbo_and_grows_with_k() -> None:
    m = LinearGaussian(n=256, seed=2)
    shift, scale = 0.4, 0.5  # too narrow and off-centre: importance sampling has much to gain
    elbo = m.elbo(shift, scale).mean().item()
    means, ses = [], []
    for k in (1, 10, 100, 1000):
        s = estimate_log_px(m.encoder(shift, scale), m.log_px_z, m.x, samples=k, rows=64_000).summary()
        means.append(-s["nll"])
        ses.append(s["nll_stderr"] if k > 1 else s["nll_test_set_stderr"])
        # the K-draw ELBO estimate agrees with the closed form, and the estimate is not below it
        assert abs(-s["neg_elbo"] - elbo) < 4 * s["nll_test_set_stderr"]
        assert means[-1] >= elbo - 3 * ses[-1]
    assert abs(means[0] - elbo) < 4 * ses[0]  # K = 1 is the single-sample ELBO
    for a, b, sa, sb in zip(means, means[1:], ses, ses[1:], strict=False):
        assert b > a - 3 * math.hypot(sa, sb)
    assert means[-1] > means[0] + 0.1  # a real gain over the ELBO
    assert means[-1] < m.log_px.mean().item() + 4 * ses[-1]  # and, on average, not above log p(x)


def test_iwae_bound_with_one_sample_is_the_elbo() -> None:
    m = LinearGaussian(n=8, seed=3)
    mu, logvar = m.encoder(0.2, 1.5)(m.x)
    eps = torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(0))
    z = mu + torch.exp(0.5 * logvar) * eps
    log_w = log_importance_weights(m.log_px_z(m.x, z), eps, logvar, z)
    ref = (m.log_px_z(m.x, z) + Normal(0.0, 1.0).log_prob(z).sum(-1)
           - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))
    torch.testing.assert_close(iwae_bound(log_w), ref[0])  # one draw: log w itself
    # in expectation, the one-sample bound is the (closed-form) ELBO
    eps = torch.randn(200_000, *mu.shape, generator=torch.Generator().manual_seed(1))
    z = mu + torch.exp(0.5 * logvar) * eps
    lw = log_importance_weights(m.log_px_z(m.x, z), eps, logvar, z)
    se = lw.std(0) / math.sqrt(len(lw))
    assert torch.all((lw.mean(0) - m.elbo(0.2, 1.5)).abs() < 4 * se)


def test_delta_method_stderr_matches_the_spread_of_repeated_estimates() -> None:
    g = torch.Generator().manual_seed(4)
    log_w = torch.randn(200, 2000, generator=g) * 0.8 + 3.0  # 2000 repetitions of K = 200 log-normal weights
    est, se = log_mean_exp(log_w)
    ratio = est.std().item() / se.mean().item()
    assert 0.9 < ratio < 1.1


def test_streaming_accumulation_equals_one_pass_and_does_not_overflow() -> None:
    g = torch.Generator().manual_seed(5)
    log_w = torch.randn(1000, 7, generator=g) * 200 - 300  # weights from e^-1000 to e^400
    acc = StreamingLogMeanExp(7)
    for chunk in torch.split(log_w, 37):
        acc.add(chunk)
    ref = torch.logsumexp(log_w, 0) - math.log(1000)
    torch.testing.assert_close(acc.log_mean_exp(), ref, rtol=0, atol=1e-9)
    one, se = log_mean_exp(log_w)
    torch.testing.assert_close(acc.stderr(), se)
    torch.testing.assert_close(acc.mean_log(), log_w.mean(0))
    assert torch.isfinite(se).all()


def test_an_image_with_every_weight_zero_has_log_px_minus_infinity() -> None:
    """log p(x|z) = -inf for every draw of one image (the decoder rules it out): its NLL is inf, not NaN.

    The other images' estimates are untouched, and the summary's mean NLL is +inf with its standard errors
    undefined (None), so the failure is visible instead of a NaN that compares unequal to everything.
    """
    m = LinearGaussian(n=5, seed=8)

    def log_px_z(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = m.log_px_z(x, z)
        return torch.where((x[:, 0] == m.x[2, 0]).expand_as(out), -math.inf, out)  # image 2 is impossible

    for rows in (4 * 5, 1000):  # draws in several chunks and in one
        est = estimate_log_px(m.encoder(0.1, 1.5), log_px_z, m.x, samples=40, rows=rows)
        ref = estimate_log_px(m.encoder(0.1, 1.5), m.log_px_z, m.x, samples=40, rows=rows)
        assert est.log_px[2].item() == -math.inf and est.stderr[2].item() == math.inf
        keep = [0, 1, 3, 4]
        torch.testing.assert_close(est.log_px[keep], ref.log_px[keep], rtol=0, atol=0)
        torch.testing.assert_close(est.stderr[keep], ref.stderr[keep], rtol=0, atol=0)
        s = est.summary()
        assert s["nll"] == math.inf and s["bits_per_dim"] == math.inf and s["neg_elbo"] == math.inf
        assert s["nll_stderr"] is None and s["nll_test_set_stderr"] is None


def test_streaming_accumulation_of_zero_weights_then_finite_ones() -> None:
    """An image whose first chunks hold only zero weights: the later finite ones alone make its estimate."""
    acc = StreamingLogMeanExp(2)
    acc.add(torch.tensor([[-math.inf, 0.0], [-math.inf, 1.0]]))
    acc.add(torch.tensor([[-math.inf, 2.0], [-math.inf, 3.0]]))
    assert acc.log_mean_exp()[0].item() == -math.inf
    acc.add(torch.tensor([[5.0, 4.0], [-math.inf, 5.0]]))
    torch.testing.assert_close(acc.log_mean_exp(), torch.tensor([5.0 - math.log(6), 0.0]).double()
                               + torch.tensor([0.0, torch.logsumexp(torch.arange(6.0).double(), 0) - math.log(6)]))


def test_memory_is_bounded_for_any_k_and_k1_has_no_stderr() -> None:
    m = LinearGaussian(n=10, seed=6)
    seen = []

    def log_px_z(x, z):
        seen.append(z.shape[0] * z.shape[1])
        return m.log_px_z(x, z)

    est = estimate_log_px(m.encoder(0.1, 1.2), log_px_z, m.x, samples=5000, rows=256)
    assert max(seen) <= 256 and sum(seen) == 5000 * 10
    assert abs(est.log_px - m.log_px).max() < 0.05
    one = estimate_log_px(m.encoder(0.1, 1.2), m.log_px_z, m.x, samples=1).summary()
    assert one["nll_stderr"] is None and one["nll_samples"] == 1
    assert one["bits_per_dim"] == pytest.approx(one["nll"] / (6 * math.log(2)))


def test_model_estimate_matches_an_independent_bernoulli_reference() -> None:
    torch.manual_seed(0)
    model = VAE(model_config("mlp", zdim=3, hidden=[32], image_shape=(4, 4))).double().eval()
    images = torch.randint(0, 2, (12, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8) * 255

    def reference(x, z):  # torch.distributions, with the Gaussian densities of z spelled out separately
        return Bernoulli(logits=model.decode(z)).log_prob(x.expand(z.shape[0], -1, -1)).sum(-1)

    ours = model_log_px(model, images, samples=64, rows=100)
    ref = estimate_log_px(model.encode, reference, images, samples=64, rows=100, dtype=torch.float64)
    torch.testing.assert_close(ours.log_px, ref.log_px)
    assert ours.summary()["nll"] > 0


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli"])
def test_estimator_fast_likelihood_path_equals_the_objectives(name: str) -> None:
    """The estimator's two-pass Bernoulli form against the reference functions, grey and binary pixels."""
    torch.manual_seed(3)
    model = VAE(model_config("mlp", zdim=3, hidden=[16], image_shape=(4, 5))).double()
    images = torch.randint(0, 256, (6, 20), generator=torch.Generator().manual_seed(4)).to(torch.uint8)
    images[:3] = (images[:3] > 127).to(torch.uint8) * 255

    def reference(x, z):
        return log_likelihood(name, x, model.decode(z))

    ours = model_log_px(model, images, samples=30, likelihood=name, rows=64)
    ref = estimate_log_px(model.encode, reference, images, samples=30, rows=64, dtype=torch.float64)
    torch.testing.assert_close(ours.log_px, ref.log_px, rtol=0, atol=1e-9)


@pytest.mark.parametrize("width", [1, 5, LOG_SIGMOID_GROUP, LOG_SIGMOID_GROUP + 1, 784, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sum_log_sigmoid_against_float64(width: int, dtype: torch.dtype) -> None:
    """The grouped-product form against log sigmoid summed in float64, with saturated and infinite inputs."""
    y = torch.randn(64, width, dtype=torch.float64, generator=torch.Generator().manual_seed(width)) * 12
    y[0] = 90.0  # every factor 1 + exp(-|y|) rounds to 1
    y[1] = -90.0
    y[2, 0], y[3, -1] = math.inf, -math.inf
    y = y.to(dtype)
    ref = torch.nn.functional.logsigmoid(y.double()).sum(-1)
    ours = sum_log_sigmoid(y)
    assert ours.dtype == torch.float32 and ours[3].item() == -math.inf
    finite = torch.isfinite(ref)
    assert torch.isfinite(ours[finite]).all()
    # float32 rounding of a sum of `width` terms, not of the products
    torch.testing.assert_close(ours[finite].double(), ref[finite], rtol=1e-6, atol=1e-6 * width ** 0.5 * 12)
    assert ours[2].item() == pytest.approx(ref[2].item(), abs=1e-3)


def test_is_binary() -> None:
    assert is_binary(torch.tensor([[0, 255, 0]], dtype=torch.uint8))
    assert not is_binary(torch.tensor([[0, 254]], dtype=torch.uint8))
    assert is_binary(torch.tensor([[0.0, 1.0]]))
    assert not is_binary(torch.tensor([[0.0, 0.5]]))


def test_compile_is_decided_by_size_on_the_cpu_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile(None, cpu, COMPILE_MIN_ROWS) and not use_compile(None, cpu, COMPILE_MIN_ROWS - 1)
    assert not use_compile(None, cuda, 10 * COMPILE_MIN_ROWS)
    assert use_compile(True, cuda, 1) and not use_compile(False, cpu, 10 * COMPILE_MIN_ROWS)


def _small_float32_model() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(5)
    model = VAE(model_config("seed")).float().eval()
    images = torch.randint(0, 2, (3, 784), generator=torch.Generator().manual_seed(6)).to(torch.uint8) * 255
    return model, images


def test_compiled_estimate_equals_the_eager_one() -> None:
    """torch.compile (the default for large CPU estimates) changes float32 rounding only."""
    reason = compile_unsupported_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    model, images = _small_float32_model()
    eager = model_log_px(model, images, samples=300, rows=256, compile=False)
    compiled = model_log_px(model, images, samples=300, rows=256, compile=True, warn=pytest.fail)
    torch.testing.assert_close(compiled.log_px, eager.log_px, rtol=0, atol=1e-4)
    torch.testing.assert_close(compiled.elbo, eager.elbo, rtol=0, atol=1e-4)
    torch.testing.assert_close(compiled.stderr, eager.stderr, rtol=1e-3, atol=1e-6)


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(monkeypatch) -> None:
    from torch._dynamo.exc import TorchDynamoException

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise TorchDynamoException("no C++ compiler")
        return run

    model, images = _small_float32_model()
    eager = model_log_px(model, images, samples=300, rows=256, compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("vaekit.compiled.compile_unsupported_reason", lambda device: None)
    warnings: list[str] = []
    fallback = model_log_px(model, images, samples=300, rows=256, compile=True, warn=warnings.append)
    assert len(warnings) == 1 and "torch.compile failed" in warnings[0] and "no C++ compiler" in warnings[0]
    assert torch.equal(fallback.log_px, eager.log_px)  # the same draws through the same eager code


def test_an_error_after_compiled_chunks_ran_is_not_hidden(monkeypatch) -> None:
    calls = []

    def flaky_compile(fn, **kwargs):
        def run(*args):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            return fn(*args)
        return run

    model, images = _small_float32_model()
    monkeypatch.setattr(torch, "compile", flaky_compile)
    monkeypatch.setattr("vaekit.compiled.compile_unsupported_reason", lambda device: None)
    with pytest.raises(RuntimeError, match="out of memory"):
        model_log_px(model, images, samples=300, rows=256, compile=True, warn=pytest.fail)


def test_active_units_and_kl_per_dimension() -> None:
    class Fixed(nn.Module):
        """Posterior means: dim 0 follows the input, dim 1 is constant, dim 2 varies by only 0.05."""

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def encode(self, x):
            mu = torch.stack([x[:, 0] * 4, torch.full_like(x[:, 0], 0.3), x[:, 0] * 0.1], dim=-1)
            return mu, torch.full_like(mu, -1.0)

    x = torch.rand(500, 5, generator=torch.Generator().manual_seed(7))
    stats = latent_statistics(Fixed(), x, batch_size=64)
    assert stats["active_units"] == 1
    mu, logvar = Fixed().encode(x)
    per_dim = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(0)
    assert stats["kl_per_dim"] == pytest.approx(per_dim.tolist())


def test_kl_per_dimension_sums_to_the_elbo_kl() -> None:
    torch.manual_seed(1)
    model = VAE(model_config("pytorch-example", image_shape=(28, 28))).float()
    images = torch.randint(0, 256, (300, 784), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    stats = latent_statistics(model, images, batch_size=128)
    assert len(stats["kl_per_dim"]) == 20
    assert sum(stats["kl_per_dim"]) == pytest.approx(evaluate_elbo(model, images)["test_kl"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("eta", [0.0, 1e-6, 1e-3, 0.0999, 0.1001, 0.5, 3.0, -7.0, 30.0])
def test_continuous_bernoulli_integrates_to_one(eta: float) -> None:
    x = torch.linspace(0, 1, 400_001)[:, None]
    dens = continuous_bernoulli_log_likelihood(x, torch.full_like(x, eta)).exp()
    assert torch.trapezoid(dens, x[:, 0]).item() == pytest.approx(1.0, abs=1e-8)


def test_continuous_bernoulli_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 9, generator=g) * 4
    x = torch.rand(6, 9, generator=g)
    ref = ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(continuous_bernoulli_log_likelihood(x, logits), ref)
    torch.testing.assert_close(log_likelihood("continuous-bernoulli", x, logits), ref)


def test_continuous_bernoulli_normalizer_is_stable_near_one_half_in_float32() -> None:
    eta = torch.linspace(-3, 3, 60001)
    exact = torch.log(eta / torch.tanh(eta / 2))  # float64: good to ~1e-12 except very near 0
    near = eta.abs() < 1e-4
    exact[near] = math.log(2.0) + eta[near] ** 2 / 12
    err = (continuous_bernoulli_log_norm(eta.float()).double() - exact).abs()
    assert err[eta.abs() < 0.5].max().item() < 6e-8  # the series: within one float32 rounding of ~0.7
    assert err.max().item() < 3e-7  # the closed form: a few roundings of values ~1
    # finite gradient at lambda = 1/2 exactly, and the derivative eta / 6 of the series nearby
    e = torch.tensor([0.0, 0.01, 0.2], requires_grad=True)
    continuous_bernoulli_log_norm(e).sum().backward()
    assert torch.isfinite(e.grad).all() and e.grad[0].item() == 0.0
    assert e.grad[1].item() == pytest.approx(0.01 / 6, rel=1e-3)
    # far out, where torch's probability form saturates, the logit form keeps going (|eta| - log tanh ~ log|eta|)
    assert continuous_bernoulli_log_norm(torch.tensor([80.0])).item() == pytest.approx(math.log(80.0), rel=1e-9)


def test_gaussian_with_learned_per_pixel_sigma_is_a_normal_density() -> None:
    model = VAE(model_config("mlp", zdim=2, hidden=[8], image_shape=(2, 3), learn_sigma=True, sigma_init=0.3))
    assert "log_sigma" in model.state_dict()
    torch.testing.assert_close(model.log_sigma.data, torch.full((6,), math.log(0.3)))
    log_sigma = torch.linspace(-2, 0.5, 6)
    logits, x = torch.randn(4, 6), torch.rand(4, 6)
    ref = Normal(torch.sigmoid(logits), log_sigma.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(log_likelihood("gaussian", x, logits, log_sigma=log_sigma), ref)
    plain = VAE(model_config("mlp", zdim=2, hidden=[8], image_shape=(2, 3)))
    assert plain.log_sigma is None and "log_sigma" not in plain.state_dict()


def test_standard_normal_prior_term_of_the_weights() -> None:
    z = torch.randn(3, 4)
    torch.testing.assert_close(standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


# ---------------------------------------------------------------------------------------------- presets


def test_literature_presets() -> None:
    burda = VAE(model_config("burda"))
    assert burda.zdim == 50 and n_params(burda) == 425_284
    assert [m.out_features for m in burda.encoder if isinstance(m, nn.Linear)] == [200, 200, 100]
    assert [m.out_features for m in burda.decoder if isinstance(m, nn.Linear)] == [200, 200, 784]
    assert sum(isinstance(m, nn.Tanh) for m in burda.modules()) == 4
    example = VAE(model_config("pytorch-example"))
    assert example.zdim == 20 and n_params(example) == 652_824  # PyTorch's examples/vae model
    assert sum(isinstance(m, nn.ReLU) for m in example.modules()) == 2
    assert model_config("burda", zdim=10).zdim == 10
