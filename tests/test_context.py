"""The causal context of the 8-bit heads (--context): causality, an exact normalized likelihood, pixel-by-pixel
images that agree with the parallel pass, and a context run through training, evaluation, resuming, the
figures and the explorer; the combinations it has no meaning for are refused in one line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit import run as runs
from vaekit.artifacts.explorer import runs_in_page
from vaekit.cli import main
from vaekit.config import CONTEXTS, RECIPES, ConfigError, ModelConfig, TrainConfig, recipe_config
from vaekit.heads import head_mean
from vaekit.model import VAE, model_config
from vaekit.model.context import causal_mask


def _model(shape: tuple[int, ...], head: str = "logistic-mixture", context: int = 2, preset: str = "conv",
           seed: int = 0) -> VAE:
    """A small model whose context network's output layer is random (it starts at zero, which would hide it)."""
    torch.manual_seed(seed)
    kw = dict(hidden=[8, 8]) if preset == "conv" else dict(hidden=[16])
    model = VAE(model_config(preset, zdim=3, image_shape=shape, head=head, context=context,
                             mixtures=2 if head == "logistic-mixture" else 0, **kw)).double()
    with torch.no_grad():
        model.context.out.weight.normal_(0, 0.3)
    return model.eval()


def _image(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, dim), generator=g).double() / 255


def test_the_mask_sees_only_earlier_pixels() -> None:
    assert causal_mask(1)[0, 0].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert causal_mask(2)[0, 0].sum() == 12


@pytest.mark.parametrize("head", ["logistic-mixture", "discretized-logistic"])
def test_a_pixel_changes_no_parameter_of_itself_or_earlier_pixels(head: str) -> None:
    h, w, c = 5, 6, 3
    model = _model((h, w, c), head)
    params = model.decode(torch.randn(1, model.zdim, dtype=torch.float64))
    x = _image(1, h * w * c, 1)
    base = model.head_params(x, params).reshape(h * w, -1)
    for i in (0, 7, w * 2 + 3, h * w - 1):
        changed = x.reshape(h * w, c).clone()
        changed[i] = 1 - changed[i]  # every channel of pixel i
        after = model.head_params(changed.reshape(1, -1), params).reshape(h * w, -1)
        assert torch.equal(after[: i + 1], base[: i + 1])  # its own channels only through the head's coupling
        if i < h * w - 1:
            assert not torch.equal(after[i + 1 :], base[i + 1 :])  # and it is read by the pixel after it


def test_the_window_is_the_radius_around_the_pixel() -> None:
    h, w, r = 7, 7, 1
    model = _model((h, w), "discretized-logistic", context=r, preset="mlp")
    params = model.decode(torch.randn(1, model.zdim, dtype=torch.float64))
    x = _image(1, h * w, 2)
    base = model.head_params(x, params).reshape(h, w, -1)
    changed = x.reshape(h, w).clone()
    changed[2, 3] = 1 - changed[2, 3]
    moved = (model.head_params(changed.reshape(1, -1), params).reshape(h, w, -1) != base).any(-1)
    assert moved.nonzero().tolist() == [[2, 4], [3, 2], [3, 3], [3, 4]]


@pytest.mark.parametrize("shape", [(1, 2), (2, 1)])
def test_the_likelihood_sums_to_one_over_every_image(shape: tuple[int, int]) -> None:
    """Two grey pixels, the second reading the first: all 256^2 images' probabilities sum to 1."""
    model = _model(shape, "discretized-logistic", context=1, preset="mlp")
    params = model.decode(torch.randn(1, model.zdim, dtype=torch.float64))
    levels = torch.arange(256, dtype=torch.float64) / 255
    every = torch.cartesian_prod(levels, levels)
    with torch.no_grad():
        log_p = model.log_px_z("discretized-logistic", every, params.expand(len(every), -1))
        plain = VAE(dataclasses.replace(model.config, context=0)).double()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("context.")})
        assert not torch.allclose(log_p, plain.log_px_z("discretized-logistic", every, params.expand(len(every), -1)))
    assert math.isclose(torch.logsumexp(log_p, 0).exp().item(), 1.0, abs_tol=1e-9)


def test_k_draws_read_one_image_as_k_copies_do() -> None:
    model = _model((4, 4, 3))
    params = model.decode(torch.randn(5, 2, model.zdim, dtype=torch.float64))  # 5 draws of 2 images
    x = _image(2, 48, 3)
    broadcast = model.log_px_z("logistic-mixture", x, params)
    copies = model.log_px_z("logistic-mixture", x.expand(5, 2, 48), params)
    assert broadcast.shape == (5, 2) and torch.allclose(broadcast, copies)


