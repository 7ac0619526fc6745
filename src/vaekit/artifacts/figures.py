"""The run's figures: the latent grid of the blog post (for zdim > 2 in the plane of the test means'
first two principal directions), the latent scatter, reconstructions, prior samples and the loss curves.
Each is written atomically as PNG into the run folder.

Figures are drawn with matplotlib's object API on a :class:`matplotlib.figure.Figure` of their own and
saved through the Agg renderer, never through pyplot: drawing them in a notebook neither switches the
user's backend nor adds figures to pyplot's list. matplotlib is imported inside the functions that draw,
so ``import vaekit`` and the command line's start-up do not pay for it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaekit import run as runs
from vaekit.artifacts import FIGURES
from vaekit.data.tensors import to_unit
from vaekit.model import VAE
from vaekit.text import printable
from vaekit.use.latent import decode_images, latent_means

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID_BOUND = 2.0  # half-width of the latent square of latent_grid.png, as in the blog post
GRID_TICKS = 9  # at most this many labelled cells per axis of latent_grid.png
MAX_CLASS_COLOURS = 20  # classes the scatter tells apart by colour (tab20), each with its colour-bar tick
MAX_CLASS_TICKS = 11  # named ticks on the scatter's colour bar when there are more classes than colours


def grid_coordinates(n: int, spacing: str = "linear", bound: float = GRID_BOUND) -> np.ndarray:
    """``n`` ascending coordinates from -bound to bound: the latent value of each column (and row) of the grid.

    ``linear`` spaces them evenly; ``normal`` spaces them at evenly spaced quantiles of N(0, 1) (the
    inverse normal CDF), so equal prior mass lies between neighbouring cells.
    """
    if spacing == "linear":
        return np.linspace(-bound, bound, n)
    if spacing == "normal":
        nd = NormalDist()
        lo, hi = nd.cdf(-bound), nd.cdf(bound)
        return np.array([nd.inv_cdf(p) for p in np.linspace(lo, hi, n)])
    raise ValueError(f"unknown grid spacing {spacing!r}; choose linear or normal")


def grid_ticks(coords: np.ndarray, most: int = GRID_TICKS) -> tuple[list[int], list[str]]:
    """Cells to label on an axis of the latent grid (indices into ``coords``) and their latent coordinates.

    The grid's cells are drawn the same size whatever their spacing, so its axes are in cells, and each
    labelled cell shows the latent coordinate it was decoded at: with normal spacing the cells are not
    evenly spaced in z, and an axis in z would put them at the wrong values. The first and last cells
    are always labelled, and the middle one when there is one (z = 0 for an odd number of cells).
    """
    n = len(coords)
    picks = {int(round(i)) for i in np.linspace(0, n - 1, min(n, most))}
    if n % 2:
        picks.add(n // 2)
    idx = sorted(picks)
    return idx, [f"{coords[i]:.2f}".replace("-0.00", "0.00") for i in idx]


@torch.no_grad()
def principal_plane(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plane of the latent grid for zdim > 2: the mean of ``means`` (N, zdim) and two steps (2, zdim).

    The steps are the first two principal directions of the means, each as long as one standard deviation
    of the means along it (sample standard deviation, N - 1), so grid coordinate c is c standard deviations
    from the mean. Each direction's sign makes its largest component positive, so the plane is the same
    on every run of the same means.
    """
    means = np.asarray(means, dtype=np.float64)
    centre = means.mean(0)
    _, sv, vt = np.linalg.svd(means - centre, full_matrices=False)
    signs = np.sign(vt[[0, 1], np.abs(vt[:2]).argmax(1)])
    sd = sv[:2] / np.sqrt(max(len(means) - 1, 1))
    return centre, vt[:2] * (signs * sd)[:, None]


