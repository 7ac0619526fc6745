"""CIFAR-10 from its binary archive: the reader, local copies, and downloads from a real HTTP server on 127.0.0.1.

The archives are generated here in the official layout (``cifar-10-batches-bin/data_batch_1..5.bin``,
``test_batch.bin``, ``batches.meta.txt``) with a few records per batch; the registry entry is re-registered
with the local server as its mirror and the generated archive's MD5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vaekit.data import DATASETS, DataError, DatasetNotFoundError, load_splits, locate, register
from vaekit.data.cifar import CIFAR10_CLASSES, CIFAR10_MEMBERS, decode_cifar10, encode_cifar10_batch
from vaekit.data.errors import ArchiveError

from .conftest import http_server

ARCHIVE = "cifar-10-binary.tar.gz"


def make_arrays(seed: int, per_batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 5 * per_batch, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, per_batch, dtype=np.uint8),
    }


def make_archive(arrays: dict[str, np.ndarray], *, members: dict[str, bytes] | None = None,
                 compress: bool = True) -> bytes:
    """The official layout for ``arrays``; ``members`` replaces or adds members (``b""`` with a name: drop it)."""
    per_batch = len(arrays["test_images"])
    files = {}
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        files[CIFAR10_MEMBERS[i]] = encode_cifar10_batch(arrays["train_images"][rows], arrays["train_labels"][rows])
    files[CIFAR10_MEMBERS[5]] = encode_cifar10_batch(arrays["test_images"], arrays["test_labels"])
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()
    files.update(members or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compress else "w") as tar:
        for name, data in files.items():
            if data == b"" and name in CIFAR10_MEMBERS:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def register_local(blob: bytes, *mirrors: str) -> None:
    """Re-register cifar10 with ``blob``'s MD5 (the official one cannot match a generated archive)."""
    spec = DATASETS["cifar10"]
    archive = dataclasses.replace(spec.archive, md5=hashlib.md5(blob).hexdigest())
    register(dataclasses.replace(spec, archive=archive, mirrors=mirrors))


def assert_same(splits, arrays: dict[str, np.ndarray]) -> None:
    for role, array in arrays.items():
        np.testing.assert_array_equal(getattr(splits, role), array)


@pytest.fixture
def registry() -> Iterator[None]:
    saved = dict(DATASETS)
    yield
    DATASETS.clear()
    DATASETS.update(saved)


# --- the reader ----------------------------------------------------------------------------------------------


def test_records_are_label_then_red_green_blue_planes() -> None:
    record = bytes([7]) + bytes(range(256)) * 12  # red plane 0..255 x4, then green, then blue
    data = make_archive(make_arrays(0), members={CIFAR10_MEMBERS[5]: record})
    contents = decode_cifar10(data, "x")
    image = contents.arrays["test_images"][0]
    assert contents.arrays["test_labels"].tolist() == [7] and image.shape == (32, 32, 3)
    plane = np.frombuffer(bytes(range(256)) * 4, np.uint8).reshape(32, 32)
    assert np.array_equal(image[..., 0], plane) and np.array_equal(image[..., 2], plane)
    assert image[0, 1].tolist() == [1, 1, 1] and image[1, 0].tolist() == [32, 32, 32], "rows of 32, top first"


def test_archive_round_trip_and_digests() -> None:
    arrays = make_arrays(1)
    blob = make_archive(arrays)
    contents = decode_cifar10(blob, "x")
    for role, array in arrays.items():
        np.testing.assert_array_equal(contents.arrays[role], array)
    assert contents.compressed and contents.file_md5 == hashlib.md5(blob).hexdigest()
    plain = decode_cifar10(make_archive(arrays, compress=False), "x")
    assert not plain.compressed and plain.payload_sha256 == contents.payload_sha256, "the records' digest"


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ({CIFAR10_MEMBERS[2]: b""}, "the archive lacks cifar-10-batches-bin/data_batch_3.bin"),
        ({CIFAR10_MEMBERS[0]: bytes(3073 * 2 + 5)}, "not a whole number"),
        ({CIFAR10_MEMBERS[5]: bytes([10]) + bytes(3072)}, "holds label 10, but CIFAR-10 labels are 0-9"),
    ],
)
def test_broken_archives_are_one_line(members: dict[str, bytes], fragment: str) -> None:
    with pytest.raises(ArchiveError) as info:
        decode_cifar10(make_archive(make_arrays(2), members=members), "/data/cifar-10-binary.tar.gz")
    message = str(info.value)
    assert "\n" not in message and message.startswith("/data/cifar-10-binary.tar.gz: ") and fragment in message


@pytest.mark.parametrize("cut", [0, 10, 500, -30])
def test_truncated_or_foreign_bytes(cut: int) -> None:
    blob = make_archive(make_arrays(3))
    data = blob[:cut] if cut else b"<html>moved</html>"
    with pytest.raises(ArchiveError, match="^x: ") as info:
        decode_cifar10(data, "x")
    assert "\n" not in str(info.value)


