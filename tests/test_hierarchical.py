"""The hierarchical VAE: its importance-sampled likelihood against log p(x) by quadrature, its KL, training,
resume bit for bit, and the run folder's uses of it (evaluate, figures, report, explorer)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import run as runs
from vaekit.config import ConfigError, ModelConfig, TrainConfig
from vaekit.eval.likelihood import hierarchical_log_px
from vaekit.model import model_config
from vaekit.objectives import bernoulli_log_likelihood, gaussian_kl_between

from .conftest import Killed, kill_at_save_point


def tiny_hierarchy(seed: int = 0) -> vaekit.VAE:
    """2x2 binary images, two latent groups of one dimension each at the 1x1 level, float64, with every weight
    (the priors' too, which start at zero) drawn at random so p(z2|z1) and the posterior are far from trivial.
    The posteriors are made wider than the priors (log-variance about 1), so the importance weights have a
    finite variance and the estimate's standard error means what it says."""
    cfg = ModelConfig(preset="hvae", architecture="hierarchical", zdim=1, image_shape=(2, 2), encoder_hidden=[3, 3],
                      decoder_hidden=[3, 3], latent_groups=[2, 0], activation="tanh")
    torch.manual_seed(seed)
    model = vaekit.VAE(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for step in model.decoder.steps:
            step.posterior.weight.mul_(0.3)
            step.posterior.bias[1:] = 1.0  # (mean, log-variance) of one channel
    return model.eval()


def exact_log_px(model: vaekit.VAE, x: torch.Tensor, nodes: int = 160) -> torch.Tensor:
    """log p(x) = log E_{z1 ~ N(0,1), e2 ~ N(0,1)} p(x | z1, z2 = m(z1) + s(z1) e2) by Gauss-Hermite quadrature.

    Independent of the importance sampler: it runs the decoder in prior mode (no encoder, no posterior),
    over a product grid of probabilists' Hermite nodes, and sums in float64.
    """
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()  # the standard normal's weights (they sum to sqrt(2 pi) up to rounding)
    z1, e2 = (torch.tensor(a) for a in zip(*itertools.product(t, t), strict=True))
    log_weight = torch.tensor([math.log(a) + math.log(b) for a, b in itertools.product(w, w)], dtype=torch.float64)
    with torch.no_grad():
        logits = model.decoder(len(z1), None, torch.stack([z1, e2], dim=1), z1[:, None]).logits
    out = []
    for row in x:
        log_lik = bernoulli_log_likelihood(row.expand_as(logits), logits)
        out.append(torch.logsumexp(log_lik + log_weight, dim=0))
    return torch.stack(out)


ALL_IMAGES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)


def test_quadrature_is_a_distribution_over_the_16_images() -> None:
    model = tiny_hierarchy()
    log_p = exact_log_px(model, ALL_IMAGES)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    torch.testing.assert_close(exact_log_px(model, ALL_IMAGES, 120), log_p, rtol=0, atol=1e-5)  # converged


def test_importance_sampled_nll_converges_to_the_exact_log_likelihood() -> None:
    model = tiny_hierarchy()
    x = ALL_IMAGES[[0, 5, 9, 15]]
    exact = exact_log_px(model, x)
    est = hierarchical_log_px(model, x, samples=40_000, rows=40_000)
    err = (est.log_px - exact).abs()
    assert (err < 4 * est.stderr + 1e-3).all(), (est.log_px, exact, est.stderr)
    assert (est.stderr < 0.05).all()
    assert (est.elbo < exact).all()  # the ELBO (mean log weight) lies below log p(x)
    few = hierarchical_log_px(model, x, samples=3, rows=40_000)
    assert (few.log_px.mean() < exact.mean() + 0.05)


def test_the_groups_analytic_kl_is_the_expected_log_ratio() -> None:
    model = tiny_hierarchy(1)
    x = ALL_IMAGES[[3, 12]]
    with torch.no_grad():
        p = model.latent_pass(x, torch.randn(30_000, 2, 2, dtype=torch.float64))
    ratio = p.log_q - p.log_p
    se = ratio.std(dim=0) / math.sqrt(ratio.shape[0])
    assert ((ratio.mean(0) - p.kl.mean(0)).abs() < 5 * se).all()


def test_kl_between_gaussians_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mq, lq, mp, lp = (torch.randn(50, dtype=torch.float64) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mq, (0.5 * lq).exp()),
                                            torch.distributions.Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(gaussian_kl_between(mq, lq, mp, lp), ref)


def test_preset_shapes_and_refusals() -> None:
    for shape in [(28, 28), (32, 32, 3), (20, 20)]:
        model = vaekit.VAE(model_config("hvae", image_shape=shape))
        x = torch.rand(2, math.prod(shape))
        p = model.latent_pass(x, torch.randn(3, 2, model.latent_size))
        assert p.logits.shape == (3, 2, math.prod(shape)) and p.kl.shape == (3, 2)
        mu, _ = model.encode(x)
        assert mu.shape == (2, model.zdim) and model.decode(mu).shape == x.shape
    with pytest.raises(ConfigError, match="latent_groups"):
        ModelConfig(preset="hvae", architecture="hierarchical", latent_groups=[0, 1], encoder_hidden=[4, 4],
                    decoder_hidden=[4, 4]).validate()
    with pytest.raises(TypeError, match="latent_pass"):
        vaekit.VAE(model_config("hvae"))(torch.rand(1, 784), torch.randn(1, 10))


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=200, device="cpu", progress=False,
                artifacts=False, model="hvae", hidden=[8, 8, 8, 8], zdim=2, ema=0.9, grad_clip=5e4,
                skip_threshold=1e7)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized-logistic", "logistic-mixture"])
