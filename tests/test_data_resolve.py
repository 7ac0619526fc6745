"""Dataset resolution: user folder, cache, search path, offline errors, embedded fallback, ``vaekit data``."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vaekit.cli import main as data_main
from vaekit.data import (
    DATASETS,
    DataError,
    DatasetNotFoundError,
    DatasetSpec,
    FileSpec,
    IDXError,
    cache_dir,
    load_splits,
    register,
    write_idx,
)
from vaekit.data.idx import encode_idx
from vaekit.data.registry import ROLES
from vaekit.data.verify import check_file

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_arrays(seed: int = 0, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_set(folder: Path, arrays: dict[str, np.ndarray], *, raw: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        name = NAMES[role][:-3] if raw else NAMES[role]
        write_idx(folder / name, array)
    return folder


def spec_for(name: str, arrays: dict[str, np.ndarray], *, md5: bool = True, sha: bool = True) -> DatasetSpec:
    """A spec whose checksums are those of ``write_set``'s files for ``arrays``."""
    files = {}
    for role, array in arrays.items():
        payload = encode_idx(array)
        files[role] = FileSpec(
            NAMES[role],
            hashlib.md5(gzip.compress(payload, compresslevel=6, mtime=0)).hexdigest() if md5 else None,
            hashlib.sha256(payload).hexdigest() if sha else None,
        )
    return DatasetSpec(name=name, description=f"test set {name}", torchvision_folder="TINY", **files)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Own cache, nothing searched, no network; the registry is restored after each test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAEKIT_DATA", str(cache))
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", "")
    monkeypatch.setenv("VAEKIT_OFFLINE", "1")
    saved = dict(DATASETS)
    yield cache
    DATASETS.clear()
    DATASETS.update(saved)


@pytest.fixture
def tiny() -> dict[str, np.ndarray]:
    arrays = make_arrays()
    register(spec_for("tiny", arrays))
    return arrays


def assert_same(splits, arrays: dict[str, np.ndarray]) -> None:
    for role in ROLES:
        got = getattr(splits, role)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[role])


# --- data_dir -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True])
def test_data_dir_loads(tmp_path: Path, tiny, raw: bool, capsys) -> None:
    folder = write_set(tmp_path / "d", tiny, raw=raw)
    splits = load_splits("tiny", folder)
    assert_same(splits, tiny)
    assert splits.name == "tiny" and splits.source == str(folder)
    assert capsys.readouterr().err == ""


def test_data_dir_torchvision_layout_and_dotted_names(tmp_path: Path, tiny) -> None:
    raw = tmp_path / "root" / "TINY" / "raw"
    raw.mkdir(parents=True)
    for role, array in tiny.items():
        write_idx(raw / NAMES[role][:-3].replace("-idx", ".idx"), array)  # train-images.idx3-ubyte style
    splits = load_splits("tiny", tmp_path / "root")
    assert_same(splits, tiny)
    assert splits.source == str(raw)


def test_data_dir_checksum_mismatch_warns_and_loads(tmp_path: Path, tiny, capsys) -> None:
    other = make_arrays(seed=1)
    folder = write_set(tmp_path / "custom", other)
    splits = load_splits("tiny", str(folder))
    assert_same(splits, other)
    err = capsys.readouterr().err
    assert err.count("vaekit: warning:") == 4 and "checksum mismatch" in err


def test_data_dir_missing_file(tmp_path: Path, tiny) -> None:
    folder = write_set(tmp_path / "d", tiny)
    (folder / NAMES["test_labels"]).unlink()
    with pytest.raises(DataError) as info:
        load_splits("tiny", folder)
    message = str(info.value)
    assert str(folder) in message and "t10k-labels-idx1-ubyte.gz" in message and "\n" not in message
    assert not isinstance(info.value, DatasetNotFoundError)


