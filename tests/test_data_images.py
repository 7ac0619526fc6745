"""Training data from folders of images: layouts, formats, preprocessing, bad files, the decode cache, rebuilds.

Images are generated in each test (random pixels, the sample photos scikit-image ships, real Fashion-MNIST
from the Debian package when installed); none is committed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from vaekit.data import (
    BadInputError,
    DataError,
    bad_files_text,
    cache_dir,
    load_own_data,
    load_own_data_from_info,
    read_idx,
    skipped_warning,
)
from vaekit.data.images import ImageProblem, decode_image, luma, probe_image

from .conftest import fuzz

FASHION = Path("/usr/share/datasets/fashion-mnist")


def save(path: Path, pixels: np.ndarray | Image.Image, fmt: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(path, format=fmt, **options)
    return path


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def grey(seed: int, shape: tuple[int, ...] = (6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def cache_files() -> list[str]:
    root = cache_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def classes_folder(root: Path, counts: dict[str, int], shape: tuple[int, ...] = (6, 5)) -> dict[str, list]:
    pixels: dict[str, list] = {}
    for c, (name, n) in enumerate(counts.items()):
        pixels[name] = [grey(100 * c + i, shape) for i in range(n)]
        for i, p in enumerate(pixels[name]):
            save(root / name / f"{i:03d}.png", p)
    return pixels


# --- layouts -------------------------------------------------------------------------------------------------


def test_class_subfolders_give_sorted_labels_and_a_stratified_split(tmp_path: Path) -> None:
    pixels = classes_folder(tmp_path / "d", {"zebra": 20, "ant": 10, "moth": 30})
    save(tmp_path / "d" / "moth" / "deeper" / "x.png", grey(999))  # deeper folders belong to their class
    splits, info = load_own_data(tmp_path / "d", progress=False)
    assert info["class_names"] == ["ant", "moth", "zebra"] and splits.class_names == ("ant", "moth", "zebra")
    assert info["kind"] == "folder" and info["path"] == str((tmp_path / "d").resolve())
    assert info["split"] == "random" and info["stratified"] and info["test_fraction"] == 0.1 and info["seed"] == 0
    assert info["n_train"] + info["n_test"] == 61 and 1 <= info["n_test"] <= 15
    assert np.bincount(splits.test_labels, minlength=3).min() >= 1, "each class expecting a test image has one"
    assert splits.train_images.dtype == np.uint8 and splits.train_images.shape[1:] == (6, 5)
    assert info["channels"] == 1 and info["image_shape"] == [6, 5]
    everything = {p.tobytes(): label for label, name in enumerate(["ant", "moth", "zebra"]) for p in pixels[name]}
    everything[grey(999).tobytes()] = 1
    got = {img.tobytes(): int(lab) for img, lab in zip(
        np.concatenate([splits.train_images, splits.test_images]),
        np.concatenate([splits.train_labels, splits.test_labels]), strict=True)}
    assert got == everything, "every image once, with its class's label"
    json.loads(json.dumps(info))  # plain JSON values only


def test_split_depends_on_seed_and_fraction_only(tmp_path: Path) -> None:
    classes_folder(tmp_path / "d", {"a": 15, "b": 15})
    first, info = load_own_data(tmp_path / "d", progress=False, test_fraction=0.2, seed=3)
    again, _ = load_own_data(tmp_path / "d", progress=False, test_fraction=0.2, seed=3)
    other, _ = load_own_data(tmp_path / "d", progress=False, test_fraction=0.2, seed=4)
    assert 1 <= info["n_test"] <= 15 and np.array_equal(first.test_images, again.test_images)
    assert not np.array_equal(first.test_images, other.test_images)


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    for i in range(9):
        save(tmp_path / "d" / f"{i}.png", grey(i))
    save(tmp_path / "d" / "more" / "9.png", grey(9))  # subfolders of a flat folder are searched too
    splits, info = load_own_data(tmp_path / "d", progress=False, test_fraction=0.3)
    assert info["class_names"] is None and not info["stratified"] and splits.class_names is None
    assert info["n_train"] + info["n_test"] == 10 and 1 <= info["n_test"] <= 9
    assert not splits.train_labels.any() and not splits.test_labels.any()


def test_train_and_test_subfolders_are_used_as_given(tmp_path: Path) -> None:
    classes_folder(tmp_path / "d" / "train", {"cat": 4, "dog": 3})
    classes_folder(tmp_path / "d" / "test", {"dog": 2, "emu": 1})
    splits, info = load_own_data(tmp_path / "d", progress=False, test_fraction=0.5, seed=9)
    assert info["split"] == "given" and info["test_fraction"] is None and info["seed"] is None
    assert info["class_names"] == ["cat", "dog", "emu"]
    assert splits.train_labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and splits.test_labels.tolist() == [1, 1, 2]
    assert np.array_equal(splits.test_images[2], grey(100, (6, 5)))


def test_given_split_with_different_layouts_or_an_empty_part_is_refused(tmp_path: Path) -> None:
    classes_folder(tmp_path / "d" / "train", {"cat": 2})
    save(tmp_path / "d" / "test" / "a.png", grey(0))
    with pytest.raises(BadInputError, match="same layout in train/ and test/"):
        load_own_data(tmp_path / "d", progress=False)
    (tmp_path / "d" / "test" / "a.png").unlink()
    with pytest.raises(BadInputError, match=r"d/test: holds no usable images; put images there"):
        load_own_data(tmp_path / "d", progress=False)


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / "d" / f"{i}.png", grey(i))
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "d" / ".thumbs").mkdir()
    (tmp_path / "d" / ".thumbs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    splits, info = load_own_data(tmp_path / "d", progress=False)
    assert info["n_train"] + info["n_test"] == 3 and info["n_bad"] == 0


# --- real images ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_png_folder_gives_the_idx_pixels_exactly(tmp_path: Path) -> None:
    # Real Fashion-MNIST test images (the smaller file): the first 300 as train/, the next 100 as test/.
    images, labels = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    expected = {}
    for part, rows in (("train", range(0, 300)), ("test", range(300, 400))):
        for i in rows:
            save(tmp_path / "fashion" / part / str(labels[i]) / f"{i:05d}.png", images[i])
        order = np.array(rows)[np.lexsort((np.array(rows), labels[rows]))]  # class folder, then file name
        expected[part] = (images[order], labels[order])
    splits, info = load_own_data(tmp_path / "fashion", progress=False)
    assert info["split"] == "given" and info["channels"] == 1 and info["image_shape"] == [28, 28]
    assert info["class_names"] == [str(c) for c in range(10)]
    np.testing.assert_array_equal(splits.train_images, expected["train"][0])
    np.testing.assert_array_equal(splits.train_labels, expected["train"][1])
    np.testing.assert_array_equal(splits.test_images, expected["test"][0])
    np.testing.assert_array_equal(splits.test_labels, expected["test"][1])
    resized, _ = load_own_data(tmp_path / "fashion", image_size=28, progress=False)
    np.testing.assert_array_equal(resized.train_images, expected["train"][0]), "already NxN: untouched"


def photo_crops(folder: Path, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Colour JPEG crops (width x height) cut from scikit-image's sample photos."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    crops = []
    for i, (w, h) in enumerate(sizes):
        photo = photos[i % len(photos)]
        top, left = (37 * i) % (photo.shape[0] - h), (53 * i) % (photo.shape[1] - w)
        crop = np.ascontiguousarray(photo[top : top + h, left : left + w])
        save(folder / f"{['astronaut', 'chelsea', 'coffee', 'rocket'][i % 4]}_{i}.jpg", crop, quality=95)
        crops.append(crop)
    return crops


def test_photos_of_several_sizes_need_image_size(tmp_path: Path) -> None:
    sizes = [(64, 48)] * 5 + [(40, 40)] * 3 + [(100, 30)]
    crops = photo_crops(tmp_path / "photos", sizes)
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "photos", progress=False)
    message = str(info.value)
    assert "\n" not in message and "different sizes" in message and "--image-size" in message
    assert "64x48: 5, 40x40: 3, 100x30: 1" in message and "astronaut_8.jpg is 100x30" in message
    assert cache_files() == []
    splits, meta = load_own_data(tmp_path / "photos", image_size=32, progress=False, test_fraction=0.2)
    assert meta["channels"] == 3 and meta["image_shape"] == [32, 32, 3] and meta["image_size"] == 32
    assert splits.train_images.shape[1:] == (32, 32, 3)
    together = np.concatenate([splits.train_images, splits.test_images])
    assert len(together) == 9
    # A 40x40 crop is only scaled (nothing cut off): close to the original crop scaled down independently.
    expect = np.asarray(Image.fromarray(crops[5]).resize((32, 32), Image.Resampling.BICUBIC), dtype=np.int16)
    diffs = [np.abs(img.astype(np.int16) - expect).mean() for img in together]
    assert min(diffs) < 4, "JPEG round trip plus resizing stays within a few grey levels"


def test_image_size_crops_the_centre(tmp_path: Path) -> None:
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30, 0] = 255  # red | green | blue thirds
    stripes[:, 30:60, 1] = 255
    stripes[:, 60:, 2] = 255
    save(tmp_path / "d" / "a.png", stripes)
    save(tmp_path / "d" / "b.png", np.ascontiguousarray(stripes.transpose(1, 0, 2)))  # tall: crop top and bottom
    splits, _ = load_own_data(tmp_path / "d", image_size=12, progress=False, test_fraction=0.5)
    for image in (*splits.train_images, *splits.test_images):
        assert image.shape == (12, 12, 3)
        assert image[2:-2, 2:-2, 1].min() > 200 and image[2:-2, 2:-2, [0, 2]].max() < 40


def test_colour_modes_as_a_viewer_shows_them(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = np.zeros((5, 7), np.uint8)
    alpha[:, 3:] = 255
    alpha[:, 2] = 128
    d = tmp_path / "modes"
    save(d / "a_rgba.png", np.dstack([rgb, alpha]))
    save(d / "b_palette.png", Image.fromarray(rgb).quantize(16))
    save(d / "c_grey.png", rgb[..., 0])
    frames = [Image.fromarray(rgb).quantize(8), Image.fromarray(255 - rgb).quantize(8)]
    save(d / "d_anim.gif", frames[0], save_all=True, append_images=frames[1:])
    save(d / "e.tiff", rgb)
    save(d / "f.bmp", rgb)
    save(d / "g.webp", rgb, lossless=True)
    splits, info = load_own_data(d, progress=False, test_fraction=0.5, seed=1)
    assert info["channels"] == 3, "one colour image makes the set colour"
    by_name = _in_file_order(d)
    on_white = by_name["a_rgba.png"]
    assert (on_white[:, :2] == 255).all(), "fully transparent pixels are white"
    assert np.array_equal(on_white[:, 3:], rgb[:, 3:]), "opaque pixels keep their colour"
    half = (rgb[:, 2].astype(int) * 128 + 255 * 127 + 127) // 255
    assert np.array_equal(on_white[:, 2], half)
    assert np.array_equal(by_name["b_palette.png"], np.asarray(Image.fromarray(rgb).quantize(16).convert("RGB")))
    assert np.array_equal(by_name["c_grey.png"], np.repeat(rgb[..., :1], 3, axis=2)), "grey repeated"
    assert np.array_equal(by_name["d_anim.gif"], np.asarray(frames[0].convert("RGB"))), "first frame"
    for name in ("e.tiff", "f.bmp", "g.webp"):
        assert np.array_equal(by_name[name], rgb), name
    grey_splits, grey_info = load_own_data(d, channels=1, progress=False, test_fraction=0.5, seed=1)
    assert grey_info["channels"] == 1 and grey_splits.train_images.ndim == 3
    grey_by_name = _in_file_order(d, channels=1)
    assert np.array_equal(grey_by_name["e.tiff"], np.asarray(Image.fromarray(rgb).convert("L")))


def _in_file_order(folder: Path, **options) -> dict[str, np.ndarray]:
    """Each file's decoded image, by file name (the data before it is split)."""
    from vaekit.data.own import read_own_data

    raw = read_own_data(folder, progress=False, **options)
    assert raw.names is not None
    return dict(zip(raw.names, raw.images, strict=True))


