"""The run's figures: the latent grid of the blog post, the latent scatter, reconstructions, prior
samples and the loss curves. Each is written atomically as PNG into the run folder."""

from __future__ import annotations

import os
from pathlib import Path
from statistics import NormalDist
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import runs  # noqa: E402
from .evaluate import to_unit  # noqa: E402
from .models import VAE  # noqa: E402

FIGURES = ("latent_grid.png", "latent_scatter.png", "reconstructions.png", "samples.png", "loss_curve.png")


def grid_coordinates(n: int, spacing: str = "linear", bound: float = 2.0) -> np.ndarray:
    """``n`` coordinates covering [-bound, bound].

    ``linear`` spaces them evenly; ``normal`` spaces them at evenly spaced quantiles of N(0, 1) (the
    inverse normal CDF), so equal prior mass lies between neighbouring cells.
    """
    if spacing == "linear":
        return np.linspace(-bound, bound, n)
    if spacing == "normal":
        nd = NormalDist()
        lo, hi = nd.cdf(-bound), nd.cdf(bound)
        return np.array([nd.inv_cdf(p) for p in np.linspace(lo, hi, n)])
    raise ValueError(f"unknown grid spacing {spacing!r}")


@torch.no_grad()
def decode_images(model: VAE, z: torch.Tensor) -> np.ndarray:
    """Decoder means (sigmoid of the logits) as float images of the model's image shape."""
    device = next(model.parameters()).device
    h, w = model.config.image_shape
    return torch.sigmoid(model.decode(z.to(device, torch.float32))).reshape(-1, h, w).cpu().numpy()


def latent_grid(model: VAE, n: int = 20, spacing: str = "linear", bound: float = 2.0) -> np.ndarray:
    """One image tiling decoder outputs over the latent square [-bound, bound]^2.

    Columns go along z1 from left (-bound) to right (+bound) and rows along z2 from top (+bound) to bottom
    (-bound), as on a plot; other latent dimensions are held at 0 (the prior mean).
    """
    coords = grid_coordinates(n, spacing, bound)
    z1, z2 = np.meshgrid(coords, coords[::-1])
    z = torch.zeros(n * n, model.zdim)
    z[:, 0] = torch.from_numpy(z1.ravel()).float()
    if model.zdim > 1:
        z[:, 1] = torch.from_numpy(z2.ravel()).float()
    imgs = decode_images(model, z)
    h, w = imgs.shape[1:]
    return imgs.reshape(n, n, h, w).transpose(0, 2, 1, 3).reshape(n * h, n * w)


def _tile(imgs: np.ndarray, cols: int) -> np.ndarray:
    rows = -(-len(imgs) // cols)
    h, w = imgs.shape[1:]
    out = np.ones((rows * h, cols * w), dtype=np.float32)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return out


def _save(fig: plt.Figure, path: Path) -> None:
    runs.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def save_latent_grid(model: VAE, path: Path, n: int = 20, spacing: str = "linear") -> None:
    grid = latent_grid(model, n, spacing)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(grid, cmap="gray", extent=(-2, 2, -2, 2), vmin=0, vmax=1)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"Decoder output over the latent square [-2, 2]$^2$ ({n}x{n}, {spacing} spacing)")
    _save(fig, path)


@torch.no_grad()
def latent_means(model: VAE, images_u8: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Posterior means of ``images_u8`` (N, H, W) as an (N, zdim) array."""
    device = next(model.parameters()).device
    x = torch.from_numpy(images_u8.reshape(len(images_u8), -1))
    out = [model.encode(to_unit(x[i : i + batch_size].to(device)))[0].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def project_2d(mu: np.ndarray) -> tuple[np.ndarray, str]:
    """The first two latent dimensions when zdim <= 2, else the first two principal components."""
    if mu.shape[1] == 1:
        return np.column_stack([mu[:, 0], np.zeros(len(mu))]), "$z_1$"
    if mu.shape[1] == 2:
        return mu, "$z$"
    centred = mu - mu.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "PC"


def save_latent_scatter(model: VAE, images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    xy, axis = project_2d(latent_means(model, images))
    fig, ax = plt.subplots(figsize=(8, 7))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="label")
    ax.set_xlabel(f"{axis} 1" if axis == "PC" else "$z_1$")
    ax.set_ylabel(f"{axis} 2" if axis == "PC" else "$z_2$")
    ax.set_title("Posterior means of the test set" + (" (PCA)" if axis == "PC" else ""))
    _save(fig, path)


@torch.no_grad()
def save_reconstructions(model: VAE, images: np.ndarray, path: Path, n: int = 16) -> None:
    device = next(model.parameters()).device
    x = to_unit(torch.from_numpy(images[:n].reshape(n, -1)).to(device))
    mu, _ = model.encode(x)
    rec = decode_images(model, mu)
    orig = x.reshape(rec.shape).cpu().numpy()
    fig, ax = plt.subplots(figsize=(n * 0.6, 1.5))
    ax.imshow(np.vstack([_tile(orig, n), _tile(rec, n)]), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("Test images (top) and reconstructions from their posterior means (bottom)")
    _save(fig, path)


def save_samples(model: VAE, path: Path, n: int = 64, seed: int = 0) -> None:
    z = torch.randn(n, model.zdim, generator=torch.Generator().manual_seed(seed))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_tile(decode_images(model, z), 8), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("Decoder means of z drawn from the prior N(0, I)")
    _save(fig, path)


def save_loss_curve(history: list[dict[str, float]], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(epochs, [r["train_loss"] for r in history], marker=".", label="train (mean over the epoch)")
    ax.plot(epochs, [r["test_loss"] for r in history], marker=".", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_run(run_dir: str | os.PathLike, model: VAE, splits: Any, history: list[dict[str, float]],
             config: Any) -> list[Path]:
    """Write all five figures of a run; returns their paths."""
    run_dir = Path(run_dir)
    model.eval()
    paths = [run_dir / f for f in FIGURES]
    save_latent_grid(model, paths[0], config.grid_size, config.grid_spacing)
    save_latent_scatter(model, splits.test_images, splits.test_labels, paths[1])
    save_reconstructions(model, splits.test_images, paths[2])
    save_samples(model, paths[3])
    save_loss_curve(history, paths[4])
    return paths
