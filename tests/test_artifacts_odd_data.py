"""The artifacts of runs on unusual data: a test set of one or two images, labels that are large
identifiers rather than 0, 1, 2, ..., and class folders and files whose names are not valid UTF-8.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit.artifacts import FINAL_OUTPUTS, REPORT, write_artifacts
from vaekit.artifacts.explorer import explorer_html
from vaekit.artifacts.figures import MAX_CLASS_COLOURS, label_classes, latent_scatter_figure
from vaekit.cli import main
from vaekit.data import Splits
from vaekit.model import VAE, model_config
from vaekit.text import printable

from .artifact_runs import make_run

QUICK = ["--epochs", "1", "--device", "cpu", "--quiet", "--grid-size", "4"]


def _page_data(text: str) -> dict:
    start = text.index(">", text.index('id="vaekit-data"')) + 1
    return json.loads(text[start : text.index("</script>", start)])


@pytest.mark.parametrize("n_test", [1, 2])
@pytest.mark.parametrize("zdim", [2, 8])
def test_every_artifact_is_drawn_for_a_test_set_of_one_or_two_images(tiny_data: Path, tmp_path: Path, n_test: int,
                                                                     zdim: int) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data, zdim=zdim)
    images = np.random.default_rng(0).integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    splits = Splits("mine", images[:0], np.empty(0, np.int64), images, np.arange(n_test), "memory")
    assert [p.name for p in write_artifacts(run_dir, splits=splits)] == list(FINAL_OUTPUTS)


def _tiny_model(zdim: int = 2) -> VAE:
    return VAE(model_config("mlp", zdim=zdim, hidden=[8], image_shape=(28, 28)))


def test_large_integer_labels_get_a_colour_each_and_a_handful_of_ticks() -> None:
    images = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    many = np.arange(60) * 50  # 60 distinct labels up to 2,950
    fig = latent_scatter_figure(_tiny_model(), images, many)
    ticks = fig.axes[-1].get_yticklabels()
    assert 2 <= len(ticks) <= 20 and ticks[0].get_text() == "0" and ticks[-1].get_text() == "2950"
    ids = np.array([1440764, 1443537] * 30)  # two classes named by identifiers in the millions
    fig = latent_scatter_figure(_tiny_model(), images, ids)
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()] == ["1440764", "1443537"]
    assert len(fig.axes[0].collections[0].get_cmap().colors) == 2


def test_labels_are_ranked_only_when_they_are_not_small_class_numbers() -> None:
    index, names = label_classes(np.array([0, 3, 3]), ("a", "b", "c", "d"))
    assert index.tolist() == [0, 3, 3] and names == ["a", "b", "c", "d"]  # absent classes keep their place
    index, names = label_classes(np.array([1443537, 7, 1440764, 7]))
    assert index.tolist() == [2, 0, 1, 0] and names == ["7", "1440764", "1443537"]
    index, names = label_classes(np.array([MAX_CLASS_COLOURS - 1]))
    assert index.tolist() == [MAX_CLASS_COLOURS - 1] and len(names) == MAX_CLASS_COLOURS


def test_the_explorer_lists_the_classes_present_not_every_integer_below_the_largest() -> None:
    model = _tiny_model()
    ids = np.array([1440764, 1443537, 1440764])
    data = _page_data(explorer_html(model, np.zeros((3, 2)), ids))
    assert data["classes"] == ["1440764", "1443537"] and data["points"]["labels"] == [0, 1, 0]


def test_names_that_are_not_utf8_are_shown_byte_by_byte() -> None:
    name = os.fsdecode(b"caf\xe9")
    assert printable(name) == "caf\\xe9" and printable("caf\u00e9") == "caf\u00e9"
    assert printable("\ud800x") == "\\ud800x"
    printable(name).encode("utf-8")


def _write_pngs(folder: bytes, names: list[bytes], rng: np.random.Generator) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(os.path.join(folder, name), "PNG")


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes, not necessarily UTF-8, on Linux only")
def test_class_folders_and_files_named_in_latin1_train_plot_and_report(tmp_path: Path) -> None:
    """14 images at the default test fraction: one test image, in a class folder named caf\\xe9."""
    root = os.fsencode(tmp_path / "photos")
    rng = np.random.default_rng(0)
    _write_pngs(os.path.join(root, b"caf\xe9"), [b"im\xff%d.png" % i for i in range(7)], rng)
    _write_pngs(os.path.join(root, b"dog"), [b"im%d.png" % i for i in range(7)], rng)
    with open(os.path.join(root, b"caf\xe9", b"bad\xff.png"), "wb") as f:
        f.write(b"not an image")
    run = tmp_path / "run"
    assert main(["train", "--data", os.fsdecode(root), "--out", str(run), "--skip-bad", "--zdim", "8", *QUICK]) == 0
    assert all((run / name).is_file() for name in FINAL_OUTPUTS)
    assert (run / "skipped_files.txt").read_bytes().startswith(b"caf\xe9/bad\xff.png\t")  # the name as on disk
    assert json.loads((run / "config.json").read_text())["data"]["own"]["class_names"] == [os.fsdecode(b"caf\xe9"),
                                                                                          "dog"]
    assert "caf\\xe9" in (run / REPORT).read_text(encoding="utf-8")
    assert main(["plot", str(run)]) == 0 and main(["report", str(run)]) == 0


def test_an_npz_of_identifier_labels_trains_with_its_artifacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "ids.npz", x=x, y=np.array([1440764, 1443537] * 20))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ids.npz"), "--out", str(run), *QUICK]) == 0
    page = (run / "explorer.html").read_text(encoding="utf-8")
    assert _page_data(page)["classes"] == ["1440764", "1443537"]


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes, not necessarily UTF-8, on Linux only")
def test_a_run_folder_named_in_latin1_evaluates_resumes_and_draws(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The data and the run folder both have names that are not UTF-8; every command works on them and every
    message shows the byte as \\xNN."""
    data = os.path.join(os.fsencode(tmp_path), b"donn\xe9es")
    rng = np.random.default_rng(1)
    _write_pngs(os.path.join(data, b"a"), [b"%d.png" % i for i in range(10)], rng)
    _write_pngs(os.path.join(data, b"b"), [b"%d.png" % i for i in range(10)], rng)
    with open(os.path.join(data, b"a", b"bad.png"), "wb") as f:
        f.write(b"not an image")
    run = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"run-\xe9"))
    args = ["--data", os.fsdecode(data), "--out", run, "--skip-bad", "--no-artifacts", *QUICK]
    assert main(["train", *args]) == 0
    warning = capsys.readouterr().err
    assert "donn\\xe9es" in warning and "\udce9" not in warning
    assert main(["evaluate", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_loss"] == json.loads(Path(run, "summary.json").read_text())[
        "test_loss"]
    assert main(["train", *args, "--resume", "--epochs", "2"]) == 0
    assert main(["plot", run]) == 0 and main(["report", run]) == 0 and main(["explore", run]) == 0
    assert "\udce9" not in "".join(capsys.readouterr())
    os.remove(os.path.join(os.fsencode(run), b"model.safetensors"))
    assert main(["evaluate", run]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "run-\\xe9" in line and "\udce9" not in line
