"""Convolutional runs in the explorer and the latent grid for any latent size, without a browser.

The page's parity with PyTorch is tested in Chromium (``tests/test_explorer_browser.py``); here: what the
page is given (the layers, their sizes, the weights in the layout the page reads), what it refuses, that
a conv run's artifacts stage writes a working explorer, and the latent grid's plane for zdim > 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vaekit
from vaekit.artifacts import EXPLORER, FINAL_OUTPUTS, figures, write_artifacts
from vaekit.artifacts.explorer import ExplorerError, decoder_layers
from vaekit.artifacts.figures import (
    decode_images,
    grid_coordinates,
    latent_grid,
    latent_grid_figure,
    latent_means,
    principal_plane,
)
from vaekit.data import Splits
from vaekit.model import VAE, model_config
from vaekit.model.conv import Residual, ToRows

from .artifact_runs import make_run


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    start = text.index(">", text.index('id="vaekit-data"')) + 1
    return json.loads(text[start : text.index("</script>", start)])


# ---------------------------------------------------------------------------------------------- the layers


@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
def test_conv_preset_layers_sizes_and_weight_layout(upsample: str) -> None:
    """The page gets every layer with the sizes PyTorch computes, and the weights as (out, ky, kx, in)."""
    torch.manual_seed(0)
    cfg = model_config("conv", image_shape=(28, 28))  # 28 -> 14 -> 7 -> 4 and back
    cfg.upsample = upsample
    model = VAE(cfg).eval()
    layers, raw = decoder_layers(model)
    buf = np.frombuffer(raw, dtype="<f4")
    level = ["upsample_nearest", "conv2d"] if upsample == "nearest" else ["conv_transpose2d"]
    assert [la["type"] for la in layers] == ["linear", "unflatten", *[*level, "leaky_relu"] * 3, "conv2d", "to_rows"]
    assert layers[1]["shape"] == [128, 4, 4]
    x = torch.zeros(1, 128, 4, 4)
    for module, la in zip(model.decoder, layers, strict=True):
        if isinstance(module, nn.Upsample):
            assert la["inSize"] == list(x.shape[2:]) and la["channels"] == x.shape[1]
            x = module(x)
            assert la["outSize"] == list(x.shape[2:])
            if la["outSize"] == [7, 7]:
                assert la["rows"] == la["cols"] == [0, 0, 1, 1, 2, 2, 3]  # PyTorch's floor(o * 4 / 7)
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        assert la["inSize"] == list(x.shape[2:])
        x = module(x)
        assert la["outSize"] == list(x.shape[2:]) and la["out"] == x.shape[1]  # 7, 14, 28: output_padding 0, 1, 1
        assert la["kernel"] == [3, 3] and la["padding"] == [1, 1]
        w = module.weight.detach()
        want = w.permute(1, 2, 3, 0) if la["type"] == "conv_transpose2d" else w.permute(0, 2, 3, 1)
        np.testing.assert_array_equal(buf[la["w"] : la["w"] + w.numel()], want.contiguous().numpy().ravel())
        np.testing.assert_array_equal(buf[la["b"] : la["b"] + la["out"]], module.bias.detach().numpy())
    described = [la for la in layers if la["type"].startswith("conv")]
    assert [la["outSize"] for la in described] == [[7, 7], [14, 14], [28, 28], [28, 28]]
    assert buf.size == sum(p.numel() for p in model.decoder.parameters())


def test_residual_blocks_go_to_the_page_as_their_body() -> None:
    """Each block is one "residual" layer holding its body's layers (their weights in the same buffer, in module
    order) and the size of the image it adds back to; the page runs them (tests/test_explorer_browser.py)."""
    model = VAE(model_config("conv", image_shape=(32, 32, 3), res_blocks=1)).eval()
    layers, raw = decoder_layers(model)
    blocks = [la for la in layers if la["type"] == "residual"]
    assert [[b["type"] for b in block["layers"]] for block in blocks] == [["conv2d", "leaky_relu", "conv2d"]] * 3
    assert [block["size"] for block in blocks] == [64 * 8 * 8, 32 * 16 * 16, 32 * 32 * 32]
    assert np.frombuffer(raw, dtype="<f4").size == sum(p.numel() for p in model.decoder.parameters())
    block = Residual(4, nn.ReLU)
    block.body[-1] = nn.Conv2d(4, 3, 3, padding=1)  # a body that changes the channels cannot be added back
    with pytest.raises(ExplorerError, match="residual block"):
        decoder_layers(_decoder(nn.Linear(4, 256), nn.Unflatten(-1, (4, 8, 8)), block, ToRows()))


def test_an_upsampling_the_page_cannot_run_is_refused() -> None:
    model = _decoder(nn.Linear(4, 48), nn.Unflatten(-1, (3, 4, 4)), nn.Upsample(size=(8, 8), mode="bilinear"),
                     ToRows())
    with pytest.raises(ExplorerError, match="nearest"):
        decoder_layers(model)


def _decoder(*modules: nn.Module, shape: tuple[int, ...] = (8, 8, 3), zdim: int = 4) -> VAE:
    model = VAE(model_config("mlp", zdim=zdim, hidden=[8], image_shape=shape))
    model.decoder = nn.Sequential(*modules)
    return model


@pytest.mark.parametrize("conv,match", [
    (nn.Conv2d(4, 3, 3, padding=1, groups=1, dilation=2), "dilation"),
    (nn.Conv2d(4, 4, 3, padding=1, groups=2), "groups"),
    (nn.Conv2d(4, 3, 3, padding="same"), "padding"),
    (nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect"), "padding"),
])
def test_convolutions_the_page_cannot_run_are_refused(conv: nn.Module, match: str) -> None:
    model = _decoder(nn.Linear(4, 256), nn.Unflatten(-1, (4, 8, 8)), conv, ToRows())
    with pytest.raises(ExplorerError, match=match):
        decoder_layers(model)


def test_decoders_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ExplorerError, match="expects 4 channels"):  # the image has 2
        decoder_layers(_decoder(nn.Linear(4, 128), nn.Unflatten(-1, (2, 8, 8)), nn.Conv2d(4, 3, 3), ToRows()))
    with pytest.raises(ExplorerError, match="one \\(C, H, W\\) image"):
        decoder_layers(_decoder(nn.Linear(4, 192), nn.Unflatten(-1, (3, 64)), ToRows()))
    with pytest.raises(ExplorerError, match="Flatten"):
        decoder_layers(_decoder(nn.Linear(4, 192), nn.Unflatten(-1, (3, 8, 8)), nn.Flatten()))
    with pytest.raises(ExplorerError, match="its output has shape \\(3, 8, 8\\)"):  # never flattened to rows
        decoder_layers(_decoder(nn.Linear(4, 192), nn.Unflatten(-1, (3, 8, 8))))
    with pytest.raises(ExplorerError, match="its output has shape \\(147,\\)"):  # 7x7x3, not 8x8x3
        decoder_layers(_decoder(nn.Linear(4, 256), nn.Unflatten(-1, (4, 8, 8)), nn.Conv2d(4, 3, 2), ToRows()))


def test_a_conv_run_gets_a_working_explorer_and_no_warning(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data, preset="conv", zdim=6)
    capsys.readouterr()
    assert [p.name for p in write_artifacts(run_dir)] == list(FINAL_OUTPUTS)
    err = [line for line in capsys.readouterr().err.splitlines() if "checksum mismatch" not in line]
    assert err == []
    data = _page_data(run_dir / EXPLORER)
    assert data["zdim"] == 6 and data["imageShape"] == [28, 28] and len(data["points"]["labels"]) == 200
    assert [la["type"] for la in data["layers"]][-2:] == ["conv2d", "to_rows"]


# ---------------------------------------------------------------------------------------------- the latent grid


def _anisotropic_means(zdim: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means spread 3, 1.5, 0.5, ... along random orthogonal directions around an offset; and those two."""
    rng = np.random.default_rng(zdim)
    basis, _ = np.linalg.qr(rng.normal(size=(zdim, zdim)))
    scales = np.array([3.0, 1.5] + [0.4] * (zdim - 2))
    means = rng.normal(size=(n, zdim)) * scales @ basis.T + rng.normal(size=zdim)
    return means, basis[:, 0], basis[:, 1]


