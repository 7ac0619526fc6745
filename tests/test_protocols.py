"""Data protocols (binarization), objectives (beta, warm-up, IWAE), learned sigma and the evaluate output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import compiled
from vaekit.cli import main
from vaekit.cli.train import config_from_args
from vaekit.config import BINARIZE_SEED, ConfigError, TrainConfig
from vaekit.data import load_splits
from vaekit.data.binarize import binarize_batch, binarize_images, binarize_splits, describe, protocol
from vaekit.model import VAE, model_config
from vaekit.objectives import elbo_terms
from vaekit.training.objective import Noise, batch_loss
from vaekit.training.schedule import kl_weight


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=1, batch_size=128, device="cpu", progress=False,
                artifacts=False)
    return TrainConfig(**{**base, **kw})


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- binarization


def test_binarization_draws_bernoulli_pixels_reproducibly() -> None:
    p = torch.tensor([0.0, 1.0, 0.25]).repeat(40_000, 1)
    b = binarize_batch(p, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert b[:, 0].sum() == 0 and b[:, 1].all()
    assert b[:, 2].mean().item() == pytest.approx(0.25, abs=0.01)
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    one, again, other = binarize_images(images, 3), binarize_images(images, 3), binarize_images(images, 4)
    assert one.dtype == np.uint8 and set(np.unique(one)) <= {0, 255} and one.shape == images.shape
    assert np.array_equal(one, again) and not np.array_equal(one, other)


def test_protocols_replace_the_right_splits(tiny_data: Path) -> None:
    splits = load_splits("mnist", tiny_data, progress=False)
    assert binarize_splits(splits, "none", 1) is splits
    dyn = binarize_splits(splits, "dynamic", 1)
    assert dyn.train_images is splits.train_images and set(np.unique(dyn.test_images)) <= {0, 255}
    static = binarize_splits(splits, "static", 1)
    assert set(np.unique(static.train_images)) <= {0, 255}
    assert np.array_equal(static.test_images, dyn.test_images)  # one test copy for both protocols
    with pytest.raises(ConfigError, match="binarize"):
        binarize_splits(splits, "sometimes", 1)
    assert "not a density" in describe(protocol("none", 1, "bernoulli"))
    assert protocol("dynamic", 5, "bernoulli") == {"binarize": "dynamic", "eval_binarize_seed": 5,
                                                   "likelihood": "bernoulli", "density": True}


def test_dynamic_binarization_resumes_bitwise_and_records_its_protocol(tiny_data: Path, tmp_path: Path) -> None:
    kw = dict(binarize="dynamic", objective="iwae", k=3, kl_warmup=2, batch_size=200)
    full = vaekit.train(_cfg(tiny_data, epochs=2, **kw), tmp_path / "full")
    vaekit.train(_cfg(tiny_data, epochs=1, **kw), tmp_path / "split")
    ckpt = load_file(tmp_path / "split" / "checkpoint.safetensors")
    assert "rng.binarize" in ckpt  # the batch binarizer's state travels with the checkpoint
    resumed = vaekit.train(_cfg(tiny_data, epochs=2, **kw), tmp_path / "split", resume=True)
    a, b = load_file(full.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((full.path / "config.json").read_text())["train"]
    assert config["binarize"] == "dynamic" and config["binarize_seed"] == BINARIZE_SEED and config["k"] == 3
    summary = json.loads((full.path / "summary.json").read_text())
    assert summary["protocol"]["binarize"] == "dynamic" and summary["objective"] == "iwae"
    # evaluation reproduces training's number: the same binarized test copy
    result = vaekit.evaluate_run(full.path)
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert result["protocol"]["eval_binarize_seed"] == BINARIZE_SEED


def test_default_loss_is_unchanged_and_beta_and_warmup_weight_the_kl() -> None:
    torch.manual_seed(0)
    model = VAE(model_config("seed"))
    x = torch.randint(0, 256, (16, 784), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    eps = _randn(16, 2, seed=2)
    got = batch_loss(model, x, Noise(eps), TrainConfig())
    xf = x.float() / 255
    logits, mu, logvar = model(xf, eps)
    terms = elbo_terms(logits, xf, mu, logvar)
    assert torch.equal(got, terms.loss.sum())  # the post's loss, bit for bit
    for beta, warmup, progress, weight in [(0.5, 0, 0.0, 0.5), (1.0, 4, 0.0, 0.0), (2.0, 4, 1.0, 0.5),
                                           (1.0, 4, 9.0, 1.0)]:
        assert kl_weight(beta, warmup, progress) == weight
        got = batch_loss(model, x, Noise(eps), TrainConfig(beta=beta, kl_warmup=warmup), weight)
        torch.testing.assert_close(got, (terms.recon + weight * terms.kl).sum())


def test_dynamic_binarization_uses_the_uniforms_it_is_given() -> None:
    """With uniforms the objective sees Bernoulli(pixel) draws: exactly the loss of the binarized batch."""
    torch.manual_seed(0)
    model = VAE(model_config("seed"))
    x = torch.randint(0, 256, (16, 784), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    eps, u = _randn(16, 2, seed=2), torch.rand((16, 784), generator=torch.Generator().manual_seed(3))
    binary = ((u < x.float() / 255).to(torch.uint8) * 255)
    got = batch_loss(model, x, Noise(eps, u), TrainConfig(binarize="dynamic"))
    assert torch.equal(got, batch_loss(model, binary, Noise(eps), TrainConfig()))
    assert not torch.equal(got, batch_loss(model, x, Noise(eps), TrainConfig()))


def test_iwae_with_k1_uses_the_same_draw_as_the_elbo() -> None:
    """IWAE k = 1 is the single-sample ELBO: same reconstruction, Monte Carlo KL in place of the closed form."""
    torch.manual_seed(0)
    model = VAE(model_config("burda", zdim=4))
    x = torch.randint(0, 256, (8, 784), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    xf = x.float() / 255
    eps = _randn(8, 4, seed=3)
    iwae = batch_loss(model, x, Noise(eps[None]), TrainConfig(objective="iwae"))  # (k = 1, batch, zdim)
    mu, logvar = model.encode(xf)
    z = mu + torch.exp(0.5 * logvar) * eps
    normal = torch.distributions.Normal
    mc_kl = (normal(mu, torch.exp(0.5 * logvar)).log_prob(z) - normal(0.0, 1.0).log_prob(z)).sum(-1)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z), xf, reduction="none").sum(-1)
    torch.testing.assert_close(iwae, (recon + mc_kl).sum(), rtol=1e-5, atol=1e-3)
    # more samples tighten the bound: the k = 50 loss is below the k = 1 loss on average
    many = torch.stack([batch_loss(model, x, Noise(_randn(50, 8, 4, seed=s)), TrainConfig(objective="iwae", k=50))
                        for s in range(3)])
    assert many.mean() < iwae


def test_bad_settings_are_one_line_errors(tiny_data: Path, tmp_path: Path, capsys) -> None:
    for kw, needle in [(dict(objective="vi"), "objective"), (dict(k=0), "k must"), (dict(beta=-1.0), "beta"),
                       (dict(kl_warmup=-1), "kl_warmup"), (dict(binarize="half"), "binarize"),
                       (dict(learn_sigma=True), "gaussian"), (dict(likelihood="poisson"), "likelihood")]:
        with pytest.raises(ConfigError, match=needle):
            TrainConfig(**kw).validate()
    base = ["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), "--quiet"]
    for extra in (["--objective", "vi"], ["--k", "0"], ["--binarize", "half"], ["--beta", "-1"],
                  ["--sigma", "learnt"]):
        with pytest.raises(SystemExit) as e:
            main([*base, *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and extra[0] in err[0], err
    assert main([*base, "--learn-sigma"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gaussian" in err[0]


def test_cli_flags_reach_the_config(tiny_data: Path, tmp_path: Path) -> None:
    from vaekit.cli import build_parser

    args = build_parser().parse_args(["train", "--likelihood", "gaussian", "--sigma", "learned", "--objective", "iwae",
                                      "--k", "5", "--beta", "0.5", "--kl-warmup", "3", "--binarize", "static",
                                      "--model", "burda"])
    config, given = config_from_args(args)
    assert config.learn_sigma and config.sigma == 1.0 and "sigma" not in given
    assert (config.objective, config.k, config.beta, config.kl_warmup, config.binarize) == ("iwae", 5, 0.5, 3, "static")
    config.validate()


def test_learned_sigma_trains_saves_and_reloads_from_config_alone(tiny_data: Path, tmp_path: Path) -> None:
    run = vaekit.train(_cfg(tiny_data, likelihood="gaussian", learn_sigma=True, sigma=0.3, model="pytorch-example",
                            zdim=4, lr=1e-2), tmp_path / "run")
    weights = load_file(run.path / "model.safetensors")
    assert weights["log_sigma"].shape == (784,)
    assert not torch.allclose(weights["log_sigma"], torch.full((784,), float(np.log(0.3))))  # it learned
    model = vaekit.load_model(run.path)
    assert torch.equal(model.log_sigma.data, weights["log_sigma"])
    assert json.loads((run.path / "config.json").read_text())["model"]["learn_sigma"] is True
    result = vaekit.evaluate_run(run.path, nll=True, samples=4, save=False)
    assert "learned" in result["protocol"]["likelihood"] and np.isfinite(result["nll"])


def test_evaluate_nll_prints_the_protocol_and_stores_the_result(tiny_data: Path, tmp_path: Path, capsys) -> None:
    vaekit.train(_cfg(tiny_data, binarize="static", likelihood="continuous-bernoulli", model="burda", zdim=5),
                 tmp_path / "run")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--nll", "--samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("nll", "nll_stderr", "bits_per_dim", "nll_samples", "active_units", "kl_per_dim", "protocol"):
        assert key in result, key
    assert result["nll_samples"] == 20 and len(result["kl_per_dim"]) == 5
    assert result["nll_protocol"]["binarize"] == "static" and result["nll_protocol"]["samples"] == 20
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * np.log(2)))
    # the negative ELBO from the same draws is not below the importance-sampled NLL
    assert result["nll_neg_elbo"] >= result["nll"] - 1e-9
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nll"] == result["nll"] and summary["nll_protocol"]["samples"] == 20
    assert summary["test_loss"] == pytest.approx(result["test_loss"], rel=1e-6)  # training's keys are kept
    assert main(["evaluate", str(tmp_path / "run"), "--nll", "--samples", "3", "--binarize", "none",
                 "--no-save"]) == 0
    out = capsys.readouterr().out
    nll_line = next(line for line in out.splitlines() if line.startswith("nll "))
    assert "binarize none" in nll_line and "continuous-bernoulli" in nll_line and "K=3" in nll_line
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["nll_samples"] == 20  # not overwritten


def test_evaluate_compile_flags_reach_the_estimator(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``--compile`` asks the estimator to compile (here it is told it cannot, and says so in one warning),
    ``--no-compile`` and the default for a small estimate do not; the numbers are the eager ones either way.
    That compiled and eager estimates agree is tests/test_likelihood.py's (it compiles for real)."""

    vaekit.train(_cfg(tiny_data), tmp_path / "run")
    monkeypatch.setattr(compiled, "compile_unsupported_reason", lambda device: "no compiler here")
    results, warnings = {}, {}
    for flags in (["--compile"], ["--no-compile"], []):
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "run"), "--nll", "--samples", "8", *flags, "--json",
                     "--no-save"]) == 0
        captured = capsys.readouterr()
        key = " ".join(flags) or "default"
        results[key] = json.loads(captured.out)["nll"]
        warnings[key] = [line for line in captured.err.splitlines() if "no compiler here" in line]
    assert warnings == {"--compile": [warnings["--compile"][0]], "--no-compile": [], "default": []}
    assert "log p(x): no compiler here; estimating without it" in warnings["--compile"][0]
    assert results["--compile"] == results["--no-compile"] == results["default"]
