"""The artifacts stage of a finished run: what it writes, from what, and how it behaves in a host process.

``write_artifacts`` takes a run folder alone (and optionally the test split it should draw); the figures
are drawn without pyplot, so a notebook's matplotlib backend and figures are left as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch

from vaekit import run as runs
from vaekit.artifacts import CARD, EXPLORER, FIGURES, FINAL_OUTPUTS, REPORT, write_artifacts
from vaekit.artifacts.figures import decode_images, grid_coordinates, latent_grid, latent_grid_figure
from vaekit.cli import main
from vaekit.config import ConfigError
from vaekit.data import Splits
from vaekit.data.errors import DataError
from vaekit.model import VAE, model_config

from .artifact_runs import Html, make_run
from .conftest import make_digits

PNG = b"\x89PNG\r\n\x1a\n"


def _page_data(path: Path) -> dict:
    """The data block the explorer page decodes on load."""
    text = path.read_text(encoding="utf-8")
    start = text.index(">", text.index('id="vaekit-data"')) + 1
    return json.loads(text[start : text.index("</script>", start)])


def _no_data(run_dir: Path) -> None:
    """Point the run's config at a folder that does not exist, so finding its data again fails."""
    model, train, data = runs.read_config(run_dir)
    train.data_dir = str(run_dir / "no-such-folder")
    runs.write_config(run_dir, model, train, data)


def test_the_stage_writes_every_final_output_in_order(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data)
    assert list(FINAL_OUTPUTS) == [*FIGURES, EXPLORER, REPORT, CARD]
    paths = write_artifacts(run_dir)
    assert paths == [run_dir / name for name in FINAL_OUTPUTS]
    assert all(p.read_bytes().startswith(PNG) for p in paths[: len(FIGURES)])
    assert len(_page_data(run_dir / EXPLORER)["points"]["labels"]) == 200  # the run's test set
    assert runs.is_complete(run_dir, 2, FINAL_OUTPUTS)
    report = Html((run_dir / REPORT).read_text(encoding="utf-8"))
    assert [a["href"] for a in report.find("a") if a.get("class") == "explorer"] == [EXPLORER]  # written before it
    assert not [p for p in run_dir.iterdir() if runs.is_temporary(p.name)]


def test_given_splits_are_drawn_and_the_data_is_not_looked_for(tiny_data: Path, tmp_path: Path) -> None:
    """Training hands over the test split it holds (no training images): the stage draws exactly that."""
    run_dir = make_run(tmp_path / "run", tiny_data)
    _no_data(run_dir)
    with pytest.raises(DataError, match="no-such-folder"):
        write_artifacts(run_dir, which=("explorer",))
    images, labels = make_digits(37, seed=5)
    splits = Splits("mnist", np.empty((0, 28, 28), np.uint8), np.empty(0, np.int64), images, labels, "memory")
    paths = write_artifacts(run_dir, splits=splits)
    assert [p.name for p in paths] == list(FINAL_OUTPUTS)
    assert _page_data(run_dir / EXPLORER)["points"]["labels"] == labels.tolist()


def test_which_writes_only_the_parts_asked_for(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data)
    _no_data(run_dir)
    assert write_artifacts(run_dir, which=("report",)) == [run_dir / REPORT]  # needs no data
    assert sorted(p.name for p in run_dir.glob("*.png")) == []
    with pytest.raises(ConfigError, match="unknown artifact 'movie'"):
        write_artifacts(run_dir, which=("figures", "movie"))
    with pytest.raises(ConfigError, match="grid_spacing"):
        write_artifacts(run_dir, which=("figures",), spacing="cubic")
    assert not list(run_dir.glob("*.png"))  # checked before anything was drawn


def test_cli_plot_redraws_the_figures_with_other_grid_settings(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data)
    assert main(["plot", str(run_dir), "--grid-size", "5", "--grid-spacing", "normal"]) == 0
    assert capsys.readouterr().out.split() == [str(run_dir / f) for f in FIGURES]
    assert not (run_dir / EXPLORER).exists() and not (run_dir / REPORT).exists()


def test_a_colour_run_gets_colour_figures_and_a_colour_explorer(tiny_data: Path, tmp_path: Path) -> None:
    shape = (12, 10, 3)
    run_dir = make_run(tmp_path / "run", tiny_data, preset="mlp", hidden=[32], image_shape=shape)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, *shape), dtype=np.uint8)
    splits = Splits("mine", images[:0], np.empty(0, np.int64), images, rng.integers(0, 3, 30), "memory",
                    class_names=("cat", "dog", "owl"))
    assert [p.name for p in write_artifacts(run_dir, splits=splits)] == list(FINAL_OUTPUTS)
    data = _page_data(run_dir / EXPLORER)
    assert data["imageShape"] == list(shape) and data["classes"] == ["cat", "dog", "owl"]
    assert data["layers"][-1]["out"] == 12 * 10 * 3
    from matplotlib.image import imread

    grid = imread(run_dir / "samples.png")
    assert grid.ndim == 3 and np.abs(grid[..., 0] - grid[..., 1]).max() > 0.05  # drawn in colour, not grey