def test_sixteen_bit_and_exif_rotation(tmp_path: Path) -> None:
    deep = np.array([[0, 257, 65535, 32896, 128, 40000]], np.uint16).repeat(4, axis=0)
    assert decode_image(encode(deep, "PNG"), channels=1)[0].tolist() == [0, 1, 255, 128, 0, 156]
    pixels = grey(1, (4, 6))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    stored = encode(pixels, "PNG", exif=exif.tobytes())
    assert probe_image(stored).height == 6 and probe_image(stored).width == 4
    assert np.array_equal(decode_image(stored, channels=1), np.rot90(pixels, k=-1))
    save(tmp_path / "d" / "a.png", pixels)
    (tmp_path / "d" / "b.png").write_bytes(stored)
    with pytest.raises(BadInputError, match="different sizes"):
        load_own_data(tmp_path / "d", progress=False)


def test_luma_matches_pillow() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(luma(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


# --- bad input -----------------------------------------------------------------------------------------------


def _truncated(tmp: Path) -> bytes:
    data = encode(grey(3, (6, 5)), "PNG")  # the size of the good images, so the header alone looks fine
    return data[: len(data) // 2]


BAD_FILES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "truncated": (_truncated, "truncated or corrupt image"),
    "text": (lambda tmp: b"hello, I am a text file\n", "a text file, not an image"),
    "binary_junk": (lambda tmp: bytes(range(200, 256)), "not an image Pillow can read (unrecognised format)"),
    "cut_header": (lambda tmp: encode(grey(5, (6, 5)), "PNG")[:20], "truncated or corrupt PNG image"),
    "empty": (lambda tmp: b"", "empty file"),
    "corrupt_jpeg": (lambda tmp: encode(grey(4, (40, 40)), "JPEG")[:300], "corrupt"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    make, problem = BAD_FILES[kind]
    for i in range(4):
        save(tmp_path / "d" / f"{i}.png", grey(i))
    bad = tmp_path / "d" / "bad.png"
    bad.write_bytes(make(tmp_path))
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "d", progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{bad}: ") and problem in message
    assert "other" not in message and "--skip-bad" in message
    assert info.value.bad == [("bad.png", message[len(f"{bad}: "):].split(";")[0])]
    assert cache_files() == [], "a failed load writes nothing"
    splits, meta = load_own_data(tmp_path / "d", progress=False, skip_bad=True)
    assert meta["n_bad"] == 1 and meta["bad"][0]["path"] == "bad.png" and problem in meta["bad"][0]["problem"]
    assert meta["n_train"] + meta["n_test"] == 4
    line = skipped_warning(meta, "RUN/bad_files.txt")
    assert line is not None and "\n" not in line and line.startswith("skipped 1 of 5 image files")
    assert "bad.png" in line and line.endswith("the list is in RUN/bad_files.txt")
    assert bad_files_text(meta).startswith("bad.png\t")


def test_every_bad_file_is_counted_before_raising(tmp_path: Path, decodes: list[str]) -> None:
    for i in range(3):
        save(tmp_path / "d" / "ok" / f"{i}.png", grey(i))
    (tmp_path / "d" / "ok" / "a_empty.png").write_bytes(b"")  # found when reading headers
    (tmp_path / "d" / "ok" / "b_text.jpg").write_bytes(b"text")
    (tmp_path / "d" / "ok" / "c_cut.png").write_bytes(_truncated(tmp_path))  # found only when decoding
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "d", progress=False)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "d" / "ok" / "a_empty.png") + ": empty file; 2 other files are bad")
    assert sorted(rel for rel, _ in info.value.bad) == ["ok/a_empty.png", "ok/b_text.jpg", "ok/c_cut.png"]
    assert cache_files() == []


def test_decompression_bomb_is_a_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    save(tmp_path / "d" / "small1.png", grey(1, (10, 10)))
    save(tmp_path / "d" / "small2.png", grey(2, (10, 10)))
    save(tmp_path / "d" / "bomb.png", grey(3, (40, 40)))  # 1,600 pixels: over the limit
    save(tmp_path / "d" / "huge.png", grey(4, (50, 50)))  # over twice the limit: Pillow itself refuses
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "d", progress=False)
    assert "bomb.png: 40x40 = 1,600 pixels is over Pillow's limit of 1,000" in str(info.value)
    assert "1 other file is bad too" in str(info.value)
    _, meta = load_own_data(tmp_path / "d", progress=False, skip_bad=True)
    assert [b["path"] for b in meta["bad"]] == ["bomb.png", "huge.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_bad_file(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / "d" / f"{i}.png", grey(i))
    locked = save(tmp_path / "d" / "locked.png", grey(9))
    locked.chmod(0)
    try:
        with pytest.raises(BadInputError, match="locked.png: cannot read file"):
            load_own_data(tmp_path / "d", progress=False)
    finally:
        locked.chmod(0o644)


def test_empty_folder_and_only_ignored_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="holds no images; vaekit reads PNG, JPEG, BMP, GIF, TIFF, WebP and PNM"):
        load_own_data(tmp_path / "empty", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    (tmp_path / "other" / ".x.png").write_bytes(b"")
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "other", progress=False)
    assert "(ignored 1 other files such as readme.txt)" in str(info.value) and "\n" not in str(info.value)