def test_archive_expanding_beyond_any_cifar_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaekit.data.cifar as cifar

    monkeypatch.setattr(cifar, "_MAX_TAR_BYTES", 50_000)  # the real bound is ~370 MB; the archive is ~60 KB
    with pytest.raises(ArchiveError, match="decompresses to more than 50,000 bytes"):
        decode_cifar10(make_archive(make_arrays(3)), "x")


# --- finding and verifying copies ----------------------------------------------------------------------------


def test_verified_local_copy_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry) -> None:
    arrays = make_arrays(4)
    blob = make_archive(arrays)
    (tmp_path / "root" / "cifar10").mkdir(parents=True)
    (tmp_path / "root" / "cifar10" / ARCHIVE).write_bytes(blob)
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", str(tmp_path / "root"))
    assert locate("cifar10") is None, "the official MD5 does not match a generated archive"
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("cifar10")
    assert "checksum mismatch" in str(info.value) and ARCHIVE in str(info.value) and "\n" not in str(info.value)
    register_local(blob)
    splits = load_splits("cifar10")
    assert_same(splits, arrays)
    assert splits.class_names == CIFAR10_CLASSES and splits.channels == 3 and splits.image_shape == (32, 32, 3)
    assert locate("cifar10") == str(tmp_path / "root" / "cifar10")


def test_data_dir_with_an_unverified_copy_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = make_arrays(5)
    (tmp_path / ARCHIVE).write_bytes(make_archive(arrays))
    assert_same(load_splits("cifar10", tmp_path), arrays)
    assert "checksum mismatch" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"lacks {ARCHIVE} for cifar10; put {ARCHIVE} there"):
        load_splits("cifar10", tmp_path / "empty")


def test_offline_error_names_the_archive() -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("cifar10")
    message = str(info.value)
    assert "\n" not in message and "VAEKIT_OFFLINE" in message and f"--data-dir DIR holding {ARCHIVE}" in message


# --- downloads -----------------------------------------------------------------------------------------------


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests_seen.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry) -> Iterator[tuple[str, Path, list[str]]]:
    """A threaded HTTP server on 127.0.0.1 over ``www/``; network allowed; yields (URL, folder, requests)."""
    root = tmp_path / "www"
    root.mkdir()
    monkeypatch.delenv("VAEKIT_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with http_server(root, Handler) as (url, seen):
        yield url, root, seen


def serve(root: Path, mirror: str, blob: bytes) -> None:
    (root / mirror).mkdir(parents=True, exist_ok=True)
    (root / mirror / ARCHIVE).write_bytes(blob)


def cache_listing(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_download_verifies_and_caches(server, hermetic_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, root, seen = server
    arrays = make_arrays(6)
    blob = make_archive(arrays)
    serve(root, "good", blob)
    serve(root, "wrong", make_archive(make_arrays(7)))
    register_local(blob, f"{base}/missing/", f"{base}/wrong/", f"{base}/good/")
    splits = load_splits("cifar10", progress=True)
    assert_same(splits, arrays)
    assert seen == [f"/{m}/{ARCHIVE}" for m in ("missing", "wrong", "good")]
    assert cache_listing(hermetic_data) == [f"cifar10/{ARCHIVE}"]
    assert ARCHIVE in capsys.readouterr().err, "a progress bar names the file"
    again = load_splits("cifar10", progress=False)
    assert again.source == str(hermetic_data / "cifar10") and len(seen) == 3, "the second load is local"


def test_failed_download_leaves_nothing(server, hermetic_data: Path) -> None:
    base, root, _ = server
    blob = make_archive(make_arrays(8))
    serve(root, "wrong", make_archive(make_arrays(9)))
    serve(root, "junk", b"<html>not here</html>")
    register_local(blob, f"{base}/wrong/", f"{base}/junk/")
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("cifar10", progress=False)
    message = str(info.value)
    assert "\n" not in message and f"{base}/wrong/{ARCHIVE}: checksum mismatch" in message
    assert f"{base}/junk/{ARCHIVE}: not a readable tar archive" in message
    assert cache_listing(hermetic_data) == []


def test_cli_list_fetch_verify(server, hermetic_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vaekit.cli import main as data_main

    base, root, _ = server
    blob = make_archive(make_arrays(10))
    serve(root, "good", blob)
    register_local(blob, f"{base}/good/")
    assert data_main(["data", "verify", "cifar10"]) == 1
    assert data_main(["data", "fetch", "cifar10", "--no-progress"]) == 0
    assert f"archive       {hermetic_data / 'cifar10' / ARCHIVE}" in capsys.readouterr().out
    assert data_main(["data", "verify", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert f"{ARCHIVE:<28} OK" in out and hashlib.md5(blob).hexdigest() in out
    assert data_main(["data", "list"]) == 0
    assert f"cifar10         {hermetic_data / 'cifar10'}" in capsys.readouterr().out
