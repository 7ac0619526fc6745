"""Training on your own images end to end, through ``vaekit train`` / ``vaekit evaluate`` and ``vaekit.train``.

Real images only where it matters: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (skipped when it
is not installed), written both as a PNG folder and as IDX files, and colour JPEGs of several sizes cut from the
sample photos that scikit-image ships. Everything is generated in the test; nothing is committed. Runs are a few
hundred images for one or two epochs on the CPU, without figures.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.data import DataError, load_own_data, read_idx, write_idx

from .conftest import make_digits

FASHION = Path("/usr/share/datasets/fashion-mnist")
QUICK = ["--epochs", "1", "--device", "cpu", "--no-artifacts", "--quiet"]


def train_cli(*args: str | Path) -> int:
    return main(["train", *map(str, args)])


def metrics(run: Path) -> list[dict[str, str]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def own_record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["data"]["own"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# --- Fashion-MNIST: a PNG folder trains exactly as the same images given as IDX files ---------------------------


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_png_folder_trains_as_its_idx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")  # the smaller file: 10,000 real images
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    png, idx = tmp_path / "fashion-png", tmp_path / "fashion-idx"
    idx.mkdir()
    for part, rows, prefix in (("train", np.arange(0, 600), "train"), ("test", np.arange(600, 800), "t10k")):
        for i in rows:
            path = png / part / str(labels[i]) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
        # The folder's order: class subfolder, then file name. The IDX files hold the same images in that order.
        order = rows[np.lexsort((rows, labels[rows]))]
        write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", images[order])
        write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", labels[order])

    splits, info = load_own_data(png, progress=False)
    assert info["split"] == "given" and info["class_names"] == [str(c) for c in range(10)]
    assert (info["n_train"], info["n_test"], info["image_shape"], info["channels"]) == (600, 200, [28, 28], 1)
    for part, prefix in (("train", "train"), ("test", "t10k")):
        np.testing.assert_array_equal(getattr(splits, f"{part}_images"),
                                      read_idx(idx / f"{prefix}-images-idx3-ubyte.gz"))
        np.testing.assert_array_equal(getattr(splits, f"{part}_labels"),
                                      read_idx(idx / f"{prefix}-labels-idx1-ubyte.gz"))

    # The same validation fraction for both: a folder's validation default, asked of the named dataset.
    common = ["--recipe", "post", "--epochs", "2", "--seed", "3", "--device", "cpu", "--no-artifacts", "--quiet",
              "--val-fraction", "0.1"]
    assert train_cli("--data", png, "--out", tmp_path / "from-png", *common) == 0
    assert train_cli("--dataset", "fashion-mnist", "--data-dir", idx, "--out", tmp_path / "from-idx", *common) == 0
    capsys.readouterr()
    assert own_record(tmp_path / "from-png")["path"] == str(png.resolve())
    for run in ("from-png", "from-idx"):
        assert json.loads((tmp_path / run / "config.json").read_text())["model"]["preset"] == "seed"
    # No tolerance: the same uint8 pixels in the same order, the same seed (so the same shuffles and noise) and the
    # same process make the same float computations, so the losses are bit-for-bit equal. Any difference means the
    # two paths fed the model different data.
    by_png, by_idx = metrics(tmp_path / "from-png"), metrics(tmp_path / "from-idx")
    assert len(by_png) == len(by_idx) == 2
    for a, b in zip(by_png, by_idx, strict=True):
        assert (a["train_loss"], a["val_loss"], a["test_loss"]) == (b["train_loss"], b["val_loss"], b["test_loss"])
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("from-png", "from-idx")]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"]


# --- colour photos of several sizes ---------------------------------------------------------------------------

PHOTO_SIZES = [(48, 40), (32, 32), (60, 24)]  # width x height, each used twice per photo


def colour_photos(root: Path) -> None:
    """24 colour JPEGs in four class subfolders (one per scikit-image photo), of three sizes."""
    from skimage import data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "rocket": data.rocket()}
    for name, photo in photos.items():
        for i in range(6):
            w, h = PHOTO_SIZES[i % 3]
            top, left = 29 * i, 41 * i
            path = root / name / f"{name}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(photo[top : top + h, left : left + w])).save(path, quality=90)


def test_colour_photos_of_several_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skimage")
    photos, run = tmp_path / "photos", tmp_path / "run"
    colour_photos(photos)

    assert train_cli("--data", photos, "--out", run, *QUICK) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"vaekit train: error: {photos}: the images have different sizes")
    assert all(f"{w}x{h}: 8" in line for w, h in PHOTO_SIZES) and "--image-size" in line
    assert not run.exists()

    assert train_cli("--data", photos, "--image-size", "16", "--out", run, *QUICK) == 0
    err = capsys.readouterr().err
    stored = json.loads((run / "config.json").read_text())
    assert (stored["model"]["preset"], stored["train"]["recipe"]) == ("conv", "images"), "the images recipe's model"
    assert "using the" not in err, "the recipe names the model: no default to announce"
    record = own_record(run)
    assert record["kind"] == "folder" and record["path"] == str(photos.resolve())
    assert record["class_names"] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert (record["image_size"], record["channels"], record["image_shape"]) == (16, 3, [16, 16, 3])
    assert (record["split"], record["test_fraction"], record["stratified"]) == ("random", 0.1, True)
    assert record["n_train"] + record["n_test"] == 24 and 4 <= record["n_test"] <= 8, "a test image per class"
    assert json.loads((run / "config.json").read_text())["model"]["image_shape"] == [16, 16, 3]
    test_loss = json.loads((run / "summary.json").read_text())["test_loss"]

    # Evaluation rebuilds the same 16x16 test images from the record, and the seeded test ELBO is the same number.
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_loss"] == test_loss
    moved = tmp_path / "moved"
    shutil.copytree(photos, moved)
    assert main(["evaluate", str(run), "--json", "--data-dir", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["test_loss"] == test_loss

    shutil.copy(photos / "chelsea" / "chelsea_1.jpg", photos / "chelsea" / "chelsea_extra.jpg")
    assert main(["evaluate", str(run), "--json"]) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert captured.out == ""
    assert line.startswith(f"vaekit evaluate: error: {photos.resolve()} now gives 25 images")
    assert "trained on 24 images" in line


# --- bad files through the command line -----------------------------------------------------------------------


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_digits(1, seed=9)[0][0]).save(buffer, "PNG")  # 28x28 as the good ones: the header is fine
    data = buffer.getvalue()
    return data[: len(data) // 2]


BAD = {  # kind: (the file's bytes, the start of the problem reported for it)
    "text": (lambda: b"these are my notes, not a picture\n", "a text file, not an image"),
    "empty": (lambda: b"", "empty file"),
    "truncated": (_truncated_png, "truncated or corrupt"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_file_stops_training_and_skip_bad_lists_it(kind: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    make, problem = BAD[kind]
    folder, run = tmp_path / "images", tmp_path / "run"
    folder.mkdir()
    for i, image in enumerate(make_digits(8, seed=1)[0]):
        Image.fromarray(image).save(folder / f"{i}.png")
    bad = folder / f"{kind}.png"
    bad.write_bytes(make())

    assert train_cli("--data", folder, "--out", run, *QUICK) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith(f"vaekit train: error: {bad}: {problem}") and "--skip-bad" in line
    assert "Traceback" not in captured.err and not run.exists()

    assert train_cli("--data", folder, "--out", run, "--skip-bad", *QUICK) == 0
    (warning,) = error_lines(capsys.readouterr().err)
    assert "warning: skipped 1 of 9 image files" in warning and f"{kind}.png" in warning
    assert str(run / "skipped_files.txt") in warning
    listed = (run / "skipped_files.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{kind}.png\t{problem}")
    record = own_record(run)
    assert record["n_bad"] == 1 and record["n_train"] + record["n_test"] == 8


# --- arrays in memory -----------------------------------------------------------------------------------------


def test_numpy_array_and_tensor_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    config = vaekit.TrainConfig(epochs=1, device="cpu", artifacts=False, progress=False)
    images, _ = make_digits(200, seed=4)
    run = vaekit.train(config, tmp_path / "array", data=images)
    record = own_record(run.path)
    assert (record["kind"], record["path"], record["split"]) == ("array", None, "random")
    assert record["n_train"] + record["n_test"] == 200 and 8 <= record["n_test"] <= 35
    assert run.summary["model"] == "seed"
    # The record cannot reload an in-memory array; the same array given again evaluates to the same loss.
    with pytest.raises(DataError, match="in-memory array"):
        vaekit.evaluate_run(run.path)
    assert vaekit.evaluate_run(run.path, data=images)["test_loss"] == run.summary["test_loss"]

    colour = torch.rand(40, 10, 12, 3, generator=torch.Generator().manual_seed(0))  # float in [0, 1], H != W
    run = vaekit.train(config, tmp_path / "tensor", data=colour)
    record = own_record(run.path)
    assert (record["kind"], record["image_shape"], record["channels"]) == ("array", [10, 12, 3], 3)
    assert record["n_train"] + record["n_test"] == 40 and 1 <= record["n_test"] <= 12
    preset = run.summary["model"]
    assert preset != "seed" and f"10x12 colour images: using the {preset} preset" in capsys.readouterr().err
    assert vaekit.evaluate_run(run.path, data=colour)["test_loss"] == run.summary["test_loss"]


def test_a_moved_folder_resumes_with_data_and_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Where the images are now is a --data of the resumed run; what they are must still be what it trained on."""
    folder, moved, run = tmp_path / "images", tmp_path / "moved", tmp_path / "run"
    folder.mkdir()
    for i, image in enumerate(make_digits(20, seed=2)[0]):
        Image.fromarray(image).save(folder / f"{i}.png")
    assert train_cli("--data", folder, "--out", run, *QUICK) == 0
    folder.rename(moved)
    assert train_cli("--resume", "--out", run, "--epochs", "2", "--quiet") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no longer there" in line and "--data PATH for train --resume" in line
    Image.fromarray(make_digits(1, seed=5)[0][0]).save(moved / "extra.png")
    assert train_cli("--resume", "--out", run, "--epochs", "2", "--data", moved, "--quiet") == 2
    assert "now gives 21 images" in capsys.readouterr().err
    (moved / "extra.png").unlink()
    assert train_cli("--resume", "--out", run, "--epochs", "2", "--data", moved, "--quiet") == 0
    assert [r["epoch"] for r in metrics(run)] == ["1", "2"]