def test_fewer_than_two_images(tmp_path: Path) -> None:
    save(tmp_path / "one" / "a.png", grey(0))
    with pytest.raises(BadInputError, match="holds only 1 usable image; at least 2 are needed"):
        load_own_data(tmp_path / "one", progress=False)
    (tmp_path / "one" / "b.png").write_bytes(b"junk")
    with pytest.raises(BadInputError, match=r"holds only 1 usable image \(1 bad files left out\)"):
        load_own_data(tmp_path / "one", progress=False, skip_bad=True)
    assert cache_files() == []


def test_symlink_loops_do_not_hang(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for i in range(3):
        save(d / "cats" / f"{i}.png", grey(i))
    (d / "cats" / "again").symlink_to(d)  # a folder linking back to the top
    (d / "cats" / "self.png").symlink_to(d / "cats" / "self.png")  # a file linking to itself
    (d / "dogs").mkdir()
    save(d / "dogs" / "0.png", grey(7))
    (d / "dogs" / "alias").symlink_to(d / "cats")  # a second way to the same folder: not counted twice
    with pytest.raises(BadInputError) as info:
        load_own_data(d, progress=False)
    message = str(info.value)
    assert message.startswith(f"{d / 'cats' / 'again'}: symlink loop (links back to .)")
    assert "1 other file is bad too" in message
    splits, meta = load_own_data(d, progress=False, skip_bad=True)
    assert {b["path"] for b in meta["bad"]} == {"cats/again", "cats/self.png"}
    assert meta["n_train"] + meta["n_test"] == 4 and meta["class_names"] == ["cats", "dogs"]


def test_not_a_folder_or_array(tmp_path: Path) -> None:
    save(tmp_path / "a.png", grey(0))
    with pytest.raises(BadInputError, match="a.png: not a folder, .npy or .npz file; pass the folder holding it"):
        load_own_data(tmp_path / "a.png")
    with pytest.raises(BadInputError, match="no such file or folder"):
        load_own_data(tmp_path / "missing")
    with pytest.raises(DataError, match="channels must be 1"):
        load_own_data(tmp_path, channels=2)
    with pytest.raises(DataError, match="test fraction"):
        load_own_data(tmp_path, test_fraction=1.0)
    with pytest.raises(DataError, match="image size"):
        load_own_data(tmp_path, image_size=0)


# --- the cache -----------------------------------------------------------------------------------------------


def test_second_load_comes_from_the_cache(tmp_path: Path, decodes: list[str]) -> None:
    classes_folder(tmp_path / "d", {"a": 6, "b": 6})
    first, info = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12
    entries = [p for p in (cache_dir() / "images").iterdir()]
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == [
        "images.npy", "labels.npy", "meta.json"]
    second, info2 = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12, "nothing decoded the second time"
    assert info2 == info
    assert np.array_equal(first.train_images, second.train_images)
    loaded = np.load(entries[0] / "images.npy", mmap_mode="r")
    assert loaded.shape == (12, 6, 5)


def test_changed_folder_is_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    classes_folder(tmp_path / "d", {"a": 5, "b": 5})
    _, before = load_own_data(tmp_path / "d", progress=False)
    save(tmp_path / "d" / "a" / "000.png", grey(77))
    os.utime(tmp_path / "d" / "a" / "000.png", ns=(1, 1))
    _, after = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 20 and after["digest"] != before["digest"]
    assert len(list((cache_dir() / "images").iterdir())) == 1, "the stale entry of the folder is removed"
    _, other_options = load_own_data(tmp_path / "d", progress=False, channels=3)
    assert len(list((cache_dir() / "images").iterdir())) == 2, "other options keep their own entry"


def test_damaged_cache_entry_is_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    classes_folder(tmp_path / "d", {"a": 3, "b": 3})
    first, _ = load_own_data(tmp_path / "d", progress=False)
    (entry,) = (cache_dir() / "images").iterdir()
    (entry / "images.npy").write_bytes(b"garbage")
    again, _ = load_own_data(tmp_path / "d", progress=False)
    assert len(decodes) == 12 and np.array_equal(first.train_images, again.train_images)


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    classes_folder(tmp_path / "d", {"a": 3})
    splits, _ = load_own_data(tmp_path / "d", progress=False, cache=False)
    assert len(splits.train_images) + len(splits.test_images) == 3 and cache_files() == []


def test_progress_bar_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes_folder(tmp_path / "d", {"a": 3})
    load_own_data(tmp_path / "d", progress=True)
    assert "decoding images" in capsys.readouterr().err


# --- rebuilding a run's data ---------------------------------------------------------------------------------


def test_rebuild_from_info(tmp_path: Path) -> None:
    classes_folder(tmp_path / "d", {"a": 8, "b": 8})
    splits, info = load_own_data(tmp_path / "d", progress=False, test_fraction=0.25, seed=5, channels=3)
    stored = json.loads(json.dumps(info))
    again, _ = load_own_data_from_info(stored)
    assert np.array_equal(again.test_images, splits.test_images) and again.test_images.shape[-1] == 3
    moved = tmp_path / "moved"
    (tmp_path / "d").rename(moved)
    with pytest.raises(DataError, match="is no longer there; give the path of a copy"):
        load_own_data_from_info(stored)
    again, _ = load_own_data_from_info(stored, moved)
    assert np.array_equal(again.train_images, splits.train_images)
    save(moved / "b" / "extra.png", grey(1234))
    with pytest.raises(DataError) as exc:
        load_own_data_from_info(stored, moved)
    assert "now gives 17 images of [6, 5, 3] (the run was trained on 16 images of [6, 5, 3])" in str(exc.value)
    (moved / "b" / "extra.png").unlink()
    save(moved / "b" / "000.png", grey(4321))
    with pytest.raises(DataError, match="same number of images .* but different pixels"):
        load_own_data_from_info(stored, moved)


def test_rebuild_reuses_the_decode_cache(tmp_path: Path, decodes: list[str]) -> None:
    classes_folder(tmp_path / "d", {"a": 4, "b": 4})
    splits, info = load_own_data(tmp_path / "d", progress=False)
    again, _ = load_own_data_from_info(json.loads(json.dumps(info)))
    assert len(decodes) == 8 and np.array_equal(again.train_images, splits.train_images)


def test_rebuild_refuses_a_damaged_record(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lacks"):
        load_own_data_from_info({"kind": "folder"})
    with pytest.raises(DataError, match="not a JSON object"):
        load_own_data_from_info([])  # type: ignore[arg-type]


# --- fuzzing -------------------------------------------------------------------------------------------------


def _seed_images() -> list[bytes]:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rgb[..., 0]])
    return [
        encode(rgb, "PNG"), encode(rgb[..., 0], "PNG"), encode(rgba, "PNG"), encode(rgb, "JPEG"),
        encode(rgb[..., 0], "JPEG"), encode(Image.fromarray(rgb).quantize(4), "GIF"), encode(rgb, "BMP"),
        encode(rgb, "TIFF"), encode(rgb, "WEBP", lossless=True), encode(np.uint16(rgb[..., 0]) * 200, "PNG"),
        encode(rgb, "PPM"),
    ]


