"""IDX reading and writing: round trips, and every structural problem reported as a one-line IDXError."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from vaekit.data import DataError, IDXError, read_idx, read_image_label_pair, write_idx
from vaekit.data.idx import decode_idx, encode_idx, load_idx


def header(type_code: int, dims: tuple[int, ...], ndim: int | None = None) -> bytes:
    n = len(dims) if ndim is None else ndim
    return bytes((0, 0, type_code, n)) + struct.pack(f">{len(dims)}I", *dims)


def raise_message(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, "error messages must be one line"
    return message


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 6, 5), (2, 3, 4, 5)])
def test_round_trip(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"a-idx{len(shape)}-ubyte{suffix}"
    write_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # the result is a normal writable array, not a view of read-only bytes
    assert not list(tmp_path.glob("*.part")), "write_idx leaves no temporary file behind"


def test_gzip_detected_by_magic_bytes_not_suffix(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = tmp_path / "labels.gz"
    raw_named_gz = tmp_path / "labels"
    gz_named_raw.write_bytes(encode_idx(array))
    raw_named_gz.write_bytes(gzip.compress(encode_idx(array)))
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    assert load_idx(raw_named_gz).compressed and not load_idx(gz_named_raw).compressed


def test_write_is_deterministic(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_digests() -> None:
    import hashlib

    payload = encode_idx(np.arange(10, dtype=np.uint8))
    packed = gzip.compress(payload)
    contents = decode_idx(packed, "x")
    assert contents.file_md5 == hashlib.md5(packed).hexdigest()
    assert contents.payload_sha256 == hashlib.sha256(payload).hexdigest()


def test_zero_sized_dimension_is_valid() -> None:
    out = decode_idx(header(8, (0, 28, 28)), "empty").array
    assert out.shape == (0, 28, 28) and out.dtype == np.uint8


@pytest.mark.parametrize(
    "bad", [np.zeros(3, dtype=np.float32), np.zeros((), dtype=np.uint8), np.zeros((1,) * 5, np.uint8)]
)
def test_write_rejects_what_idx_reader_would_not_read(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x.gz", bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (b"PK\x03\x04" + b"\x00" * 20, "bad IDX magic"),
        (header(0x0D, (2,)) + b"\x00" * 8, "unsupported IDX type code 0x0d (float32)"),
        (header(0x0C, (2,)) + b"\x00" * 8, "unsupported IDX type code 0x0c (int32)"),
        (header(0x42, (2,)) + b"\x00" * 2, "invalid IDX type code 0x42"),
        (bytes((0, 0, 8, 0)), "declares 0 dimensions"),
        (header(8, (1, 1, 1, 1, 1)) + b"\x00", "declares 5 dimensions"),
        (header(8, (2, 3))[:9], "truncated IDX header"),
        (header(8, (2, 3)) + b"\x00" * 5, "truncated IDX data"),
        (header(8, (2, 3)) + b"\x00" * 7, "trailing bytes"),
        (header(8, (1000, 1000, 1000, 1000)) + b"\x00" * 10, "truncated IDX data"),
    ],
)
def test_structural_errors(tmp_path: Path, data: bytes, needle: str, compress: bool) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IDXError) as info:
        read_idx(path)
    message = raise_message(info)
    assert message.startswith(str(path)), "the error names the file"
    assert needle in message


def valid_gz() -> bytes:
    return gzip.compress(encode_idx(np.arange(5000, dtype=np.uint16).astype(np.uint8).reshape(50, 100)))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:2] + b"garbage that is not deflate data" * 3,  # gzip magic, then junk
        lambda b: b[: len(b) // 2],  # stream cut in the middle
        lambda b: b[:-4],  # length trailer missing
        lambda b: b[:-8] + bytes(x ^ 0xFF for x in b[-8:-4]) + b[-4:],  # CRC wrong
        lambda b: b[:30] + bytes(x ^ 0x55 for x in b[30:60]) + b[60:],  # deflate data corrupted
        lambda b: b + b"\x00junk after the gzip member",
    ],
)
def test_corrupt_gzip_is_idx_error(tmp_path: Path, mangle) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(mangle(valid_gz()))
    with pytest.raises(IDXError) as info:
        read_idx(path)
    assert raise_message(info).startswith(str(path))


def test_missing_file_is_idx_error(tmp_path: Path) -> None:
    with pytest.raises(IDXError, match="cannot read file"):
        read_idx(tmp_path / "nope.gz")


def test_idx_error_is_a_data_error() -> None:
    assert issubclass(IDXError, DataError)


def test_pair_ok_and_count_mismatch(tmp_path: Path) -> None:
    images = np.zeros((5, 28, 28), np.uint8)
    write_idx(tmp_path / "img.gz", images)
    write_idx(tmp_path / "lab.gz", np.arange(5, dtype=np.uint8))
    write_idx(tmp_path / "lab4.gz", np.arange(4, dtype=np.uint8))
    x, y = read_image_label_pair(tmp_path / "img.gz", tmp_path / "lab.gz")
    assert x.shape == (5, 28, 28) and y.shape == (5,)
    with pytest.raises(IDXError) as info:
        read_image_label_pair(tmp_path / "img.gz", tmp_path / "lab4.gz")
    message = raise_message(info)
    assert "5 images" in message and "4 labels" in message and "lab4.gz" in message


def test_pair_checks_dimensions(tmp_path: Path) -> None:
    write_idx(tmp_path / "img.gz", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "flat.gz", np.zeros((5, 784), np.uint8))
    write_idx(tmp_path / "lab.gz", np.zeros(5, np.uint8))
    with pytest.raises(IDXError, match="3-dimensional"):
        read_image_label_pair(tmp_path / "flat.gz", tmp_path / "lab.gz")
    with pytest.raises(IDXError, match="1-dimensional"):
        read_image_label_pair(tmp_path / "img.gz", tmp_path / "img.gz")
