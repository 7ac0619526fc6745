"""Convolutional presets and the discretized logistic likelihood, against independent references."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import vaekit
from vaekit.config import ConfigError, ModelConfig, TrainConfig
from vaekit.model import VAE, model_config, n_params
from vaekit.model.conv import Residual, conv_decoder
from vaekit.objectives import LOG_SCALE_MIN, discretized_logistic_log_likelihood, log_likelihood
from vaekit.run import save_weights
from vaekit.run.folder import FORMAT_VERSION


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (64, 64, 3), (20, 24, 3), (17, 9)])
@pytest.mark.parametrize("preset", ["conv", "pytorch-vae-vanilla"])
def test_conv_models_fit_any_size_and_round_trip_shapes(shape: tuple[int, ...], preset: str) -> None:
    model = VAE(model_config(preset, image_shape=shape))
    d = math.prod(shape)
    x = torch.rand(3, d)
    logits, mu, logvar = model(x, torch.randn(3, model.zdim))
    assert logits.shape == (3, d) and mu.shape == logvar.shape == (3, model.zdim)
    assert model.decode(torch.randn(4, 3, model.zdim)).shape == (4, 3, d)  # k draws of a batch


@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (33, 33), (64, 48), (28, 28, 3), (32, 32, 3), (33, 33, 3),
                                   (64, 48, 3), (1, 1), (5, 3, 3)])
@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
def test_every_decoder_level_lands_on_the_encoder_size(shape: tuple[int, ...], upsample: str) -> None:
    """Going up, each level's image has exactly the size the encoder's level had going down (28: 4, 7, 14, 28)."""
    cfg = model_config("conv", image_shape=shape)
    cfg.upsample = upsample
    model = VAE(cfg)
    down, x = [], model.encoder[0](torch.rand(2, math.prod(shape)))
    for m in model.encoder[1:]:
        if isinstance(m, nn.Conv2d):
            down.append(tuple(x.shape[-2:]))
        x = m(x)
    up, y = [], model.decoder[:2](torch.randn(2, model.zdim))
    for m in model.decoder[2:-1]:
        y = m(y)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            up.append(tuple(y.shape[-2:]))
    assert up[:-1] == down[::-1] and up[-1] == tuple(shape[:2])
    assert y.shape[1] == (shape[2] if len(shape) == 3 else 1)


def test_conv_preset_has_no_transposed_convolutions_and_vanilla_keeps_them() -> None:
    """Nearest upsampling + 3x3 conv in ``conv`` (no checkerboard); PyTorch-VAE's transposed convs in vanilla."""
    conv = VAE(model_config("conv", image_shape=(32, 32, 3)))
    assert conv.config.upsample == "nearest"
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in conv.decoder.modules())
    assert sum(isinstance(m, nn.Upsample) for m in conv.decoder) == 3
    vanilla = VAE(model_config("pytorch-vae-vanilla", image_shape=(64, 64, 3)))
    assert vanilla.config.upsample == "transposed"
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in vanilla.decoder) == 5
    assert not any(isinstance(m, nn.Upsample) for m in vanilla.decoder)
    assert n_params(conv) == 394_339  # 3x3 convs as before: the parameter count docs/models.md gives


def test_a_constant_image_decodes_without_a_checkerboard() -> None:
    """A constant last-level image with all-ones kernels: the nearest decoder's output is flat inside (the
    border sees zero padding); the transposed one alternates from pixel to pixel, the checkerboard."""
    flat = {}
    for upsample in ("nearest", "transposed"):
        cfg = model_config("conv", zdim=2, image_shape=(32, 32))
        cfg.upsample = upsample
        model = VAE(cfg)
        with torch.no_grad():
            for m in model.decoder:
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    m.weight.fill_(0.0 if isinstance(m, nn.Linear) else 1e-2)
                    m.bias.fill_(1.0 if isinstance(m, nn.Linear) else 0.0)
            inner = model.decode(torch.zeros(1, 2)).reshape(32, 32)[8:24, 8:24]
        flat[upsample] = float(inner.std() / inner.mean())
    assert flat["nearest"] < 1e-6 and flat["transposed"] > 0.1


def test_the_output_channels_are_a_parameter_of_the_decoder() -> None:
    dec = conv_decoder((28, 28, 1), [32, 64, 128], 8, nn.LeakyReLU, "nearest", out_channels=3)
    assert dec(torch.randn(2, 8)).shape == (2, 28 * 28 * 3)