def test_trains_with_each_likelihood_and_evaluates(tiny_data: Path, tmp_path: Path, likelihood: str) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=1, likelihood=likelihood), tmp_path / "r")
    assert math.isfinite(run.summary["test_loss"])
    again = vaekit.evaluate_run(run.path)
    assert again["test_loss"] == pytest.approx(run.summary["test_loss"], rel=1e-6)
    model = vaekit.load_model(run.path)
    assert model.hierarchical and model.latent_size > model.zdim
    params = model.decode(torch.zeros(1, model.zdim))  # the head's parameters for every pixel
    assert params.shape == (1, 28 * 28 * model.params_per_pixel)
    assert model.params_per_pixel == {"logistic-mixture": 30, "discretized-logistic": 2}.get(likelihood, 1)


def test_hierarchy_resumes_bit_for_bit(tiny_data: Path, tmp_path: Path) -> None:
    full = vaekit.train(_cfg(tiny_data), tmp_path / "full")
    with pytest.raises(Killed):
        vaekit.train(_cfg(tiny_data, checkpoint_every=4), tmp_path / "part", callbacks=[kill_at_save_point(1, 1)])
    resumed = vaekit.train(_cfg(tiny_data), tmp_path / "part", resume=True)
    a, b = load_file(full.path / runs.WEIGHTS), load_file(resumed.path / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["test_loss"] for r in resumed.metrics] == [r["test_loss"] for r in full.metrics]
    assert full.summary["skipped_updates"] == 0  # it trained: every update applied
    assert full.metrics[1]["train_loss"] < full.metrics[0]["train_loss"] - 10


def test_iwae_objective_and_nll_on_a_run(tiny_data: Path, tmp_path: Path) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=1, objective="iwae", k=3, binarize="dynamic"), tmp_path / "r")
    out = vaekit.evaluate_run(run.path, nll=True, samples=4, save=False)
    assert math.isfinite(out["nll"]) and out["nll"] <= out["nll_neg_elbo"] + 1e-6


def test_figures_report_and_explorer_of_a_hierarchy(tiny_data: Path, tmp_path: Path, capsys) -> None:
    import json as _json
    import threading
    import urllib.request

    from vaekit.artifacts.explorer import build_explorer, make_server, runs_in_page, torch_decoder
    from vaekit.cli import main

    run = vaekit.train(_cfg(tiny_data, epochs=1, artifacts=True, grid_size=3), tmp_path / "r")
    for name in ("latent_grid.png", "samples.png", "reconstructions.png", "explorer.html", "report.html"):
        assert (run.path / name).stat().st_size > 0, name
    assert "hierarchical" in (run.path / "report.html").read_text()
    page = (run.path / "explorer.html").read_text()
    assert '"decodeUrl":"/decode"' in page and "--serve" in page
    assert main(["explore", str(run.path), "--data-dir", str(tiny_data)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit explore:")]
    assert len(said) == 1 and "--serve" in said[0]  # one line says where the decoder runs
    model = vaekit.load_model(run.path)
    assert not runs_in_page(model.config)
    server = make_server(build_explorer(run, _Splits(tiny_data)).encode(), 0, decoder=torch_decoder(model))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        z = [0.5] * model.zdim
        req = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}/decode",
                                     data=_json.dumps(z).encode(), method="POST")
        got = torch.tensor(_json.loads(urllib.request.urlopen(req, timeout=10).read()))
    finally:
        server.shutdown()
        server.server_close()
    with torch.no_grad():
        want = torch.sigmoid(model.decode(torch.tensor([z])))[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


class _Splits:
    """The test split of the tiny data, as the explorer reads it."""

    def __init__(self, data: Path) -> None:
        from vaekit.data import load_splits

        s = load_splits("mnist", data)
        self.test_images, self.test_labels, self.name = s.test_images[:50], s.test_labels[:50], "mnist"