def test_data_dir_missing_does_not_fall_back(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits(None, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_splits(None, tmp_path / "empty")  # name=None + data_dir means MNIST there, no embedded fallback


def test_data_dir_structural_error_is_error(tmp_path: Path, tiny) -> None:
    folder = write_set(tmp_path / "d", tiny)
    (folder / NAMES["train_images"]).write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(IDXError, match="corrupt gzip"):
        load_splits("tiny", folder)


def test_data_dir_count_mismatch(tmp_path: Path, tiny) -> None:
    arrays = dict(tiny, train_labels=tiny["train_labels"][:-1])
    folder = write_set(tmp_path / "d", arrays)
    with pytest.raises(IDXError, match="30 images but .* 29 labels"):
        load_splits("tiny", folder)


def test_data_dir_wrong_image_size(tmp_path: Path, tiny) -> None:
    arrays = dict(tiny, test_images=np.zeros((10, 14, 14), np.uint8))
    folder = write_set(tmp_path / "d", arrays)
    with pytest.raises(DataError, match="14x14"):
        load_splits("tiny", folder)


# --- cache ----------------------------------------------------------------------------------------------


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("VAEKIT_DATA")
    assert cache_dir().name == "data" and "vaekit" in str(cache_dir())


def test_cache_hit(isolated: Path, tiny) -> None:
    write_set(isolated / "tiny", tiny)
    splits = load_splits("tiny")
    assert_same(splits, tiny)
    assert splits.source == str(isolated / "tiny")


def test_cache_accepts_recompressed_and_raw_by_sha256(isolated: Path, tiny) -> None:
    folder = write_set(isolated / "tiny", tiny)
    payload = encode_idx(tiny["train_images"])
    (folder / NAMES["train_images"]).write_bytes(gzip.compress(payload, compresslevel=1))  # md5 differs now
    (folder / NAMES["test_labels"]).unlink()
    (folder / NAMES["test_labels"][:-3]).write_bytes(encode_idx(tiny["test_labels"]))
    assert_same(load_splits("tiny"), tiny)


def test_bad_copy_does_not_hide_a_good_one(isolated: Path, tiny, capsys) -> None:
    folder = write_set(isolated / "tiny", tiny)
    (folder / NAMES["train_labels"][:-3]).write_bytes(encode_idx(tiny["train_labels"]))  # good, uncompressed
    write_idx(folder / NAMES["train_labels"], make_arrays(seed=6)["train_labels"])  # bad, preferred name
    assert_same(load_splits("tiny"), tiny)
    assert "ignoring this cached copy" in capsys.readouterr().err


def test_tampered_cache_file_is_rejected(isolated: Path, tiny, capsys) -> None:
    folder = write_set(isolated / "tiny", tiny)
    tampered = folder / NAMES["test_images"]
    write_idx(tampered, make_arrays(seed=5)["test_images"])  # valid IDX, wrong data
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("tiny")
    assert "checksum mismatch" in str(info.value) and str(tampered) in str(info.value)
    assert "ignoring this cached copy" in capsys.readouterr().err
    assert tampered.exists(), "a rejected file is left alone"


def test_unverifiable_file_in_cache_is_rejected(isolated: Path) -> None:
    arrays = make_arrays()
    # Only the .gz MD5s are known, so an uncompressed copy cannot be checked.
    register(spec_for("tiny", arrays, sha=False))
    write_set(isolated / "tiny", arrays, raw=True)
    with pytest.raises(DatasetNotFoundError, match="cannot be verified"):
        load_splits("tiny")


def test_spec_without_checksums_accepts_structurally_valid_files(isolated: Path) -> None:
    arrays = make_arrays()
    register(spec_for("tiny", arrays, md5=False, sha=False))
    write_set(isolated / "tiny", make_arrays(seed=3))
    assert load_splits("tiny").train_images.shape == (30, 28, 28)


# --- search path ----------------------------------------------------------------------------------------


def test_search_path_torchvision_layout(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    write_set(root / "TINY" / "raw", tiny, raw=True)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", os.pathsep.join([str(tmp_path / "empty"), str(root)]))
    splits = load_splits("tiny")
    assert_same(splits, tiny)
    assert splits.source == str(root / "TINY" / "raw")


def test_search_path_debian_style_layout(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "datasets" / "tiny", tiny)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(tmp_path / "datasets"))
    assert load_splits("tiny").source == str(tmp_path / "datasets" / "tiny")


def test_search_path_copy_failing_verification_is_skipped(tmp_path: Path, tiny, monkeypatch) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    write_set(bad / "TINY" / "raw", make_arrays(seed=9))
    write_set(good / "TINY" / "raw", tiny)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", os.pathsep.join([str(bad), str(good)]))
    assert load_splits("tiny").source == str(good / "TINY" / "raw")
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(bad))
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        load_splits("tiny")


def test_search_path_replaces_defaults(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "TINY" / "raw", tiny)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VAEKIT_SEARCH_PATH")
    # The current folder is one of the default roots.
    assert load_splits("tiny").source == str(tmp_path / "TINY" / "raw")
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", "")
    with pytest.raises(DatasetNotFoundError, match=r"\$VAEKIT_SEARCH_PATH is empty"):
        load_splits("tiny")


# --- nothing found --------------------------------------------------------------------------------------


def test_offline_error_lists_what_was_tried(isolated: Path, tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(tmp_path / "somewhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("tiny")
    message = str(info.value)
    assert "\n" not in message
    for needle in (
        str(isolated / "tiny"),
        str(tmp_path / "somewhere"),
        "VAEKIT_OFFLINE",
        "--data-dir",
        "vaekit data fetch tiny",
        "VAEKIT_DATA",
    ):
        assert needle in message


def test_download_false(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAEKIT_OFFLINE")
    with pytest.raises(DatasetNotFoundError, match=r"download: disabled \(download=False\)"):
        load_splits("tiny", download=False)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DataError) as info:
        load_splits("cifar")
    assert "unknown dataset 'cifar'" in str(info.value)
    for name in ("mnist", "fashion-mnist", "kmnist", "mnist-embedded"):
        assert name in str(info.value)


def test_names_are_normalised(tmp_path: Path, tiny) -> None:
    folder = write_set(tmp_path / "d", tiny)
    assert load_splits("TINY", folder).name == "tiny"
    with pytest.raises(DatasetNotFoundError, match="fashion-mnist not found"):
        load_splits("Fashion_MNIST")


# --- embedded fallback ----------------------------------------------------------------------------------


def test_no_name_offline_falls_back_to_embedded(capsys) -> None:
    splits = load_splits()
    assert splits.name == "mnist-embedded" and splits.source == "vaekit (embedded MNIST subset)"
    assert splits.train_images.shape == (4000, 28, 28) and splits.test_images.shape == (1000, 28, 28)
    assert splits.train_labels.shape == (4000,) and splits.test_labels.shape == (1000,)
    for array in (splits.train_images, splits.train_labels, splits.test_images, splits.test_labels):
        assert array.dtype == np.uint8
    assert np.bincount(splits.train_labels).tolist() == [400] * 10
    assert np.bincount(splits.test_labels).tolist() == [100] * 10
    assert splits.train_labels[:10].tolist() == list(range(10))  # interleaved, so any prefix is balanced
    assert splits.train_images.max() == 255 and splits.train_images.mean() > 10  # real digits, not zeros
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaekit: warning: MNIST was not found")
    assert "5,000" in err[0] and "vaekit data fetch mnist" in err[0]


def test_embedded_split_is_deterministic_and_disjoint() -> None:
    a, b = load_splits("mnist-embedded"), load_splits("mnist-embedded")
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    train = {x.tobytes() for x in a.train_images}
    assert not any(x.tobytes() in train for x in a.test_images)


def test_explicit_mnist_never_falls_back(capsys) -> None:
    with pytest.raises(DatasetNotFoundError, match="mnist not found"):
        load_splits("mnist")
    assert "embedded" not in capsys.readouterr().err


def test_explicit_embedded_has_no_warning(capsys) -> None:
    assert load_splits("mnist-embedded").name == "mnist-embedded"
    assert capsys.readouterr().err == ""


def test_cached_mnist_wins_over_fallback(isolated: Path, tiny) -> None:
    register(spec_for("mnist", tiny))  # pretend the tiny set is MNIST so the cache copy verifies
    write_set(isolated / "mnist", tiny)
    assert load_splits().name == "mnist"


# --- registry -------------------------------------------------------------------------------------------


def test_builtin_registry() -> None:
    assert {"mnist", "fashion-mnist", "kmnist"} <= set(DATASETS)
    mnist = DATASETS["mnist"]
    assert mnist.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert mnist.train_images.md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert mnist.test_images.sha256 == "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    assert DATASETS["fashion-mnist"].train_images.md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert DATASETS["kmnist"].test_labels.md5 == "7320c461ea6c1c855c0b718fb2a4b134"
    for spec in DATASETS.values():
        if spec.archive is None:  # the IDX datasets; an archive dataset (CIFAR-10) is one file
            assert [f.filename for f in spec.files().values()] == list(NAMES.values()), spec.name


def test_register_validates_and_replaces() -> None:
    arrays = make_arrays()
    spec = spec_for("tiny", arrays)
    register(dataclasses.replace(spec, mirrors=("http://example.invalid/a",)))
    assert DATASETS["tiny"].mirrors == ("http://example.invalid/a/",)
    with pytest.raises(DataError, match="reserved"):
        register(dataclasses.replace(spec, name="mnist-embedded"))
    with pytest.raises(DataError, match="md5"):
        register(dataclasses.replace(spec, train_images=FileSpec("x.gz", md5="xyz")))


# --- vaekit data ----------------------------------------------------------------------------------------


def test_cli_list(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    write_set(tmp_path / "tiny", tiny)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(tmp_path))
    assert data_main(["data", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert str(tmp_path / "tiny") in lines["tiny"]
    assert "not present" in lines["kmnist"]
    assert "vaekit (embedded MNIST subset)" in lines["mnist-embedded"]


def test_cli_verify(tiny, tmp_path: Path, capsys) -> None:
    folder = write_set(tmp_path / "d", tiny)
    assert data_main(["data", "verify", "tiny", "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count(" OK ") == 4
    write_idx(folder / NAMES["train_labels"], make_arrays(seed=4)["train_labels"])
    (folder / NAMES["test_images"]).unlink()
    assert data_main(["data", "verify", "tiny", "--data-dir", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "MISSING" in out


def test_cli_verify_not_present(tiny, capsys) -> None:
    assert data_main(["data", "verify", "tiny"]) == 1
    assert "not present" in capsys.readouterr().out


def test_cli_unknown_name_exits_2(capsys) -> None:
    for argv in (["data", "verify", "nope"], ["data", "fetch", "nope"]):
        assert data_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vaekit data: error: unknown dataset 'nope'") and "\n" not in err


def test_cli_fetch_copies_verified_local_copy(
    isolated: Path, tiny, tmp_path: Path, monkeypatch, capsys
) -> None:
    write_set(tmp_path / "root" / "TINY" / "raw", tiny)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(tmp_path / "root"))
    assert data_main(["data", "fetch", "tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count(str(isolated / "tiny")) == 4
    dest = tmp_path / "portable"
    assert data_main(["data", "fetch", "tiny", "--data-dir", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES.values())
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", "")
    assert_same(load_splits("tiny"), tiny)  # now served from the cache


def test_cli_fetch_offline_without_copy_exits_2(capsys) -> None:
    assert data_main(["data", "fetch", "kmnist"]) == 2
    assert "VAEKIT_OFFLINE" in capsys.readouterr().err


def test_cli_fetch_never_overwrites_user_files(tiny, tmp_path: Path, capsys) -> None:
    dest = write_set(tmp_path / "mine", make_arrays(seed=8))
    before = (dest / NAMES["train_images"]).read_bytes()
    assert data_main(["data", "fetch", "tiny", "--data-dir", str(dest)]) == 2
    assert "not overwritten" in capsys.readouterr().err
    assert (dest / NAMES["train_images"]).read_bytes() == before


# --- real data on this machine, when present ------------------------------------------------------------


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST test files not available")
def test_real_mnist_test_files_verify() -> None:
    from vaekit.data import read_image_label_pair

    spec = DATASETS["mnist"]
    images, labels = read_image_label_pair(
        SHARED_MNIST / NAMES["test_images"], SHARED_MNIST / NAMES["test_labels"]
    )
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype == np.uint8 and int(labels.max()) == 9
    for role in ("test_images", "test_labels", "train_labels"):
        _, check = check_file(SHARED_MNIST / NAMES[role], getattr(spec, role))
        assert check.sha256_ok and check.verified


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_found_by_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(DEBIAN_FASHION.parent))
    splits = load_splits("fashion-mnist")
    assert splits.source == str(DEBIAN_FASHION)
    assert splits.train_images.shape == (60000, 28, 28) and splits.test_labels.shape == (10000,)