SEEDS = _seed_images()
# Edits as bytes, four per edit (operation, position high and low byte, value): cheaper for hypothesis to draw
# than structured tuples, and they shrink just as well.
edits = st.binary(min_size=4, max_size=16)


def _mutate(data: bytes, raw_edits: bytes) -> bytes:
    buf = bytearray(data)
    for k in range(0, len(raw_edits) - 3, 4):
        op, pos, value = raw_edits[k] % 5, (raw_edits[k + 1] << 8 | raw_edits[k + 2]) % (len(buf) + 1), raw_edits[k + 3]
        if op == 0 and pos < len(buf):
            buf[pos] ^= 1 << (value % 8)
        elif op == 1 and pos < len(buf):
            buf[pos] = value
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf[pos:pos] = bytes([value])
        elif pos < len(buf):
            del buf[pos]
    return bytes(buf)


@contextlib.contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """A low decompression-bomb limit, so mutated headers declaring huge images are refused quickly."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image(data: bytes, channels: int, image_size: int | None) -> None:
    """The property: an ImageProblem (one short line), or uint8 pixels of the promised shape."""
    try:
        header = probe_image(data)
        pixels = decode_image(data, channels=channels, image_size=image_size)
    except ImageProblem as exc:
        assert "\n" not in str(exc) and 0 < len(str(exc)) < 300
        event("refused")
        return
    event("decoded")
    assert pixels.dtype == np.uint8
    h, w = (image_size, image_size) if image_size else (header.height, header.width)
    assert pixels.shape == ((h, w) if channels == 1 else (h, w, 3))


@fuzz(1000)
@given(st.integers(0, len(SEEDS) - 1), edits, st.sampled_from([1, 3]), st.sampled_from([None, 4]))
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_mutated_images(seed: int, raw_edits: bytes, channels: int, image_size: int | None) -> None:
    with pixel_limit(20_000):
        check_image(_mutate(SEEDS[seed], raw_edits), channels, image_size)


@fuzz(300)
@given(st.binary(max_size=200), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"]))
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_random_bytes(data: bytes, magic: bytes) -> None:
    with pixel_limit(20_000):
        check_image(magic + data, 3, None)


@fuzz(100)
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(st.lists(st.tuples(st.integers(0, len(SEEDS) - 1), st.booleans(), edits), min_size=1, max_size=5))
def test_fuzz_folders(tmp_path_factory: pytest.TempPathFactory, files: list) -> None:
    """A folder of valid and damaged files: a one-line BadInputError counting exactly the files that fail
    on their own, or splits holding every file; with skip_bad, exactly the good ones."""
    root = tmp_path_factory.mktemp("fuzz")
    expected_bad = set()
    for i, (seed, damaged, raw_edits) in enumerate(files):
        data = _mutate(SEEDS[seed], raw_edits) if damaged else SEEDS[seed]
        name = f"{i}.img.png"
        (root / name).write_bytes(data)
        try:
            with pixel_limit(20_000):
                decode_image(data, channels=3, image_size=4)
        except ImageProblem:
            expected_bad.add(name)
    n_good = len(files) - len(expected_bad)
    try:
        with pixel_limit(20_000):
            _, info = load_own_data(root, image_size=4, channels=3, progress=False, skip_bad=True, cache=False)
    except BadInputError as exc:
        assert "\n" not in str(exc)
        assert (n_good < 2 and "at least 2" in str(exc)) or "images are identical" in str(exc)
        return
    assert {b["path"] for b in info["bad"]} == expected_bad
    assert info["n_train"] + info["n_test"] == n_good