def grid_latents(zdim: int, coords: np.ndarray, plane: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """The latent of every cell of the grid, row by row from the top: (n * n, zdim).

    Column j is at coordinate ``coords[j]`` (ascending left to right) and row i at ``coords[n - 1 - i]``
    (descending top to bottom), as on a plot. Without ``plane`` the coordinates are z1 and z2, the other
    dimensions 0 (the prior mean); with ``plane`` = (origin, steps) the cell at (a, b) decodes
    origin + a * steps[0] + b * steps[1].
    """
    a, b = (g.ravel() for g in np.meshgrid(coords, coords[::-1]))
    if plane is not None:
        origin, steps = plane
        return torch.from_numpy(origin[None, :] + a[:, None] * steps[0] + b[:, None] * steps[1]).float()
    z = torch.zeros(len(a), zdim)
    z[:, 0] = torch.from_numpy(a).float()
    if zdim > 1:
        z[:, 1] = torch.from_numpy(b).float()
    return z


def latent_grid(model: VAE, n: int = 20, spacing: str = "linear", bound: float = GRID_BOUND,
                plane: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One image tiling decoder outputs over the square [-bound, bound]^2 of grid coordinates.

    The coordinates of the cells are ``grid_coordinates(n, spacing, bound)``, in z1 and z2 or in the
    ``plane`` given (see :func:`grid_latents`).
    """
    imgs = decode_images(model, grid_latents(model.zdim, grid_coordinates(n, spacing, bound), plane))
    h, w, *c = imgs.shape[1:]
    return imgs.reshape(n, n, h, w, *c).swapaxes(1, 2).reshape(n * h, n * w, *c)


def tile_images(imgs: np.ndarray, cols: int) -> np.ndarray:
    """Images (N, H, W[, 3]) side by side, ``cols`` to a row; white where a row has fewer."""
    rows = -(-len(imgs) // cols)
    h, w, *c = imgs.shape[1:]
    out = np.ones((rows * h, cols * w, *c), dtype=np.float32)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return out


def new_figure(width: float, height: float) -> Figure:
    """A figure of its own, outside pyplot: nothing global changes when it is drawn or dropped."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG (Agg) and write it atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    runs.write_bytes(path, buf.getvalue())
    return Path(path)


def latent_grid_figure(model: VAE, n: int = 20, spacing: str = "linear", means: np.ndarray | None = None) -> Figure:
    """The latent grid with axes that give each labelled cell's coordinates (see :func:`grid_ticks`).

    With zdim 2 (or 1) it is the blog post's figure over z1 and z2. With zdim > 2 and the test set's
    posterior ``means`` it spans their first two principal directions, +-2 standard deviations of the
    means along each around their mean (:func:`principal_plane`), and its title says so; without means
    it shows z1 and z2 with the other dimensions at 0.
    """
    # Two means span one direction: a second "principal direction" would be arbitrary, so fewer than three
    # fall back to z1 and z2.
    plane = principal_plane(means) if model.zdim > 2 and means is not None and len(means) > 2 else None
    coords = grid_coordinates(n, spacing)
    fig = new_figure(8, 8)
    ax = fig.add_subplot()
    # One unit per cell; y counts cells upwards, so row i from the top is cell n - 1 - i: z2 = coords[n - 1 - i].
    ax.imshow(latent_grid(model, n, spacing, plane=plane), cmap="gray", vmin=0, vmax=1,
              extent=(-0.5, n - 0.5, -0.5, n - 0.5))
    ticks, labels = grid_ticks(coords)
    ax.set_xticks(ticks, labels, rotation=90 if n > 12 else 0)
    ax.set_yticks(ticks, labels)
    where = "evenly spaced" if spacing == "linear" else "at evenly spaced quantiles of N(0, 1)"
    if plane is None:
        ax.set_xlabel("$z_1$ of the cell")
        ax.set_ylabel("$z_2$ of the cell")
        rest = "" if model.zdim <= 2 else f", $z_3$..$z_{{{model.zdim}}}$ at 0"
        ax.set_title(f"Decoder output over [-{GRID_BOUND:g}, {GRID_BOUND:g}]$^2$, {n}x{n} cells {where}{rest}")
    else:
        ax.set_xlabel("standard deviations along the 1st principal direction")
        ax.set_ylabel("standard deviations along the 2nd principal direction")
        ax.set_title(f"Decoder output over the first two principal directions of the test posterior means,\n"
                     f"\u00b1{GRID_BOUND:g} standard deviations around their mean (zdim {model.zdim}), "
                     f"{n}x{n} cells {where}", fontsize=10)
    if model.hierarchical:  # what the grid's latent is, and what the groups below it are
        ax.set_title(ax.get_title() + "\nlatent: the hierarchy's first group; every later group at its prior mean "
                     "(temperature 0)", fontsize=10)
    return fig


def project_2d(mu: np.ndarray) -> tuple[np.ndarray, str]:
    """The first two latent dimensions when zdim <= 2, else the first two principal components."""
    if mu.shape[1] == 1:
        return np.column_stack([mu[:, 0], np.zeros(len(mu))]), "$z_1$"
    if mu.shape[1] == 2:
        return mu, "$z$"
    centred = mu - mu.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T  # one image has one component: its second coordinate is 0
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))), "PC"