def _pca_by_covariance(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, first two principal directions (largest component positive) and standard deviations, from eigh."""
    values, vectors = np.linalg.eigh(np.cov(means, rowvar=False))
    order = np.argsort(values)[::-1][:2]
    dirs = vectors[:, order].T
    dirs *= np.sign(dirs[np.arange(2), np.abs(dirs).argmax(1)])[:, None]
    return means.mean(0), dirs, np.sqrt(values[order])


def test_principal_plane_is_the_means_centre_and_first_two_directions_in_standard_deviations() -> None:
    means, d1, d2 = _anisotropic_means(6)
    centre, steps = principal_plane(means)
    mean, dirs, sd = _pca_by_covariance(means)
    np.testing.assert_allclose(centre, mean, atol=1e-12)
    np.testing.assert_allclose(steps, dirs * sd[:, None], atol=1e-9)
    assert abs(float(dirs[0] @ d1)) > 0.99 and abs(float(dirs[1] @ d2)) > 0.95  # the directions the data has
    assert np.abs(steps).argmax(1).tolist() == [int(np.abs(dirs[0]).argmax()), int(np.abs(dirs[1]).argmax())]
    assert (steps[[0, 1], np.abs(steps).argmax(1)] > 0).all()  # one sign, whatever the SVD returns
    flipped = principal_plane(-means + 2 * mean)  # the same cloud mirrored through its centre: same plane
    np.testing.assert_allclose(flipped[1], steps, atol=1e-9)


@pytest.mark.parametrize("spacing", ["linear", "normal"])
def test_grid_for_zdim_above_two_spans_the_test_means_principal_directions(spacing: str) -> None:
    torch.manual_seed(2)
    model = VAE(model_config("mlp", zdim=5, hidden=[32], image_shape=(6, 5, 3))).eval()
    means, _, _ = _anisotropic_means(5)
    mean, dirs, sd = _pca_by_covariance(means)
    n = 7
    coords = grid_coordinates(n, spacing)
    fig = latent_grid_figure(model, n, spacing, means)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert shown.shape == (n * 6, n * 5, 3)
    for row, col in [(0, 0), (0, n - 1), (n - 1, 0), (3, 3), (5, 2)]:
        a, b = coords[col], coords[n - 1 - row]  # standard deviations along the 1st and 2nd direction
        z = torch.tensor(mean + a * sd[0] * dirs[0] + b * sd[1] * dirs[1], dtype=torch.float32)[None]
        np.testing.assert_allclose(shown[row * 6 : (row + 1) * 6, col * 5 : (col + 1) * 5],
                                   decode_images(model, z)[0], rtol=0, atol=1e-5)
    title = fig.axes[0].get_title()
    assert "first two principal directions of the test posterior means" in title
    assert "\u00b12 standard deviations around their mean" in title
    assert "principal direction" in fig.axes[0].get_xlabel()


def test_grid_for_zdim_two_stays_the_posts_grid_whatever_the_means() -> None:
    torch.manual_seed(3)
    model = VAE(model_config("seed")).eval()
    means, _, _ = _anisotropic_means(2)
    n = 5
    fig = latent_grid_figure(model, n, "linear", means)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    coords = np.linspace(-2, 2, n)
    z = torch.tensor([[coords[c], coords[n - 1 - r]] for r in range(n) for c in range(n)], dtype=torch.float32)
    want = decode_images(model, z).reshape(n, n, 28, 28).transpose(0, 2, 1, 3).reshape(n * 28, n * 28)
    np.testing.assert_array_equal(shown, want)
    np.testing.assert_array_equal(latent_grid(model, n), want)
    assert fig.axes[0].get_title() == "Decoder output over [-2, 2]$^2$, 5x5 cells evenly spaced"
    assert fig.axes[0].get_xlabel() == "$z_1$ of the cell"


def test_the_runs_grid_figure_is_given_the_test_means(tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data, preset="conv", zdim=4, image_shape=(12, 12, 3))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    splits = Splits("mine", images[:0], np.empty(0, np.int64), images, rng.integers(0, 2, 40), "memory")
    given: list[np.ndarray | None] = []
    real = figures.latent_grid_figure

    def spy(model: VAE, n: int, spacing: str, means: np.ndarray | None = None):  # noqa: ANN202
        given.append(means)
        return real(model, n, spacing, means)

    monkeypatch.setattr(figures, "latent_grid_figure", spy)
    write_artifacts(run_dir, splits=splits, which=("figures",))
    model = vaekit.load_model(run_dir)
    assert len(given) == 1 and given[0] is not None
    np.testing.assert_allclose(given[0], latent_means(model, images), atol=1e-6)
