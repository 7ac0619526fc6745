"""The hand-written training step: bit for bit the autograd step wherever it is used, and used only there."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import torch

import vaekit
from tests.conftest import make_digits
from vaekit import VAE, TrainConfig, model_config
from vaekit.objectives import bernoulli_cross_entropy, gaussian_kl
from vaekit.training import precision
from vaekit.training.fused import FusedLoss, bernoulli_backward, gaussian_kl_backward
from vaekit.training.objective import Noise, batch_loss
from vaekit.training.plan import choose_plan

CPU = torch.device("cpu")


def _model(activation: str, zdim: int) -> VAE:
    torch.manual_seed(zdim)
    if activation == "elu" and zdim == 2:
        return VAE(model_config("seed"))  # the post's model, with its decoder's first layer unactivated
    return VAE(model_config("mlp", hidden=[48, 16], activation=activation, zdim=zdim, image_shape=(12, 12)))


def applies(model: VAE, config: TrainConfig, world_size: int = 1) -> bool:
    """Whether the run's plan computes the gradients by hand."""
    return choose_plan(config, model, CPU, world_size).gradients == "hand-written"


def _autograd(model: VAE, x: torch.Tensor, noise: Noise, config: TrainConfig, weight: float):
    for p in model.parameters():
        p.grad = None
    loss = batch_loss(model, x, noise, config, weight)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _by_hand(model: VAE, x: torch.Tensor, noise: Noise, weight: float):
    for p in model.parameters():
        p.grad = None
    loss = FusedLoss(model)(x, noise, weight)
    return loss, [p.grad for p in model.parameters()]


CASES = list(itertools.product(["elu", "relu", "tanh", "gelu", "silu", "leaky_relu"], [2, 5]))


@pytest.mark.parametrize(("activation", "zdim"), CASES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_loss_and_gradients_are_bit_identical_to_autograd(activation: str, zdim: int, dynamic: bool) -> None:
    model = _model(activation, zdim)
    config = TrainConfig(binarize="dynamic" if dynamic else "none")
    assert applies(model, config, world_size=1)
    gen = torch.Generator().manual_seed(7)
    d = model.config.input_dim
    for rows, weight in [(128, 1.0), (37, 0.37), (1, 2.5), (64, 0.0)]:  # a last short batch; KL warm-up weights
        x = torch.randint(0, 256, (rows, d), dtype=torch.uint8, generator=gen)
        noise = Noise(torch.randn(rows, zdim, generator=gen), torch.rand(rows, d, generator=gen) if dynamic else None)
        ref_loss, ref_grads = _autograd(model, x, noise, config, weight)
        loss, grads = _by_hand(model, x, noise, weight)
        assert torch.equal(loss, ref_loss), (rows, weight, loss.item(), ref_loss.item())
        for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
            assert a.shape == b.shape and torch.equal(a, b), (name, rows, weight, (a - b).abs().max().item())


def test_non_finite_values_come_through_as_autograd_gives_them() -> None:
    model = _model("elu", 2)
    with torch.no_grad():
        model.decoder[-1].weight[3, 5] = float("inf")
    x = torch.full((4, 784), 200, dtype=torch.uint8)
    noise = Noise(torch.zeros(4, 2))
    ref_loss, ref_grads = _autograd(model, x, noise, TrainConfig(), 1.0)
    loss, grads = _by_hand(model, x, noise, 1.0)
    assert not torch.isfinite(ref_loss) and torch.equal(loss, ref_loss)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("change", [
    dict(objective="iwae", k=3), dict(k=2), dict(likelihood="gaussian"), dict(likelihood="continuous-bernoulli"),
    dict(compile=True), dict(detect_anomaly=True), dict(fused_step=False),
])
def test_everything_else_goes_through_autograd(change: dict) -> None:
    model = VAE(model_config("seed"))
    assert applies(model, TrainConfig(), world_size=1)
    assert not applies(model, TrainConfig(**change), world_size=1)


def test_the_precision_trained_in_decides_not_the_one_asked_for(monkeypatch) -> None:
    """bf16 asked for on a CPU without it trains in fp32 (with a warning): the hand-written step applies."""
    model = VAE(model_config("seed"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert applies(model, TrainConfig(precision="bf16"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert not applies(model, TrainConfig(precision="bf16"))


def test_other_models_and_torchrun_go_through_autograd() -> None:
    assert not applies(VAE(model_config("seed")), TrainConfig(), world_size=2)
    assert not applies(VAE(model_config("conv", image_shape=(16, 16))), TrainConfig(), world_size=1)
    learned = VAE(model_config("seed", learn_sigma=True))
    assert not applies(learned, TrainConfig(likelihood="gaussian", learn_sigma=True), world_size=1)


def _weights_sha(run: vaekit.Run) -> str:
    return hashlib.sha256((Path(run.path) / "model.safetensors").read_bytes()).hexdigest()


def test_a_run_trains_to_the_same_weights_either_way(tmp_path: Path) -> None:
    images, labels = make_digits(300, seed=3)
    shas, losses = [], []
    for fused in (True, False):
        config = TrainConfig(epochs=2, batch_size=64, fused_step=fused, binarize="dynamic", kl_warmup=2,
                             progress=False, artifacts=False)
        run = vaekit.train(config, tmp_path / f"fused-{fused}", data=(images, labels))
        shas.append(_weights_sha(run))
        losses.append([row["train_loss"] for row in vaekit.run.read_metrics(run.path)])
    assert shas[0] == shas[1] and losses[0] == losses[1]


def test_the_written_out_gradients_are_those_of_the_objectives_definitions() -> None:
    """The hand-written backward of the Bernoulli term and of the KL, in float64, against autograd on the one
    definition of each in :mod:`vaekit.objectives` (the step above is checked bit for bit in float32)."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(9, 30, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(9, 30, generator=gen, dtype=torch.float64)
    (ref,) = torch.autograd.grad(bernoulli_cross_entropy(x, logits).sum(), logits)
    torch.testing.assert_close(bernoulli_backward(logits.detach(), x), ref, rtol=1e-12, atol=1e-12)
    mu = torch.randn(9, 4, generator=gen, dtype=torch.float64).requires_grad_()
    logvar = torch.randn(9, 4, generator=gen, dtype=torch.float64).requires_grad_()
    for weight in (1.0, 0.37, torch.tensor(2.5, dtype=torch.float64)):
        refs = torch.autograd.grad((weight * gaussian_kl(mu, logvar)).sum(), (mu, logvar))
        for got, want in zip(gaussian_kl_backward(mu.detach(), logvar.detach(), weight), refs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