@pytest.mark.parametrize("head", ["logistic-mixture", "discretized-logistic"])
def test_pixel_by_pixel_images_agree_with_the_parallel_pass(head: str) -> None:
    h, w, c = 4, 5, 3
    model = _model((h, w, c), head)
    params = model.decode(torch.randn(3, model.zdim, dtype=torch.float64))
    seen: list[torch.Tensor] = []
    out = model.context.generate(params, lambda p: (seen.append(p), torch.rand(p.shape[0], c, dtype=p.dtype))[1])
    parallel = model.head_params(out, params).reshape(3, h * w, -1)
    assert torch.allclose(torch.stack(seen, 1), parallel)
    samples = model.sample_images(params, torch.Generator().manual_seed(4))
    again = model.sample_images(params, torch.Generator().manual_seed(4))
    assert torch.equal(samples, again) and not torch.equal(samples, model.sample_images(params))
    assert torch.equal(torch.round(samples * 255) / 255, samples)
    assert torch.isfinite(model.log_px_z(head, samples, params)).all()
    mean = model.mean_image(params)
    assert mean.shape == samples.shape and mean.min() >= 0 and mean.max() <= 1


def test_bad_combinations_are_refused_in_one_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="8-bit"):
        TrainConfig(likelihood="bernoulli", context=1).validate()
    with pytest.raises(ConfigError, match="one of"):
        TrainConfig(likelihood="logistic-mixture", context=9).validate()
    with pytest.raises(ConfigError, match="hierarchical"):
        TrainConfig(likelihood="logistic-mixture", model="hvae", context=1).validate()
    with pytest.raises(ConfigError, match="hierarchical"):
        model_config("hvae", image_shape=(8, 8), head="logistic-mixture", mixtures=2, context=1)
    with pytest.raises(ConfigError, match="8-bit"):
        ModelConfig(context=1).validate()
    common = ["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--out", str(tmp_path / "x"), "--quiet"]
    for flags in (["--likelihood", "gaussian", "--context", "1"],
                  ["--likelihood", "logistic-mixture", "--model", "hvae", "--context", "1"]):
        assert main([*common, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "drop --context" in err[0]
    with pytest.raises(SystemExit) as stop:  # argparse's own one line for a value not among the choices
        main([*common, "--likelihood", "logistic-mixture", "--context", str(max(CONTEXTS) + 1)])
    assert stop.value.code == 2 and "--context" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _train(tiny_data: Path, out: Path, **kw) -> vaekit.Run:
    base = dict(dataset="mnist", data_dir=str(tiny_data), epochs=2, batch_size=128, device="cpu", progress=False,
                artifacts=False, model="mlp", hidden=[16], zdim=2, likelihood="logistic-mixture", mixtures=2,
                context=1)
    return vaekit.train(TrainConfig(**{**base, **kw}), out)


def test_a_context_run_resumes_bit_for_bit_and_evaluates(tiny_data: Path, tmp_path: Path, capsys) -> None:
    full = _train(tiny_data, tmp_path / "full")
    _train(tiny_data, tmp_path / "split", epochs=1)
    resumed = vaekit.train(TrainConfig(**{**json.loads((tmp_path / "split" / runs.CONFIG).read_text())["train"],
                                          "epochs": 2}), tmp_path / "split", resume=True)
    a, b = runs.read_tensors(full.path / runs.WEIGHTS)[0], runs.read_tensors(resumed.path / runs.WEIGHTS)[0]
    assert any(k.startswith("context.") for k in a) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = vaekit.load_model(full.path)
    assert model.config.context == 1 and not runs_in_page(model.config)
    capsys.readouterr()
    assert main(["evaluate", str(full.path), "--nll", "--samples", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isfinite(out["nll"]) and 0 < out["bits_per_dim"] < 8
    assert math.isclose(out["test_loss"], full.metrics[-1]["test_loss"], rel_tol=1e-6)
    assert out["nll"] <= out["test_loss"] + 1.0


def test_a_context_run_draws_its_figures_and_points_the_explorer_to_serve(tiny_data: Path, tmp_path: Path,
                                                                          capsys) -> None:
    run = _train(tiny_data, tmp_path / "run", epochs=1, grid_size=2)
    capsys.readouterr()
    assert main(["plot", str(run.path)]) == 0 and main(["explore", str(run.path)]) == 0
    err = capsys.readouterr().err
    assert "pixel-by-pixel decoder" in err and "--serve" in err
    assert '"decodeUrl":"/decode"' in (run.path / "explorer.html").read_text()  # the page asks the server
    for name in ("samples.png", "reconstructions.png", "latent_grid.png", "explorer.html"):
        assert (run.path / name).stat().st_size > 0
    assert main(["report", str(run.path)]) == 0
    assert "causal context" in (run.path / "report.html").read_text()


def test_mean_image_is_not_the_factorized_heads_mean() -> None:
    model = _model((3, 3, 3))
    params = model.decode(torch.randn(2, model.zdim, dtype=torch.float64))
    assert not torch.allclose(model.mean_image(params), head_mean("logistic-mixture", params, 3, 2))


def test_a_recipes_context_goes_with_its_8_bit_likelihood_and_flat_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECIPES["images"], "context", 2)
    assert recipe_config("images", {}).context == 2
    assert recipe_config("images", {"likelihood": "discretized-logistic", "model": "mlp"}).context == 2
    assert recipe_config("images", {"likelihood": "gaussian"}).context == 0
    assert recipe_config("images", {"model": "hvae"}).context == 0
    assert recipe_config("images", {"context": 1}).context == 1
    with pytest.raises(ConfigError, match="drop --context"):
        recipe_config("images", {"likelihood": "bernoulli", "context": 1}).validate()
