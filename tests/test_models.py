"""Model presets: the blog post's exact architecture and the configurable MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit.config import PRESETS, ConfigError
from vaekit.model import VAE, model_config, n_params


def test_seed_preset_is_the_posts_model() -> None:
    model = VAE(model_config("seed"))
    assert n_params(model) == 439_956
    enc = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
    dec = [m.out_features for m in model.decoder if isinstance(m, nn.Linear)]
    assert enc == [256, 64, 32, 4] and dec == [32, 64, 256, 784]
    kinds = [type(m).__name__ for m in model.decoder]
    # no activation between the decoder's first two layers, and logits out (no Sigmoid)
    assert kinds == ["Linear", "Linear", "ELU", "Linear", "ELU", "Linear"]
    assert [type(m).__name__ for m in model.encoder].count("ELU") == 3


def test_forward_is_a_pure_function_of_the_images_and_the_noise() -> None:
    """The noise is an input: z = mu + sigma * eps, decoded; the same eps gives the same logits."""
    model = VAE(model_config("seed", zdim=3))
    x = torch.rand(5, 784)
    eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    logits, mu, logvar = model(x, eps)
    assert logits.shape == (5, 784) and mu.shape == (5, 3) and logvar.shape == (5, 3)
    torch.testing.assert_close(logits, model.decode(mu + torch.exp(0.5 * logvar) * eps))
    assert torch.equal(model(x, eps)[0], logits)
    assert not torch.equal(model(x, -eps)[0], logits)
    torch.testing.assert_close(model(x, torch.zeros(5, 3))[0], model.decode(mu))  # eps 0: the posterior mean
    torch.testing.assert_close(VAE.reparameterize(mu, logvar, torch.zeros_like(mu)), mu)


def test_mlp_preset_is_configurable() -> None:
    cfg = model_config("mlp", zdim=8, hidden=[100, 50], activation="tanh")
    model = VAE(cfg)
    assert [m.out_features for m in model.encoder if isinstance(m, nn.Linear)] == [100, 50, 16]
    assert [m.out_features for m in model.decoder if isinstance(m, nn.Linear)] == [50, 100, 784]
    assert any(isinstance(m, nn.Tanh) for m in model.decoder)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_its_own_latent_size(preset: str) -> None:
    model = VAE(model_config(preset))
    assert model.config.zdim == PRESETS[preset]["zdim"]
    if model.hierarchical:  # zdim: channels per group; model.zdim: the first group's size, encode's and decode's
        logits, (mu, _) = model.latent_pass(torch.rand(2, 784), torch.zeros(2, model.latent_size)).logits, \
            model.encode(torch.rand(2, 784))
    else:
        assert model.zdim == model.latent_size == PRESETS[preset]["zdim"]
        logits, mu, _ = model(torch.rand(2, 784), torch.zeros(2, model.zdim))
    assert logits.shape == (2, 784) and mu.shape == (2, model.zdim)


@pytest.mark.parametrize("kwargs", [dict(preset="nope"), dict(preset="seed", zdim=0),
                                    dict(preset="mlp", activation="sigmoidish"), dict(preset="seed", hidden=[5])])
def test_bad_model_settings_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        model_config(**kwargs)