def label_classes(labels: np.ndarray, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Every label as an index into the classes, and the name of every class: the colours of the scatter.

    Labels 0, 1, 2, ... (below ``MAX_CLASS_COLOURS`` or the number of named classes) are their own
    index, so a class missing from a small test set keeps its place and its colour on every run of the
    dataset. Any other labels, such as identifiers in the millions, are ranked among the labels present:
    the scatter then has one colour per label found, not one per integer up to the largest.
    """
    labels = np.asarray(labels).astype(np.int64)
    names = [printable(n) for n in class_names or ()]
    top = int(labels.max()) if len(labels) else -1
    if top < max(len(names), MAX_CLASS_COLOURS):
        values = np.arange(max(top + 1, len(names), 2))
        index = labels
    else:
        values = np.unique(labels)
        index = np.searchsorted(values, labels)
    return index, [names[v] if v < len(names) else str(v) for v in values.tolist()]


def latent_scatter_figure(model: VAE, images: np.ndarray, labels: np.ndarray,
                          means: np.ndarray | None = None, class_names: tuple[str, ...] | None = None) -> Figure:
    """Where the encoder puts the test images, coloured by class: whether the latent space separates them.

    ``means`` are the images' posterior means when already computed; ``class_names`` label the colour bar.
    Up to ``MAX_CLASS_COLOURS`` classes get a colour and a colour-bar tick each; more share a continuous
    colour map, with at most ``MAX_CLASS_TICKS`` of them named on the bar (see :func:`label_classes`).
    """
    xy, axis = project_2d(latent_means(model, images) if means is None else means)
    index, names = label_classes(labels, class_names)
    fig = new_figure(8, 7)
    ax = fig.add_subplot()
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    k = len(names)
    if k <= MAX_CLASS_COLOURS:
        cmap, ticks = ListedColormap(colormaps["tab10" if k <= 10 else "tab20"].colors[:k]), list(range(k))
    else:
        cmap = colormaps["viridis"]
        ticks = sorted({int(round(t)) for t in np.linspace(0, k - 1, MAX_CLASS_TICKS)})
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=index, cmap=cmap, s=3, alpha=0.7, vmin=-0.5, vmax=k - 0.5)
    what = ("class", "classes") if class_names else ("label", "labels")
    bar = fig.colorbar(sc, ax=ax, ticks=ticks, label=what[0] if k <= MAX_CLASS_COLOURS else f"{k} {what[1]}, in order")
    bar.ax.set_yticklabels([names[t][:20] for t in ticks])
    ax.set_xlabel(f"{axis} 1" if axis == "PC" else "$z_1$")
    ax.set_ylabel(f"{axis} 2" if axis == "PC" else "$z_2$")
    ax.set_title("Posterior means of the test set" + (" (PCA)" if axis == "PC" else ""))
    return fig


@torch.no_grad()
def reconstructions_figure(model: VAE, images: np.ndarray, n: int = 16) -> Figure:
    """The first ``n`` test images over their decodings at the posterior means: what the code keeps."""
    n = min(n, len(images))
    device = next(model.parameters()).device
    x = to_unit(torch.from_numpy(images[:n].reshape(n, -1)).to(device))
    mu, _ = model.encode(x)
    rec = decode_images(model, mu)
    orig = x.reshape(rec.shape).cpu().numpy()
    fig = new_figure(max(n, 4) * 0.6, 1.5)
    ax = fig.add_subplot()
    ax.imshow(np.vstack([tile_images(orig, n), tile_images(rec, n)]), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("Test images (top) and reconstructions from their posterior means (bottom)")
    return fig


def samples_figure(model: VAE, n: int = 64, seed: int = 0) -> Figure:
    """Decodings of ``n`` prior draws from a fixed seed: what the model generates, the same on every redraw."""
    z = torch.randn(n, model.zdim, generator=torch.Generator().manual_seed(seed))
    fig = new_figure(6, 6)
    ax = fig.add_subplot()
    ax.imshow(tile_images(decode_images(model, z), 8), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("Decoder means of z drawn from the prior N(0, I)")
    return fig


def loss_curve_figure(history: list[dict[str, float]]) -> Figure:
    """Train, validation and test loss per epoch from ``metrics.csv`` rows: convergence and overfitting at a glance.

    A run with a validation split has a validation curve and one test point, at the end (the test set is
    evaluated once); a run without one has a test curve.
    """
    epochs = [r["epoch"] for r in history]
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_loss"] for r in history], marker=".", color="C0", label="train (mean over the epoch)")
    for key, label, color in (("val_loss", "validation", "C2"), ("test_loss", "test", "C1")):
        points = [(r["epoch"], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if len(points) > 1 else "o", color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def write_figures(run_dir: str | os.PathLike, model: VAE, splits: Any, history: list[dict[str, float]],
                  grid_size: int = 20, spacing: str = "linear") -> list[Path]:
    """Write the five figures (``FIGURES``) of a run into ``run_dir``; returns their paths.

    ``splits`` needs only ``test_images`` and ``test_labels``; the model is put in eval mode.
    """
    run_dir = Path(run_dir)
    model.eval()
    means = latent_means(model, splits.test_images)  # the scatter's points, and the plane of the grid for zdim > 2
    draw = {
        "latent_grid.png": lambda: latent_grid_figure(model, grid_size, spacing, means),
        "latent_scatter.png": lambda: latent_scatter_figure(model, splits.test_images, splits.test_labels, means,
                                                            splits.class_names),
        "reconstructions.png": lambda: reconstructions_figure(model, splits.test_images),
        "samples.png": lambda: samples_figure(model),
        "loss_curve.png": lambda: loss_curve_figure(history),
    }
    return [save_figure(draw[name](), run_dir / name) for name in FIGURES]