def test_a_run_stored_with_the_transposed_layout_reloads_with_identical_outputs(tmp_path) -> None:
    """A config.json written before ``upsample`` existed (no such key) rebuilds transposed convolutions, and
    the stored weights give exactly the outputs of the model that was saved."""
    torch.manual_seed(3)
    shape = (28, 28)
    old = model_config("conv", image_shape=shape)
    old.upsample = "transposed"
    saved = VAE(old).eval()
    model_section = {k: v for k, v in dataclasses.asdict(old).items() if k != "upsample"}
    model_section["image_shape"] = list(shape)
    train = dataclasses.asdict(TrainConfig(model="conv"))
    (tmp_path / "config.json").write_text(json.dumps({"format": FORMAT_VERSION, "model": model_section,
                                                      "train": train, "data": {}}))
    save_weights(tmp_path, saved)
    loaded = vaekit.load_model(tmp_path)
    assert loaded.config.upsample == "transposed"
    assert [type(m) for m in loaded.decoder] == [type(m) for m in saved.decoder]
    x, z = torch.rand(5, 784), torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), saved.decode(z))
        assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), saved.encode(x), strict=True))


def test_an_unknown_upsampling_is_refused() -> None:
    cfg = model_config("conv", image_shape=(28, 28))
    cfg.upsample = "bilinear"
    with pytest.raises(ConfigError, match="upsample"):
        cfg.validate()


def test_conv_layout_is_channels_last_like_the_data() -> None:
    """A decoder whose output is a per-channel constant puts it in the channel slot of every pixel."""
    model = VAE(model_config("conv", image_shape=(8, 8, 3)))
    final = model.decoder[-2]
    assert isinstance(final, torch.nn.Conv2d)
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    out = model.decode(torch.zeros(1, model.zdim)).reshape(8, 8, 3)
    assert torch.equal(out, torch.tensor([1.0, 2.0, 3.0]).expand(8, 8, 3))


def test_conv_preset_sizes_and_width() -> None:
    assert model_config("conv", image_shape=(28, 28)).encoder_hidden == [32, 64, 128]
    assert model_config("conv", image_shape=(64, 64, 3)).encoder_hidden == [32, 64, 128, 256]
    assert model_config("conv", image_shape=(32, 32, 3), width=0.5).encoder_hidden == [16, 32, 64]
    assert model_config("conv", image_shape=(32, 32, 3)).zdim == 32
    vanilla = VAE(model_config("pytorch-vae-vanilla", image_shape=(64, 64, 3)))
    assert vanilla.zdim == 128 and n_params(vanilla) == 3_934_627  # the figure docs/models.md gives


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (33, 17, 3)])
def test_residual_blocks_follow_every_level_and_start_as_the_identity(shape: tuple[int, ...]) -> None:
    """N blocks after each level of the encoder and of the decoder, at that level's size and channels; each
    adds nothing at the start, so the model computes what the same levels compute without them."""
    torch.manual_seed(0)
    plain = VAE(model_config("conv", image_shape=shape)).eval()
    deep = VAE(model_config("conv", image_shape=shape, res_blocks=2)).eval()
    levels = len(plain.config.encoder_hidden)
    for body in (deep.encoder, deep.decoder):
        assert sum(isinstance(m, Residual) for m in body) == 2 * levels
    ours = {k: v for k, v in deep.state_dict().items() if ".body." not in k}
    # The same level weights in both: the blocks sit between the level modules, shifting their indices.
    plain_keys = [k for k in plain.state_dict()]
    assert len(ours) == len(plain_keys)
    plain.load_state_dict(dict(zip(plain_keys, ours.values(), strict=True)))
    x, z = torch.rand(3, math.prod(shape)), torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(deep.decode(z), plain.decode(z))
        torch.testing.assert_close(deep.encode(x)[0], plain.encode(x)[0])
    block = next(m for m in deep.decoder if isinstance(m, Residual))
    assert block.body[0].in_channels == block.body[-1].out_channels


def test_residual_blocks_are_for_conv_models_and_old_configs_load_without_them() -> None:
    with pytest.raises(ConfigError, match="res_blocks must be one of 0, 1, 2, 3, 4 for a conv model, 0 for any"):
        model_config("mlp", res_blocks=1)
    with pytest.raises(ConfigError, match="res_blocks"):
        model_config("conv", image_shape=(28, 28), res_blocks=5)
    with pytest.raises(ConfigError, match="res_blocks"):
        TrainConfig(res_blocks=True).validate()
    stored = dataclasses.asdict(model_config("conv", image_shape=(28, 28)))
    del stored["res_blocks"]
    assert ModelConfig.from_dict(stored).res_blocks == 0


def test_conv_evaluation_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = VAE(model_config("conv", image_shape=(16, 16, 3))).eval()
    x = torch.rand(6, 16 * 16 * 3)
    mu_all, _ = model.encode(x)
    mu_one, _ = model.encode(x[2:3])
    torch.testing.assert_close(mu_all[2:3], mu_one)


