"""vaekit encode / reconstruct / interpolate and the Run methods behind them (vaekit.use.latent).

Runs are assembled without training (tests/artifact_runs.py) on the generated IDX digits: what is tested is
that the commands give exactly what the model gives for the images the run was evaluated on.
"""

from __future__ import annotations

import csv
import itertools
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.config import ConfigError
from vaekit.data.errors import BadInputError
from vaekit.data.tensors import as_rows, to_unit
from vaekit.run.dataset import load_run_data
from vaekit.use.latent import latent_path

from .artifact_runs import make_run
from .conftest import make_digits
from .test_use_inputs import write_pngs

PRESETS = {"seed": {}, "conv": {}, "hvae": {"zdim": 2}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent")
    return {preset: make_run(root / preset, tiny_data, preset=preset, **options)
            for preset, options in PRESETS.items()}


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vaekit {command}: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_encoding_the_test_split_is_model_encode_bit_for_bit(runs: dict[str, Path], preset: str) -> None:
    run = vaekit.load_run(runs[preset])
    x = to_unit(as_rows(load_run_data(run).test_images))
    with torch.no_grad():
        mu, logvar = run.model.encode(x)
    got_mu, got_logvar = run.encode(split="test", logvar=True)
    assert torch.equal(torch.from_numpy(got_mu), mu) and torch.equal(torch.from_numpy(got_logvar), logvar)
    assert got_mu.shape == (200, run.model.zdim)  # the hierarchy's top group: what decode takes
    assert np.array_equal(run.encode(load_run_data(run).test_images), got_mu)


def test_encode_command_writes_each_format_with_names_and_labels(runs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = vaekit.load_run(runs["seed"])
    mu, logvar = run.encode(split="test", logvar=True)
    labels = load_run_data(run).test_labels
    assert main(["encode", str(run.path), "--split", "test", "--out", str(tmp_path / "z.npy"), "--logvar"]) == 0
    assert "200 images, 2 dimensions" in capsys.readouterr().out
    table = np.load(tmp_path / "z.npy", allow_pickle=False)
    assert np.array_equal(table["mu"], mu) and np.array_equal(table["logvar"], logvar)
    assert list(table["name"][:2]) == ["test:0", "test:1"] and np.array_equal(table["label"], labels)

    assert main(["encode", str(run.path), "--split", "test", "--out", str(tmp_path / "z.csv")]) == 0
    with open(tmp_path / "z.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["name", "label", "mu_0", "mu_1"]
    read = np.array([[float(r["mu_0"]), float(r["mu_1"])] for r in rows], np.float32)
    assert np.array_equal(read, mu), "9 significant digits give every float32 back"
    assert [int(r["label"]) for r in rows] == labels.tolist()

    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["encode", str(run.path), "--split", "test", "--out", str(tmp_path / "z.parquet")]) == 0
    columns = pq.read_table(tmp_path / "z.parquet").to_pydict()
    assert columns["name"][3] == "test:3" and columns["label"] == labels.tolist()
    assert np.array_equal(np.array([columns["mu_0"], columns["mu_1"]], np.float32).T, mu)


def test_a_png_folder_of_the_test_images_encodes_to_the_splits_means(runs: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = vaekit.load_run(runs["conv"])
    splits = load_run_data(run)
    paths = write_pngs(tmp_path / "pngs", splits.test_images, splits.test_labels)
    assert main(["encode", str(run.path), str(tmp_path / "pngs"), "--out", str(tmp_path / "z.npy")]) == 0
    table = np.load(tmp_path / "z.npy")
    order = [paths.index(Path(name)) for name in table["name"]]
    assert sorted(order) == list(range(200))
    assert np.array_equal(table["mu"], run.encode(split="test")[order])
    assert np.array_equal(table["label"], splits.test_labels[order]), "class subfolders are the labels"


def test_outputs_are_not_replaced_without_force(runs: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "z.csv"
    out.write_text("mine")
    args = ["encode", str(runs["seed"]), "--split", "test", "--out", str(out)]
    assert main(args) == 2
    assert "already exists; pass --force to replace it," in one_line_error(capsys, "encode")
    assert out.read_text() == "mine"
    assert main([*args, "--force"]) == 0 and out.read_text().startswith("name,label,mu_0")
    capsys.readouterr()
    (tmp_path / "recs").mkdir()
    (tmp_path / "recs" / "keep.txt").write_text("mine")
    assert main(["reconstruct", str(runs["seed"]), "--split", "test", "--out", str(tmp_path / "recs")]) == 2
    assert "folder already holds files" in one_line_error(capsys, "reconstruct")
    run = runs["seed"]  # the run's own files and folder are no output, even with --force
    assert main(["encode", str(run), "--split", "test", "--out", str(run / "metrics.csv"), "--force"]) == 2
    assert "would replace metrics.csv in the run folder" in one_line_error(capsys, "encode")
    assert main(["reconstruct", str(run), "--split", "test", "--out", str(run), "--force"]) == 2
    assert "is the run folder itself" in one_line_error(capsys, "reconstruct")
    assert (run / "metrics.csv").read_text().startswith("epoch") and not list(run.glob("0*.png"))
    (tmp_path / "taken").write_text("mine")  # a file where a folder of --out must go: one line, not a traceback
    np.save(tmp_path / "two.npy", make_digits(2, seed=3)[0])
    for command, out in (("encode", "taken/z.csv"), ("reconstruct", "taken/recs")):
        assert main([command, str(run), str(tmp_path / "two.npy"), "--out", str(tmp_path / out)]) == 1
        assert "could not create the folder" in one_line_error(capsys, command)
    named = tmp_path / "recs.png"  # a folder is written: a name like an image file is a mistake, refused
    assert main(["reconstruct", str(runs["seed"]), "--split", "test", "--out", str(named)]) == 2
    assert "a folder is written here, not a .png file" in one_line_error(capsys, "reconstruct")
    assert not named.exists()


def test_parquet_without_pyarrow_is_one_line(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: importing it raises ImportError
    assert main(["encode", str(runs["seed"]), "--split", "test", "--out", str(tmp_path / "z.parquet")]) == 2
    assert "needs pyarrow, which is not installed: pip install pyarrow" in one_line_error(capsys, "encode")
    assert main(["encode", str(runs["seed"]), "--split", "test", "--out", str(tmp_path / "z.txt")]) == 2
    assert "end it with .npy, .csv, .parquet" in one_line_error(capsys, "encode")
    for images in ([], [str(tmp_path), "--split", "test"]):
        assert main(["encode", str(tmp_path / "no-run"), *images, "--out", str(tmp_path / "z.csv")]) == 2
        assert "give IMAGES" in one_line_error(capsys, "encode"), "checked before the run is even looked for"


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Inputs a 28x28 grey run cannot take, and the start of what the error says about each."""
    (tmp_path / "notes.png").write_text("not a picture")
    np.save(tmp_path / "small.npy", np.zeros((4, 20, 20), np.uint8))
    Image.fromarray(np.zeros((28, 28, 3), np.uint8) + 90).save(tmp_path / "colour.png")
    return {
        "not an image": (tmp_path / "notes.png", "notes.png: a text file, not an image"),
        "wrong size": (tmp_path / "small.npy", "small.npy: images are 20x20"),
        "wrong channels": (tmp_path / "colour.png", "colour.png: is a colour image but the run was trained on grey"),
        "missing": (tmp_path / "missing", "missing: no such file or folder"),
    }


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_images_the_run_cannot_take_are_one_line_and_exit_2(runs: dict[str, Path], tmp_path: Path, command: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("z.npy" if command == "encode" else "recs")
    for source, message in _bad_inputs(tmp_path).values():
        assert main([command, str(runs["seed"]), str(source), "--out", str(out)]) == 2
        assert message in one_line_error(capsys, command)
        assert not out.exists()


def test_a_corrupt_file_in_a_folder_stops_it_as_training_does(runs: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_pngs(tmp_path / "pngs", make_digits(5, seed=1)[0])
    paths[1].write_bytes(paths[1].read_bytes()[:50])
    args = ["encode", str(runs["seed"]), str(tmp_path / "pngs"), "--out", str(tmp_path / "z.csv")]
    assert main(args) == 2
    line = one_line_error(capsys, "encode")
    assert f"{paths[1]}: truncated" in line and "--skip-bad" in line
    assert main([*args, "--skip-bad"]) == 0
    assert "warning: skipped 1 of 5 image files" in capsys.readouterr().err
    assert len((tmp_path / "z.csv").read_text().splitlines()) == 1 + 4


def test_reconstruct_writes_each_image_beside_its_reconstruction(runs: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = vaekit.load_run(runs["seed"])
    images = make_digits(70, seed=6)[0]
    np.save(tmp_path / "digits.npy", images)
    assert main(["reconstruct", str(run.path), str(tmp_path / "digits.npy"), "--out", str(tmp_path / "recs"),
                 "--batch-size", "16"]) == 0
    files = sorted((tmp_path / "recs").iterdir())
    assert len(files) == 71 and files[0].name == "00000_digits.png" and files[-1].name == "grid.png"
    pair = np.asarray(Image.open(files[3]))
    expected = np.rint(run.reconstruct(images[3]) * 255).astype(np.uint8)[0]
    assert pair.shape == (28, 56) and np.array_equal(pair[:, :28], images[3])
    assert np.abs(pair[:, 28:].astype(int) - expected).max() <= 1  # one batch of 16 against a batch of one
    grid = np.asarray(Image.open(files[-1]))
    assert grid.shape == (8 * 28, 8 * 56), "the first 64 pairs, 8 to a row"
    assert np.array_equal(grid[:28, :56], np.asarray(Image.open(files[0])))


def test_interpolation_endpoints_are_the_endpoints_means(runs: dict[str, Path], tmp_path: Path) -> None:
    run = vaekit.load_run(runs["seed"])
    images = make_digits(2, seed=8)[0]
    means = np.concatenate([run.encode(image) for image in images])  # each alone, as an endpoint is encoded
    for spherical in (False, True):
        z, decoded = run.interpolate(images[0], images[1], steps=7, spherical=spherical, latents=True)
        assert z.shape == (7, 2) and decoded.shape == (7, 28, 28)
        assert np.array_equal(z[0], means[0]) and np.array_equal(z[-1], means[1])
        np.testing.assert_allclose(decoded[[0, -1]], run.reconstruct(images), atol=1e-6)
    z, _ = run.interpolate(torch.tensor([1.0, 0.0]), np.array([0.0, 3.0]), steps=3, latents=True)
    assert np.allclose(z, [[1, 0], [0.5, 1.5], [0, 3]])
    with pytest.raises(ConfigError, match="steps must be a whole number from 2 to 1000"):
        run.interpolate([0.0, 0.0], [1.0, 1.0], steps=1001)  # the bound of --steps: 10**9 would exhaust memory
    for wrong in (["a", "b"], np.array([1j, 0])):  # not a ValueError from NumPy, nor the imaginary part dropped
        with pytest.raises(BadInputError, match="A is a latent vector of .* values; give 2 real numbers"):
            run.interpolate(wrong, [1.0, 1.0])


def test_slerp_keeps_norms() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=32), rng.normal(size=32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    path = latent_path(a, b, steps=9, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-6)
    straight = latent_path(a, b, steps=9)
    assert np.linalg.norm(straight[4]) < 0.9 * np.linalg.norm(a), "the straight line cuts through the middle"
    longer = latent_path(a, 2 * b, steps=5, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(longer, axis=1), np.linalg.norm(a) * np.linspace(1, 2, 5), rtol=1e-6)
    cosines = [p @ a / np.linalg.norm(p) / np.linalg.norm(a) for p in path]
    assert np.all(np.diff(cosines) < 0), "the direction turns from a towards b"


def test_interpolate_command(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_pngs(tmp_path / "pngs", make_digits(2, seed=8)[0])
    out = tmp_path / "strip.png"
    args = ["interpolate", str(runs["seed"]), str(paths[0]), str(paths[1]), "--steps", "5", "--out", str(out)]
    assert main([*args, "--spherical"]) == 0
    assert "5 images along the spherical path" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (28, 5 * 28)
    strip = np.asarray(Image.open(out))
    assert main(["interpolate", str(runs["seed"]), "0.5,-1", "2,0.25", "--out", str(tmp_path / "z.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "z.png")).shape == (28, 10 * 28)
    capsys.readouterr()
    assert main(args) == 2 and "already exists" in one_line_error(capsys, "interpolate")
    assert main([*args, "--force"]) == 0 and not np.array_equal(np.asarray(Image.open(out)), strip)
    capsys.readouterr()
    for a, message in (("1,2,3", "A is a latent vector of 3 numbers, but the run's latent has 2 dimensions"),
                       (str(tmp_path / "pngs"), "A holds 2 images; give one image"),
                       ("nope", "nope: no such file or folder"),
                       ("nan,0", "A is a latent vector holding NaN, infinite or out-of-range numbers (nan, 0)"),
                       ("1e39,1", "A is a latent vector holding NaN, infinite or out-of-range numbers (1e+39, 1)")):
        assert main(["interpolate", str(runs["seed"]), a, "0,0", "--out", str(tmp_path / "x.png")]) == 2
        assert message in one_line_error(capsys, "interpolate")
    assert main([*args[:-1], str(tmp_path / "x.jpg")]) == 2
    assert "end the name with .png" in one_line_error(capsys, "interpolate")
    with pytest.raises(SystemExit) as stopped:  # argparse's own exit, as for every flag of every command
        main([*args[:4], "--steps", "1", "--out", str(tmp_path / "x.png")])
    assert stopped.value.code == 2 and "--steps: expected an integer from 2 to 1000" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["encode", "reconstruct", "interpolate"])
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0 and out.startswith(f"usage: vaekit {command}")
    assert all(flag in out for flag in ("--device", "--batch-size", "--force", "--out"))
    if command == "interpolate":  # argparse takes -1,0 for an option: the help says how to give it
        assert "RUN --out z.png -- -1,0 1,0" in " ".join(out.split())


def test_an_interrupted_reconstruct_leaves_no_half_filled_folder(runs: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt, as the terminal delivers it) after a few files: the folder does not appear,
    so the same command can be run again without --force."""
    import vaekit.use.outputs as outputs

    written, calls, lock, real = [], itertools.count(), threading.Lock(), outputs.write_png

    def interrupted(path: Path, image: np.ndarray) -> None:  # called on several writer threads at once
        with lock:
            call = next(calls)
        if call >= 3:
            raise KeyboardInterrupt
        real(path, image)
        written.append(path)

    monkeypatch.setattr(outputs, "write_png", interrupted)
    np.save(tmp_path / "digits.npy", make_digits(40, seed=6)[0])
    args = ["reconstruct", str(runs["seed"]), str(tmp_path / "digits.npy"), "--out", str(tmp_path / "recs"),
            "--batch-size", "8"]
    assert main(args) == 130
    assert len(written) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["digits.npy"]
    monkeypatch.setattr(outputs, "write_png", real)
    assert main(args) == 0 and len(list((tmp_path / "recs").iterdir())) == 41


def test_a_run_still_being_trained_is_used_with_a_warning(runs: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The lock of a live training (here a process that holds it as a training would): encode still works, and
    says the weights it read may change. A lock of a process that has ended says nothing."""
    import shutil
    import socket
    import subprocess

    run = tmp_path / "run"
    shutil.copytree(runs["seed"], run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{holder.pid}/stat").read_text().rpartition(")")[2].split()[19]
        (run / ".lock").write_text(f"{holder.pid} {socket.gethostname()} {start}\n")
        capsys.readouterr()
        assert main(["encode", str(run), "--split", "test", "--out", str(tmp_path / "a.csv")]) == 0
        err = capsys.readouterr().err
        assert f"is still being written by process {holder.pid}" in err and "may change" in err
    finally:
        holder.kill()
        holder.wait()
    assert main(["encode", str(run), "--split", "test", "--out", str(tmp_path / "b.csv")]) == 0
    assert "still being written" not in capsys.readouterr().err
