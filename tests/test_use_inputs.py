"""Images given to a trained run are prepared exactly as the run's own data were (vaekit.use.inputs).

Runs are assembled without training (tests/artifact_runs.py) on the generated IDX digits, except the one run
on a folder of images with --image-size, trained for one epoch on 60 small images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.config import ConfigError
from vaekit.data import DataError
from vaekit.data.tensors import as_rows, to_unit
from vaekit.run.dataset import load_run_data
from vaekit.use.inputs import open_inputs

from .artifact_runs import make_run
from .conftest import make_digits, peak_allocations


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> vaekit.Run:
    return vaekit.load_run(make_run(tmp_path_factory.mktemp("use") / "run", tiny_data))


def gathered(inputs, batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray, list[str], np.ndarray | None]:
    xs, pixels, names, labels = [], [], [], []
    for batch in inputs.batches(batch_size):
        xs.append(batch.x)
        pixels.append(batch.pixels)
        names += batch.names
        labels.append(batch.labels)
    return (torch.cat(xs), np.concatenate(pixels), names,
            None if labels[0] is None else np.concatenate(labels))


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray | None = None) -> list[Path]:
    """One PNG per image, in class subfolders when labels are given; the paths in the images' order."""
    paths = []
    for i, image in enumerate(images):
        sub = folder / f"class{labels[i]}" if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"{i:05d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_the_test_split_is_the_evaluated_test_set(mnist_run: vaekit.Run) -> None:
    splits = load_run_data(mnist_run)
    inputs = open_inputs(mnist_run, split="test")
    x, pixels, names, labels = gathered(inputs)
    assert inputs.n == len(splits.test_images) == 200
    assert torch.equal(x, to_unit(as_rows(splits.test_images)))
    assert np.array_equal(pixels, splits.test_images) and np.array_equal(labels, splits.test_labels)
    assert names[:2] == ["test:0", "test:1"] and names[-1] == "test:199"
    assert open_inputs(mnist_run, split="train").n == 600


def test_a_png_folder_of_the_test_images_gives_the_same_input(mnist_run: vaekit.Run, tmp_path: Path) -> None:
    splits = load_run_data(mnist_run)
    paths = write_pngs(tmp_path / "pngs", splits.test_images, splits.test_labels)
    inputs = open_inputs(mnist_run, tmp_path / "pngs")
    x, pixels, names, labels = gathered(inputs, batch_size=33)
    order = np.argsort([str(p) for p in paths], kind="stable")  # the folder is read class by class, by name
    assert names == [str(paths[i]) for i in order]
    assert np.array_equal(pixels, splits.test_images[order]) and np.array_equal(labels, splits.test_labels[order])
    assert torch.equal(x, to_unit(as_rows(splits.test_images[order])))
    one = open_inputs(mnist_run, paths[0])
    assert one.n == 1 and np.array_equal(next(one.batches()).pixels[0], splits.test_images[0])


def test_arrays_and_tensors_are_converted_as_training_converts_them(mnist_run: vaekit.Run, tmp_path: Path) -> None:
    images = make_digits(5, seed=3)[0]
    (ref, *_) = gathered(open_inputs(mnist_run, images))
    as_float = torch.from_numpy(images.astype(np.float32) / 255)
    for source in (as_float, as_float.numpy(), images[..., None], images[0]):
        x, _, names, labels = gathered(open_inputs(mnist_run, source))
        assert torch.equal(x, ref[: len(x)]) and labels is None
    np.save(tmp_path / "digits.npy", images)
    x, _, names, _ = gathered(open_inputs(mnist_run, tmp_path / "digits.npy"))
    assert torch.equal(x, ref) and names[3] == f"{tmp_path / 'digits.npy'}:3"
    np.savez(tmp_path / "labelled.npz", x=images, y=np.arange(5))
    assert np.array_equal(gathered(open_inputs(mnist_run, tmp_path / "labelled.npz"))[3], np.arange(5))