def _reference(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Straight from the definition in 50-digit arithmetic (mpmath): logistic CDF differences over each level's
    bin, the tails for the end levels; no cancellation to worry about at that precision."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    h = mpmath.mpf(1) / 510
    rows = []
    for xr, mr in zip(x.double().tolist(), mean.double().tolist(), strict=True):
        total = mpmath.mpf(0)
        for xv, mv, ls in zip(xr, mr, log_scale.double().tolist(), strict=True):
            xv, mv, s = mpmath.mpf(xv), mpmath.mpf(mv), mpmath.exp(mpmath.mpf(ls))

            def cdf(v: object, mv: object = mv, s: object = s) -> object:
                return 1 / (1 + mpmath.exp(-(v - mv) / s))

            upper = 1 if xv > 1 - h else cdf(xv + h)
            lower = 0 if xv < h else cdf(xv - h)
            total += mpmath.log(upper - lower)
        rows.append(float(total))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("scale", [0.5, 0.05, 0.01])
def test_discretized_logistic_sums_to_one_over_the_256_levels(scale: float) -> None:
    levels = (torch.arange(256, dtype=torch.float64) / 255)[:, None].expand(256, 5)
    mean = torch.tensor([0.0, 0.2, 0.5, 0.93, 1.0], dtype=torch.float64)
    log_scale = torch.full((5,), math.log(scale), dtype=torch.float64)
    per_level = torch.stack([discretized_logistic_log_likelihood(levels[:, j:j + 1], mean[j:j + 1],
                                                                 log_scale[j:j + 1]) for j in range(5)], dim=1)
    torch.testing.assert_close(torch.logsumexp(per_level, dim=0), torch.zeros(5, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_discretized_logistic_matches_a_float64_reference_in_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 48), generator=gen).float() / 255
    mean = torch.rand(8, 48, generator=gen)
    log_scale = torch.empty(48).uniform_(math.log(0.01), math.log(0.3), generator=gen)
    got = discretized_logistic_log_likelihood(x, mean, log_scale)
    torch.testing.assert_close(got.double(), _reference(x, mean, log_scale), rtol=1e-6, atol=1e-3)


def test_discretized_logistic_stays_finite_with_tiny_scales() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0, 100 / 255]])
    log_scale = torch.full((4,), math.log(1e-6), requires_grad=True)
    mean = torch.tensor([[0.9, 0.1, 0.0, 0.4]], requires_grad=True)
    lp = discretized_logistic_log_likelihood(x, mean, log_scale)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(log_scale.grad).all() and torch.isfinite(mean.grad).all()


def test_the_discretized_logistic_log_scale_is_floored_where_float32_exp_would_overflow() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0, 100 / 255]])
    mean = torch.tensor([[0.9, 0.1, 0.0, 0.4]])

    def at(log_scale: float) -> torch.Tensor:
        return discretized_logistic_log_likelihood(x, mean, torch.full((4,), log_scale))

    floor = at(LOG_SCALE_MIN)
    for below in (-20.0, -88.5, -100.0, -1e4):
        assert torch.equal(at(below), floor)
    assert torch.isfinite(floor).all() and not torch.equal(at(LOG_SCALE_MIN + 0.1), floor)  # above: unchanged
    log_scale = torch.full((4,), -100.0, requires_grad=True)
    m = mean.clone().requires_grad_(True)
    discretized_logistic_log_likelihood(x, m, log_scale).sum().backward()
    assert torch.isfinite(m.grad).all() and torch.equal(log_scale.grad, torch.zeros(4))


@pytest.mark.parametrize("likelihood", ["gaussian", "continuous-bernoulli", "discretized-logistic", "bernoulli"])
def test_every_likelihood_scores_colour_conv_output(likelihood: str) -> None:
    learn = likelihood in ("gaussian", "discretized-logistic")
    model = VAE(model_config("conv", image_shape=(12, 12, 3), learn_sigma=learn, sigma_init=0.1))
    x = torch.randint(0, 256, (4, 12 * 12 * 3)).float() / 255
    logits, _, _ = model(x, torch.randn(4, model.zdim))
    lp = log_likelihood(likelihood, x, logits, 1.0, model.log_sigma)
    assert lp.shape == (4,) and torch.isfinite(lp).all()


def test_res_blocks_flag_trains_reloads_and_refuses_what_it_cannot_build(tmp_path, capsys) -> None:
    """--res-blocks N reaches the model and its config.json, the run reloads with its blocks, and a model that has
    no levels for them, or an N outside RES_BLOCKS, is one line and exit code 2."""
    import numpy as np

    from vaekit.cli import main

    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    flags = ["train", "--data", str(data), "--epochs", "1", "--device", "cpu", "--no-artifacts", "--quiet"]
    assert main([*flags, "--res-blocks", "2", "--out", str(tmp_path / "run")]) == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["model"]["res_blocks"] == 2 and stored["train"]["res_blocks"] == 2
    model = vaekit.load_model(tmp_path / "run")
    assert sum(isinstance(m, Residual) for m in model.decoder) == 2 * len(model.config.encoder_hidden)
    capsys.readouterr()
    assert main([*flags, "--model", "mlp", "--res-blocks", "1", "--out", str(tmp_path / "mlp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "res_blocks must be one of 0, 1, 2, 3, 4 for a conv model" in err
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--res-blocks", "5", "--out", str(tmp_path / "five")])
    assert exit_info.value.code == 2
