"""Training data given as arrays: .npy/.npz files, NumPy arrays, torch tensors; conversions, errors, splits."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from vaekit.data import BadInputError, DataError, load_own_data, load_own_data_from_info
from vaekit.data.arrays import normalise_images
from vaekit.data.own import split_indices

from .conftest import fuzz


def pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def all_images(splits) -> np.ndarray:
    return np.concatenate([splits.train_images, splits.test_images])


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- files ---------------------------------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_used_as_is(tmp_path: Path) -> None:
    x = pixels((20, 6, 5))
    np.save(tmp_path / "x.npy", x)
    splits, info = load_own_data(tmp_path / "x.npy", test_fraction=0.25)
    assert info["kind"] == "array" and info["path"] == str((tmp_path / "x.npy").resolve())
    assert info["class_names"] is None and info["channels"] == 1 and info["image_shape"] == [6, 5]
    assert info["n_train"] + info["n_test"] == 20
    train, test = split_indices(x, None, 0.25, 0)
    assert np.array_equal(splits.train_images, x[train]) and np.array_equal(splits.test_images, x[test])
    from vaekit.data.arrays import read_array_file

    assert isinstance(read_array_file(tmp_path / "x.npy").images, np.memmap)


def test_npz_images_and_labels_stratified(tmp_path: Path) -> None:
    x, y = pixels((40, 4, 4, 3)), np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    splits, info = load_own_data(tmp_path / "d.npz", test_fraction=0.2, seed=2)
    assert info["stratified"] and info["channels"] == 3 and info["image_shape"] == [4, 4, 3]
    assert np.bincount(splits.test_labels, minlength=4).min() >= 1, "each class expecting a test image has one"
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    again, _ = load_own_data(tmp_path / "xy.npz", test_fraction=0.2, seed=2)
    assert np.array_equal(again.test_images, splits.test_images)


def test_keras_style_npz_keeps_its_split(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", x_train=pixels((6, 3, 3), 1), y_train=np.arange(6) % 2, x_test=pixels((3, 3, 3), 2),
             y_test=np.array([1, 0, 1]))
    splits, info = load_own_data(tmp_path / "k.npz")
    assert info["split"] == "given" and (info["n_train"], info["n_test"]) == (6, 3)
    assert np.array_equal(splits.test_images, pixels((3, 3, 3), 2)) and splits.test_labels.tolist() == [1, 0, 1]


def test_single_array_npz_and_uint8_labels(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "one.npz", pixels((5, 2, 2)))
    splits, info = load_own_data(tmp_path / "one.npz")
    assert info["n_train"] + info["n_test"] == 5 and splits.train_labels.dtype == np.uint8


# --- in memory -----------------------------------------------------------------------------------------------


def test_array_tensor_and_tuple_give_the_same_pixels() -> None:
    x = pixels((10, 5, 5, 3))
    from_array, info = load_own_data(x)
    from_tensor, _ = load_own_data(torch.from_numpy(x))
    from_float_tensor, _ = load_own_data(torch.from_numpy(x).float() / 255)
    assert info["path"] is None and info["kind"] == "array"
    for other in (from_tensor, from_float_tensor):
        assert np.array_equal(all_images(other), all_images(from_array))
    labelled, info = load_own_data((x, np.arange(10) % 2))
    assert info["stratified"] and set(labelled.test_labels.tolist()) == {0, 1}, "a test image of each class"
    assert len(labelled.train_labels) + len(labelled.test_labels) == 10
    with pytest.raises(DataError, match="in-memory array"):
        load_own_data_from_info(json.loads(json.dumps(info)))
    again, _ = load_own_data_from_info(info, (x, np.arange(10) % 2))
    assert np.array_equal(again.test_images, labelled.test_images)
    with pytest.raises(DataError, match="different pixels or labels"):
        load_own_data_from_info(info, (x, (np.arange(10) + 1) % 2))


def test_float_images_round_to_uint8() -> None:
    x = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.2, 1.0, 254.5 / 255], np.float64).reshape(1, 2, 3).repeat(2, axis=0)
    out = normalise_images(x, "x", channels=None, image_size=None)
    assert out[0].ravel().tolist() == np.rint(x[0].ravel() * 255).astype(int).tolist() == [0, 0, 2, 51, 255, 254]
    half = normalise_images(x.astype(np.float16), "x", channels=None, image_size=None)
    assert np.abs(half.astype(int) - out.astype(int)).max() <= 1


def test_channels_alpha_and_size_conversions() -> None:
    rgb = pixels((3, 6, 4, 3))
    rgba = np.concatenate([rgb, np.full((3, 6, 4, 1), 255, np.uint8)], axis=3)
    rgba[:, 0, 0, 3] = 0
    out = normalise_images(rgba, "x", channels=None, image_size=None)
    assert out.shape == (3, 6, 4, 3) and (out[:, 0, 0] == 255).all() and np.array_equal(out[:, 1:], rgb[:, 1:])
    grey = normalise_images(rgb, "x", channels=1, image_size=None)
    assert np.array_equal(grey[1], np.asarray(Image.fromarray(rgb[1]).convert("L"))), "the same luma as Pillow"
    single = normalise_images(rgb[..., :1], "x", channels=None, image_size=None)
    assert single.shape == (3, 6, 4) and np.array_equal(single, rgb[..., 0])
    colour = normalise_images(rgb[..., 0], "x", channels=3, image_size=None)
    assert colour.shape == (3, 6, 4, 3) and np.array_equal(colour[..., 2], rgb[..., 0])
    small = normalise_images(rgb, "x", channels=None, image_size=4)
    assert small.shape == (3, 4, 4, 3)
    same = normalise_images(rgb[:, :4], "x", channels=None, image_size=4)
    assert np.array_equal(same, rgb[:, :4]), "already the right size: untouched"


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.full((3, 2, 2), np.nan), "image 0 holds NaN or infinite values"),
        (np.concatenate([np.zeros((2, 2, 2)), np.full((1, 2, 2), np.inf)]), "image 2 holds NaN"),
        (np.full((3, 2, 2), 1.5), "values range from 1.5 to 1.5"),
        (np.full((3, 2, 2), -0.1), "float images must be in [0, 1]"),
        (np.zeros((3, 2, 2), np.int64), "dtype int64; use uint8"),
        (np.zeros((3, 2, 2), bool), "dtype bool"),
        (np.zeros((3, 2, 2), np.complex64), "not numbers"),
        (np.zeros((3, 4), np.uint8), "shape (3, 4); expected (N, H, W)"),
        (np.zeros((3, 2, 2, 2, 1), np.uint8), "expected (N, H, W)"),
        (np.zeros((3, 3, 8, 8), np.uint8), "channels-first data: use np.moveaxis(x, 1, -1)"),
        (np.zeros((1, 2, 2), np.uint8), "holds 1 image; at least 2 are needed"),
        (np.zeros((3, 0, 2), np.uint8), "with no pixels"),
    ],
)
def test_bad_arrays_are_one_line(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(BadInputError) as info:
        load_own_data(array)
    assert fragment in one_line(info)
    assert one_line(info).startswith("the array given as data: ")


def test_bad_labels(tmp_path: Path) -> None:
    x = pixels((4, 2, 2))
    for labels, fragment in [
        (np.zeros(3, int), "labels have shape (3,) but there are 4 images"),
        (np.array([0, 1, -1, 0]), "label -1 is negative"),
        (np.zeros(4), "labels have dtype float64; labels must be integers"),
    ]:
        with pytest.raises(BadInputError, match=re.escape(fragment)):
            load_own_data((x, labels))
    np.savez(tmp_path / "both.npz", x=x, images=x)
    with pytest.raises(BadInputError, match="holds both 'x' and 'images'"):
        load_own_data(tmp_path / "both.npz")
    np.savez(tmp_path / "half.npz", x_train=x, x_test=x, y_train=np.zeros(4, int))
    with pytest.raises(BadInputError, match="holds y_train but not y_test; give labels for both splits or for neither"):
        load_own_data(tmp_path / "half.npz")
    np.savez(tmp_path / "what.npz", a=x, b=x)
    with pytest.raises(BadInputError, match="holds arrays 'a', 'b'; put the images under 'x'"):
        load_own_data(tmp_path / "what.npz")


def test_unsafe_or_broken_files(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "objects.npy")
    assert "holds Python objects (dtype object), which vaekit never loads" in one_line(info)
    np.savez(tmp_path / "objects.npz", x=np.array([1, None], dtype=object))
    with pytest.raises(BadInputError, match=r"objects.npz\[x\]: holds Python objects"):
        load_own_data(tmp_path / "objects.npz")
    import pickle

    (tmp_path / "pickled.npy").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(BadInputError, match="pickled.npy: holds Python objects"):
        load_own_data(tmp_path / "pickled.npy")
    good = io.BytesIO()
    np.save(good, pixels((4, 3, 3)))
    (tmp_path / "cut.npy").write_bytes(good.getvalue()[:-5])
    with pytest.raises(BadInputError, match="cut.npy: not a readable NumPy file"):
        load_own_data(tmp_path / "cut.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(BadInputError, match="empty.npz: not a readable NumPy file"):
        load_own_data(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(BadInputError) as info:
        load_own_data(tmp_path / "text.npz")
    assert one_line(info).startswith(str(tmp_path / "text.npz"))


# --- split ---------------------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.floats(0.01, 0.99), st.integers(0, 2**32),
       st.integers(0, 3))
@fuzz(300)
def test_split_property(labels: list[int], fraction: float, seed: int, copies: int) -> None:
    """Disjoint, covering, ascending; both non-empty; identical images on one side; a class expecting a test
    image has one; the same split again."""
    y = np.array(labels)
    n = len(y)
    x = pixels((n, 2, 2), seed % 1000)
    x[n - copies :] = x[0]  # a few exact copies of the first image
    train, test = split_indices(x, y, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)
    distinct = len(np.unique(x.reshape(n, -1), axis=0)) > 1
    if distinct:  # identical images only: no split keeps copies together
        assert len(train) >= 1 and len(test) >= 1
    side = np.isin(np.arange(n), test)
    assert len(set(side[[0, *range(n - copies, n)]].tolist())) == 1, "copies on one side"
    trained_one = len(np.unique(x[train].reshape(len(train), -1), axis=0)) == 1  # maybe kept back to train on
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if distinct and not trained_one and len(members) >= 2 and len(members) * fraction >= 0.5:
            assert side[members].any()
    again = split_indices(x, y, fraction, seed)
    assert np.array_equal(again[1], test)


# --- fuzzing -------------------------------------------------------------------------------------------------

dtypes = st.sampled_from([np.uint8, np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_, np.uint16])
shapes = hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=4)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(dtypes)
    images = st.tuples(st.integers(0, 4), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3, 4]))
    shape = draw(shapes | images)
    if np.dtype(dtype).kind == "f":
        elements = st.floats(0, 1, width=32) | st.sampled_from([np.nan, np.inf, -0.5, 1.5, 1.0, 0.0])
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@given(arrays(), st.sampled_from([None, 1, 3]), st.sampled_from([None, 2]))
@fuzz(700)
def test_fuzz_arrays(x: np.ndarray, channels: int | None, image_size: int | None) -> None:
    """The property: a one-line BadInputError, or uint8 images exactly as the conversion rules say."""
    try:
        out = normalise_images(x, "fuzz", channels=channels, image_size=image_size)
    except BadInputError as exc:
        assert str(exc).startswith("fuzz: ") and "\n" not in str(exc)
        event("refused")
        return
    event("accepted")
    assert x.ndim in (3, 4) and len(x) >= 2 and (x.dtype == np.uint8 or x.dtype.kind == "f")
    natural = 3 if x.ndim == 4 and x.shape[3] in (3, 4) else 1
    want = natural if channels is None else channels
    h, w = (image_size, image_size) if image_size else x.shape[1:3]
    assert out.dtype == np.uint8 and out.shape == (len(x), h, w) + ((3,) if want == 3 else ())
    if image_size is None and want == natural and (x.ndim == 3 or x.shape[3] != 4):
        values = x if x.dtype == np.uint8 else np.rint(x.astype(np.float64) * 255)
        assert np.array_equal(out, values.reshape(out.shape)), "only the dtype changes"


@given(st.binary(max_size=200), st.sampled_from([".npy", ".npz"]))
@fuzz(300)
def test_fuzz_array_files(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    """Arbitrary bytes after a valid header start: only BadInputError, never a NumPy or zip traceback."""
    header = io.BytesIO()
    np.save(header, pixels((3, 2, 2)))
    start = header.getvalue()[:10] if suffix == ".npy" else b"PK\x03\x04"
    path = tmp_path_factory.mktemp("f") / f"a{suffix}"
    path.write_bytes(start + data)
    try:
        load_own_data(path)
    except BadInputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