@pytest.mark.parametrize(("source", "message"), [
    (np.zeros((3, 20, 20), np.uint8), "images are 20x20 (width x height), shape (3, 20, 20), but the run's model "
                                      "takes 28x28 grey images; resize them"),
    (np.zeros((3, 28, 28, 3), np.uint8), "images are colour, shape (3, 28, 28, 3), but the run was trained on grey"),
    (np.zeros((3, 28, 28, 5), np.uint8), "5 channels on the last axis"),
    (np.full((2, 28, 28), 2.0, np.float32), "float images must be in [0, 1]"),
    (np.zeros((2, 784), np.uint8), "shape (2, 784) looks like 2 flattened images, one a row; reshape them to images "
                                   "first: x.reshape(-1, 28, 28)"),
])
def test_arrays_the_model_cannot_take_are_one_line(mnist_run: vaekit.Run, source: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match="^the array given") as info:
        open_inputs(mnist_run, source)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_paths_and_arguments_that_cannot_be_used(mnist_run: vaekit.Run, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        open_inputs(mnist_run, tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not images")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        open_inputs(mnist_run, tmp_path / "notes.txt")
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "tall.png")
    with pytest.raises(DataError, match=r"tall.png: is 28x30 but the run's model takes 28x28 grey images"):
        open_inputs(mnist_run, tmp_path / "tall.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png: is a colour image but the run was trained on grey ones"):
        open_inputs(mnist_run, tmp_path / "colour.png")
    with pytest.raises(ConfigError, match="either images or a split"):
        open_inputs(mnist_run, tmp_path / "tall.png", split="test")
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        open_inputs(mnist_run, split="val")
    with pytest.raises(ConfigError, match="batch size must be a positive integer"):
        next(open_inputs(mnist_run, split="test").batches(0))


def test_a_corrupt_file_stops_the_folder_as_in_training_and_skip_bad_leaves_it_out(
        mnist_run: vaekit.Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_digits(6, seed=2)[0]
    paths = write_pngs(tmp_path / "pngs", images)
    bad = tmp_path / "pngs" / "00002.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError) as info:
        open_inputs(mnist_run, tmp_path / "pngs")
    assert str(info.value).startswith(f"{bad}: ") and "--skip-bad" in str(info.value)
    inputs = open_inputs(mnist_run, tmp_path / "pngs", skip_bad=True)
    assert "warning: skipped 1 of 6 image files" in capsys.readouterr().err
    _, pixels, names, _ = gathered(inputs)
    assert names == [str(p) for p in paths if p != bad]
    assert np.array_equal(pixels, np.delete(images, 2, axis=0))
    assert inputs.skipped[0][0] == "00002.png"


def test_binarized_inputs_draw_the_runs_test_copy(tmp_path: Path, tiny_data: Path) -> None:
    run = vaekit.load_run(make_run(tmp_path / "run", tiny_data, binarize="dynamic"))
    grey = load_run_data(run, binarize="none").test_images
    _, expected, *_ = gathered(open_inputs(run, split="test"))
    assert set(np.unique(expected)) == {0, 255}
    _, drawn, *_ = gathered(open_inputs(run, grey, binarize=True), batch_size=37)
    assert np.array_equal(drawn, expected)
    _, as_given, *_ = gathered(open_inputs(run, grey))
    assert np.array_equal(as_given, grey)


def test_a_run_with_image_size_and_channels_converts_as_training_did(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 20, 24, 3), dtype=np.uint8)  # colour, not square: resized and cropped
    write_pngs(tmp_path / "images", images)
    config = vaekit.TrainConfig(epochs=1, device="cpu", artifacts=False, progress=False, image_size=12,
                                channels=1, batch_size=32)
    run = vaekit.train(config, tmp_path / "run", data=str(tmp_path / "images"))
    splits = load_run_data(run)
    trained = np.concatenate([splits.train_images, splits.test_images])
    _, pixels, *_ = gathered(open_inputs(run, tmp_path / "images"))
    _, from_array, *_ = gathered(open_inputs(run, images))
    assert pixels.shape == (60, 12, 12) and np.array_equal(from_array, pixels)

    def rows(a: np.ndarray) -> list[bytes]:
        return sorted(r.tobytes() for r in a)

    assert rows(pixels) == rows(trained)


def _peak_bytes(run: vaekit.Run, folder: Path) -> int:
    """Peak allocations while ``folder`` is opened and read batch by batch (the run loaded before counting)."""
    code = ("tracemalloc.stop()\nfrom vaekit.use.inputs import open_inputs\nrun = vaekit.load_run(sys.argv[1])\n"
            "tracemalloc.start()\nfor _ in open_inputs(run, sys.argv[2]).batches(128):\n    pass")
    return peak_allocations(code, str(run.path), str(folder))


def test_memory_grows_by_the_pixels_alone(mnist_run: vaekit.Run, tmp_path: Path) -> None:
    digits = make_digits(50, seed=5)[0]
    peaks = {}
    for n in (400, 1600):
        write_pngs(tmp_path / str(n), np.tile(digits, (n // 50, 1, 1)))
        peaks[n] = _peak_bytes(mnist_run, tmp_path / str(n))
    per_image = (peaks[1600] - peaks[400]) / 1200
    assert per_image < 784 + 600, "its 784 pixels and its name (about 200 bytes), nothing more"


def test_a_colour_run_takes_grey_images_as_training_did(tmp_path: Path, tiny_data: Path) -> None:
    run = vaekit.load_run(make_run(tmp_path / "run", tiny_data, image_shape=(28, 28, 3)))
    grey = make_digits(3, seed=7)[0]
    _, pixels, *_ = gathered(open_inputs(run, grey))
    assert np.array_equal(pixels, np.repeat(grey[..., None], 3, axis=3))
    paths = write_pngs(tmp_path / "pngs", grey)
    _, from_files, *_ = gathered(open_inputs(run, tmp_path / "pngs"))
    assert np.array_equal(from_files, pixels) and open_inputs(run, paths[0]).n == 1
