"""Your own images are trained on as they are: the decode cache never serves other pixels, the held-out images
stay held out when the folder changes, split folders and run folders are not taken for classes, a run resumes
from any directory, and a memory-mapped array is split holding one copy of it.

Every image is generated in the test (random pixels written as PNG or BMP); none is committed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main
from vaekit.data import BadInputError, DataError, cache_dir, load_own_data, load_own_data_from_info
from vaekit.data.own import read_own_data

QUICK = ["--epochs", "1", "--device", "cpu", "--no-artifacts", "--quiet"]


def grey(seed: int, shape: tuple[int, ...] = (6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def class_folder(root: Path, counts: dict[str, int], first_seed: int = 0) -> None:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save(root / name / f"{i:04d}.png", grey(first_seed + 1000 * c + i))


def keys(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def cache_entry() -> Path:
    (entry,) = (cache_dir() / "images").iterdir()
    return entry


# --- the decode cache ----------------------------------------------------------------------------------------


def test_two_folders_with_the_same_names_sizes_and_times_keep_their_own_pixels(tmp_path: Path) -> None:
    for folder, seed in (("a", 0), ("b", 100)):
        for i in range(4):  # BMP: the same size for any pixels of the same shape
            os.utime(save(tmp_path / folder / f"{i}.bmp", grey(seed + i), "BMP"), ns=(10**18, 10**18))
    _, info_a = load_own_data(tmp_path / "a", progress=False)
    raw_b = read_own_data(tmp_path / "b", progress=False)
    assert keys(raw_b.images) == keys(np.stack([grey(100 + i) for i in range(4)]))
    _, info_b = load_own_data(tmp_path / "b", progress=False)
    assert info_b["digest"] != info_a["digest"]


@pytest.mark.parametrize("how", ["in place", "replaced", "copy2"])
def test_a_file_rewritten_with_its_size_and_time_is_decoded_again(tmp_path: Path, decodes: list[str],
                                                                   how: str) -> None:
    for i in range(3):
        save(tmp_path / "d" / f"{i}.bmp", grey(i), "BMP")
    target = tmp_path / "d" / "0.bmp"
    stat = target.stat()
    load_own_data(tmp_path / "d", progress=False)
    new = save(tmp_path / "new.bmp", grey(50), "BMP")
    if how == "in place":  # cp -p onto the file: same inode, new bytes, old times
        target.write_bytes(new.read_bytes())
    elif how == "replaced":  # rsync -a: a new file renamed over the old one
        os.replace(new, target)
    else:
        shutil.copy2(new, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    raw = read_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 6 and grey(50).tobytes() in keys(raw.images)


@pytest.mark.parametrize("damage", ["images", "labels"])
def test_a_flipped_byte_in_the_cached_arrays_is_decoded_again(tmp_path: Path, decodes: list[str],
                                                               damage: str) -> None:
    class_folder(tmp_path / "d", {"a": 3, "b": 3})
    first, info = load_own_data(tmp_path / "d", progress=False)
    array_file = cache_entry() / f"{damage}.npy"
    data = bytearray(array_file.read_bytes())
    data[-1] ^= 0x01  # the last pixel or label, after the header
    array_file.write_bytes(bytes(data))
    again, info_again = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12, "the damaged entry is not used"
    assert info_again["digest"] == info["digest"]
    assert np.array_equal(again.train_images, first.train_images)
    assert np.array_equal(again.train_labels, first.train_labels)


@pytest.mark.parametrize("meta", [
    b"{not json", b"\xff\xfe", b"[]", b"null", b'{"format": 2}',
    "drop:bad", "drop:files", "drop:digest", "set:bad=[[1, 2]]", "set:bad=[\"x\"]", "set:files=[\"a\"]",
    "set:n_given_train=99", "set:n_given_train=\"3\"", "set:labelled=1", "set:digest=\"0\"", "set:shape=[1]",
])
def test_a_damaged_meta_json_is_decoded_again(tmp_path: Path, decodes: list[str], meta: bytes | str) -> None:
    class_folder(tmp_path / "d", {"a": 3, "b": 3})
    first, _ = load_own_data(tmp_path / "d", progress=False)
    path = cache_entry() / "meta.json"
    if isinstance(meta, bytes):
        path.write_bytes(meta)
    else:
        record = json.loads(path.read_text())
        action, _, change = meta.partition(":")
        if action == "drop":
            del record[change]
        else:
            field, _, value = change.partition("=")
            record[field] = json.loads(value)
        path.write_text(json.dumps(record))
    again, _ = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12 and np.array_equal(again.test_images, first.test_images)
    third, _ = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12, "the entry written again is used"


# --- the random split ----------------------------------------------------------------------------------------


def _sides(folder: Path, fraction: float = 0.1) -> tuple[set[bytes], set[bytes]]:
    splits, _ = load_own_data(folder, progress=False, test_fraction=fraction)
    return keys(splits.train_images), keys(splits.test_images)


def test_adding_an_image_moves_no_test_image_to_training(tmp_path: Path) -> None:
    class_folder(tmp_path / "d", {"a": 150, "b": 100})
    train, test = _sides(tmp_path / "d")
    assert 5 <= len(test) <= 50
    for i in range(5):
        save(tmp_path / "d" / "a" / f"new{i}.png", grey(5000 + i))
        new_train, new_test = _sides(tmp_path / "d")
        assert test <= new_test and train <= new_train, "every image keeps its side"
        assert len(new_train | new_test) == len(train | test) + 1
        train, test = new_train, new_test


def test_deleting_a_training_image_moves_no_test_image(tmp_path: Path) -> None:
    class_folder(tmp_path / "d", {"a": 150, "b": 100})
    raw = read_own_data(tmp_path / "d", progress=False)
    train, test = _sides(tmp_path / "d")
    assert raw.names is not None
    by_pixels = dict(zip((image.tobytes() for image in raw.images), raw.names, strict=True))
    for gone in sorted(by_pixels[key] for key in train)[:5]:
        (tmp_path / "d" / gone).unlink()
        new_train, new_test = _sides(tmp_path / "d")
        assert new_test == test and new_train == train - {next(k for k, n in by_pixels.items() if n == gone)}
        train = new_train


def test_identical_files_under_two_names_are_on_one_side(tmp_path: Path) -> None:
    class_folder(tmp_path / "d", {"a": 30, "b": 30})
    for path in sorted((tmp_path / "d").rglob("*.png")):
        shutil.copy(path, path.with_name("copy-" + path.name))
    shutil.copytree(tmp_path / "d" / "a", tmp_path / "d" / "c")  # the same pictures in another class too
    train, test = _sides(tmp_path / "d", 0.3)
    assert test and train and not (train & test), "no test image is also a training image"


def test_identical_pixels_from_different_files_are_on_one_side(tmp_path: Path) -> None:
    for i in range(40):
        save(tmp_path / "d" / f"{i}.png", grey(i))
        save(tmp_path / "d" / f"{i}.bmp", grey(i), "BMP")  # other bytes, the same pixels
    train, test = _sides(tmp_path / "d", 0.3)
    assert test and train and not (train & test)


def test_the_fraction_is_met_on_average() -> None:
    n, fraction = 4000, 0.2
    images = np.random.default_rng(1).integers(0, 256, (n, 3, 3), dtype=np.uint8)
    _, info = load_own_data(images, test_fraction=fraction)
    assert abs(info["n_test"] - n * fraction) < 4 * np.sqrt(n * fraction * (1 - fraction))


def test_tiny_data_has_a_test_and_a_training_image_and_small_classes_a_test_image() -> None:
    for seed in range(20):
        images = np.random.default_rng(seed).integers(0, 256, (2, 3, 3), dtype=np.uint8)
        _, info = load_own_data(images, test_fraction=0.01)
        assert (info["n_train"], info["n_test"]) == (1, 1)
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 3), dtype=np.uint8)
    labels = np.array([0] * 30 + [1] * 10)
    splits, _ = load_own_data((images, labels), test_fraction=0.1)
    assert set(splits.test_labels.tolist()) == {0, 1}, "a class of 10 at 10% gets its test image"


def test_identical_images_only_are_refused_in_one_line() -> None:
    with pytest.raises(BadInputError) as exc:
        load_own_data(np.zeros((5, 3, 3), np.uint8))
    assert "all 5 images are identical" in str(exc.value) and "\n" not in str(exc.value)


def test_a_record_of_the_old_positional_split_is_refused_in_one_line(tmp_path: Path) -> None:
    class_folder(tmp_path / "d", {"a": 6, "b": 6})
    _, info = load_own_data(tmp_path / "d", progress=False)
    old = {**json.loads(json.dumps(info)), "version": 1}
    with pytest.raises(DataError, match="drawn by an older vaekit, by position.*retrain the run"):
        load_own_data_from_info(old)
    class_folder(tmp_path / "g" / "train", {"a": 3})
    class_folder(tmp_path / "g" / "test", {"a": 2}, first_seed=50)
    _, given = load_own_data(tmp_path / "g", progress=False)
    again, _ = load_own_data_from_info({**json.loads(json.dumps(given)), "version": 1})
    assert len(again.test_images) == 2, "a given split recorded by the older vaekit still rebuilds"


def test_data_split_lists_the_held_out_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "d", {"cat": 40, "dog": 30})
    splits, info = load_own_data(tmp_path / "d", progress=False, test_fraction=0.2)
    assert main(["data", "split", str(tmp_path / "d"), "--test-fraction", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["n_train"], report["n_test"]) == (info["n_train"], info["n_test"])
    held = np.stack([np.asarray(Image.open(tmp_path / "d" / rel)) for rel in report["test"]])
    assert keys(held) == keys(splits.test_images)
    assert sum(c["test"] for c in report["classes"].values()) == info["n_test"]
    assert set(report["classes"]) == {"cat", "dog"} and len(report["train"]) == info["n_train"]
    assert main(["data", "split", str(tmp_path / "d"), "--test-fraction", "0.2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{info['n_train']} train, {info['n_test']} test" in out
    assert all(f"  {rel}\n" in out for rel in report["test"]) and "cat" in out
    assert main(["data", "split", str(tmp_path / "d"), "--test-fraction", "1.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--test-fraction must be a number between 0 and 1" in line


def test_data_split_of_an_array_file_lists_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    splits, _ = load_own_data(tmp_path / "x.npy")
    assert main(["data", "split", str(tmp_path / "x.npy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] is None and keys(x[report["test"]]) == keys(splits.test_images)


def test_data_split_lists_what_training_holds_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    import vaekit
    from vaekit import run as runs

    class_folder(tmp_path / "d", {"cat": 12, "dog": 10})
    config = vaekit.TrainConfig(data=str(tmp_path / "d"), epochs=1, val_fraction=0, progress=False, artifacts=False,
                                test_fraction=0.25)
    vaekit.train(config, tmp_path / "run")
    own = runs.read_config(tmp_path / "run")[2]["own"]
    assert main(["data", "split", str(tmp_path / "d"), "--test-fraction", "0.25", "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["test"]
    order = sorted(p.relative_to(tmp_path / "d").as_posix() for p in (tmp_path / "d").rglob("*.png"))
    indices = np.array(sorted(order.index(rel) for rel in held), dtype="<i8")
    assert hashlib.sha256(indices.data).hexdigest() == own["test_indices_sha256"]


# --- run folders and split folders inside the data -----------------------------------------------------------


def test_a_run_folder_inside_the_data_is_skipped_with_one_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "photos", {"cats": 5, "dogs": 5})
    run = tmp_path / "photos" / "runs" / "vae-1"
    save(run / "figures" / "samples.png", grey(1))
    save(run / "reconstructions.png", grey(2))
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"weights")
    splits, info = load_own_data(tmp_path / "photos", progress=False)
    assert info["class_names"] == ["cats", "dogs"] and info["n_train"] + info["n_test"] == 10
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "skipped 1 vaekit run folder inside the data (e.g. runs/vae-1/)" in line
    (run / "model.safetensors").unlink()  # no longer a run folder: its images are data
    _, info = load_own_data(tmp_path / "photos", progress=False)
    assert info["class_names"] == ["cats", "dogs", "runs"]


def test_training_inside_the_data_folder_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "photos", {"cats": 12, "dogs": 12}, first_seed=7)
    monkeypatch.chdir(tmp_path / "photos")
    assert main(["train", "--data", ".", "--out", "runs/one", "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    assert list(Path("runs/one").rglob("*.png")), "the run wrote figures inside the data folder"
    assert main(["train", "--data", ".", "--out", "runs/two", *QUICK]) == 0
    record = json.loads(Path("runs/two/config.json").read_text())["data"]["own"]
    assert record["class_names"] == ["cats", "dogs"] and record["n_train"] + record["n_test"] == 24
    assert "skipped 1 vaekit run folder" in capsys.readouterr().err


@pytest.mark.parametrize("names", [("Train", "Test"), ("TRAIN", "test"), ("train", "Validation"),
                                   ("Training", "Testing"), ("training_set", "test_set"), ("Train-Set", "TEST SET")])
def test_split_folders_in_any_case_give_the_split(tmp_path: Path, names: tuple[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "d" / names[0], {"a": 4, "b": 3})
    class_folder(tmp_path / "d" / names[1], {"a": 2, "b": 1}, first_seed=500)
    splits, info = load_own_data(tmp_path / "d", progress=False)
    assert info["split"] == "given" and info["class_names"] == ["a", "b"]
    assert (info["n_train"], info["n_test"]) == (7, 3)
    assert keys(splits.test_images) == {grey(500 + i).tobytes() for i in (0, 1, 1000)}
    err = capsys.readouterr().err
    if names[1] == "Validation":
        assert "using Validation/ as the test split" in err
    else:
        assert err == ""


def test_val_beside_train_and_test_is_left_out_with_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for part, seed in (("train", 0), ("val", 200), ("test", 400)):
        class_folder(tmp_path / "d" / part, {"a": 3}, first_seed=seed)
    _, info = load_own_data(tmp_path / "d", progress=False)
    assert (info["n_train"], info["n_test"], info["class_names"]) == (3, 3, ["a"])
    assert "val/ is not used: train/ and test/ give the split" in capsys.readouterr().err


@pytest.mark.parametrize("layout, found", [
    (("train", "cats"), "holds train/, a split name, but no test/ (or val/) folder beside it"),
    (("cats", "Test"), "holds Test/, a split name, but no train/ folder beside it"),
    (("train", "val", "valid"), "holds val/ and valid/, two folders for one split"),
])
def test_a_split_folder_without_its_partner_is_refused_in_one_line(tmp_path: Path, layout: tuple[str, ...],
                                                                   found: str) -> None:
    for i, name in enumerate(layout):
        class_folder(tmp_path / "d" / name, {"x": 3}, first_seed=100 * i)
    with pytest.raises(BadInputError) as exc:
        load_own_data(tmp_path / "d", progress=False)
    assert found in str(exc.value) and "\n" not in str(exc.value)


# --- resuming from another directory -------------------------------------------------------------------------


def test_resume_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class_folder(tmp_path / "work" / "photos", {"a": 10, "b": 10})
    monkeypatch.chdir(tmp_path / "work")
    run = tmp_path / "run"
    assert main(["train", "--data", "photos", "--out", str(run), *QUICK]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


# --- memory ----------------------------------------------------------------------------------------------------

_PEAK = textwrap.dedent("""
    import json, sys
    from vaekit.data import load_own_data

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    if sys.argv[2] == "keep-pages":
        import vaekit.data.chunked as chunked
        chunked._releaser = lambda array: (lambda chunk: None)
    load_own_data(sys.argv[3], progress=False)  # a tiny file first: everything loading imports is in place
    before = status("VmRSS")
    splits, info = load_own_data(sys.argv[1], progress=False)
    print(json.dumps({"grown": status("VmHWM") - before, "n": info["n_train"] + info["n_test"]}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_memory_mapped_npy_is_split_holding_one_copy(tmp_path: Path) -> None:
    n, shape = 4000, (96, 96, 3)  # 110 MB
    images = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
    rng = np.random.default_rng(0)
    for start in range(0, n, 500):
        images[start : start + 500] = rng.integers(0, 256, (500, *shape), dtype=np.uint8)
    images.flush()
    del images
    size = n * int(np.prod(shape))
    np.save(tmp_path / "tiny.npy", rng.integers(0, 256, (10, 2, 2), dtype=np.uint8))

    def grown(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "big.npy"), mode,
                              str(tmp_path / "tiny.npy")], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        result = json.loads(out.stdout)
        assert result["n"] == n
        return result["grown"]

    chunk = 1 << 24  # vaekit.data.chunked.CHUNK_BYTES
    assert grown("release-pages") < size + 3 * chunk, "one copy of the data, plus a chunk or two"
    assert grown("keep-pages") > 1.6 * size, "the measure sees the file's pages when they are kept"


def test_empty_class_folders_and_test_only_classes_are_said_in_one_line_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "d" / "train", {"a": 4, "b": 3})
    class_folder(tmp_path / "d" / "test", {"a": 2, "b": 1, "c": 2}, first_seed=500)
    (tmp_path / "d" / "train" / "empty").mkdir()
    load_own_data(tmp_path / "d", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert any("1 class folder holds no images (train/empty/) and is left out" in line for line in err), err
    assert any("class c has test images but no training images" in line for line in err), err
    assert len(err) == 2


def test_a_folder_of_only_run_folders_or_bad_files_is_not_called_empty(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    class_folder(tmp_path / "d", {"a": 4, "b": 3})
    (tmp_path / "d" / "broken").mkdir()
    (tmp_path / "d" / "broken" / "x.png").write_bytes(b"not an image")
    load_own_data(tmp_path / "d", progress=False, skip_bad=True)
    assert "no images" not in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="a newline in a file name")
def test_a_data_path_with_a_newline_keeps_every_message_on_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "sp ace\nnl"
    class_folder(data, {"a": 6, "b": 6})
    (data / "a" / "bad.png").write_bytes(b"not an image")
    run = tmp_path / "run\nx"
    assert main(["train", "--data", str(data), "--out", str(run), "--skip-bad", "--epochs", "1", "--device", "cpu",
                 "--no-artifacts"]) == 0
    err = capsys.readouterr().err
    assert "sp ace\\nnl" in err and "run\\nx" in err
    assert all("sp ace" not in line or "sp ace\\nnl" in line for line in err.splitlines())
    assert not any(line.startswith("nl") or line.startswith("x/") for line in err.splitlines())