# ---------------------------------------------------------------------------------------------- the latent grid


def _number(label: str) -> float:
    return float(label.replace("\u2212", "-"))  # matplotlib's default tick labels use the minus sign U+2212


def _tiny_model() -> VAE:
    torch.manual_seed(3)
    return VAE(model_config("seed")).eval()


def test_normal_spacing_puts_cells_at_normal_quantiles() -> None:
    nd = NormalDist()
    probs = np.linspace(nd.cdf(-2), nd.cdf(2), 7)
    np.testing.assert_allclose(grid_coordinates(7, "normal"), [nd.inv_cdf(p) for p in probs], rtol=0, atol=1e-12)
    np.testing.assert_allclose(grid_coordinates(5, "linear"), [-2, -1, 0, 1, 2])
    with pytest.raises(ValueError, match="cubic"):
        grid_coordinates(5, "cubic")


@pytest.mark.parametrize("n,spacing", [(7, "normal"), (20, "normal"), (20, "linear"), (3, "linear")])
def test_grid_axes_give_each_labelled_cell_its_latent_coordinates(n: int, spacing: str) -> None:
    """A tick's label is the latent value of the cell under it, in both axes, for either spacing."""
    model = _tiny_model()
    coords = grid_coordinates(n, spacing)
    ax = latent_grid_figure(model, n, spacing).axes[0]
    left, right, bottom, top = ax.images[0].get_extent()
    xs = [(t, _number(lab.get_text())) for t, lab in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)]
    ys = [(t, _number(lab.get_text())) for t, lab in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)]
    assert len(xs) >= 3 and len(ys) >= 3
    for pos, value in xs:
        column = min(n - 1, int((pos - left) / (right - left) * n))  # the cell under the tick, left to right
        assert value == pytest.approx(coords[column], abs=0.006), (pos, value)
    for pos, value in ys:
        row = min(n - 1, int((top - pos) / (top - bottom) * n))  # the cell under the tick, top to bottom
        assert value == pytest.approx(coords[n - 1 - row], abs=0.006), (pos, value)
    # ... and the cells hold what the decoder makes of those coordinates
    grid = latent_grid(model, n, spacing)
    for row, column in [(0, 0), (n - 1, n // 2), (n // 3, n - 1)]:
        z = torch.tensor([[coords[column], coords[n - 1 - row]]])
        np.testing.assert_allclose(grid[row * 28 : (row + 1) * 28, column * 28 : (column + 1) * 28],
                                   decode_images(model, z)[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- a library in a host


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}
    env.pop("MPLBACKEND", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_vaekit_does_not_import_matplotlib() -> None:
    r = _python("import sys, vaekit, vaekit.artifacts, vaekit.cli\n"
                "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
                "import vaekit.artifacts.figures, vaekit.artifacts.explorer, vaekit.artifacts.report\n"
                "assert 'matplotlib' not in sys.modules, 'matplotlib imported before anything is drawn'\n"
                "vaekit.write_artifacts, vaekit.plot_run\n"
                "assert 'matplotlib' not in sys.modules, 'matplotlib imported by the lazy exports'")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # two fresh processes importing torch and matplotlib
def test_figures_leave_the_hosts_backend_and_pyplot_alone(tiny_data: Path, tmp_path: Path) -> None:
    """A notebook that chose a backend and holds figures keeps both after vaekit draws a run's figures."""
    run_dir = make_run(tmp_path / "run", tiny_data)
    r = _python(f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
mine = plt.figure()
import vaekit
paths = vaekit.write_artifacts({str(run_dir)!r}, which=("figures",))
assert len(paths) == 5, paths
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [mine.number], plt.get_fignums()
""")
    assert r.returncode == 0, r.stderr
    r = _python(f"""
import sys, matplotlib
before = dict.__getitem__(matplotlib.rcParams, "backend")  # the unresolved setting: reading it resolves nothing
import vaekit
vaekit.plot_run({str(run_dir)!r}, grid_size=4)
assert "matplotlib.pyplot" not in sys.modules
assert dict.__getitem__(matplotlib.rcParams, "backend") == before
""")
    assert r.returncode == 0, r.stderr


def test_the_scatter_names_the_classes_it_shows() -> None:
    from vaekit.artifacts.figures import latent_scatter_figure

    model = _tiny_model()
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 10)
    fig = latent_scatter_figure(model, images, labels, class_names=("cat", "dog", "owl"))
    bar = fig.axes[-1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["cat", "dog", "owl"]
    assert len(fig.axes[0].collections[0].get_cmap().colors) == 3  # one colour per class, no unused ones
