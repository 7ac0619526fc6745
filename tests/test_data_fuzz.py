"""Property tests: whatever bytes the IDX reader or the resolver meet, they raise only their own errors.

The reader either returns a uint8 array whose shape is exactly what the (decompressed) header declares, or
raises IDXError; never a zlib/EOF/struct/numpy error. Resolving a data folder full of arbitrary files raises
only DataError.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vaekit.data import DATASETS, DataError, DatasetSpec, FileSpec, IDXError, load_splits, read_idx, register
from vaekit.data.idx import decode_idx, encode_idx

# A fuzz soak: in the slow tier. The number of examples (and derandomization, the deadline) come from the
# Hypothesis profile (tests/conftest.py): HYPOTHESIS_PROFILE=soak runs many more.
pytestmark = pytest.mark.slow

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def declared_shape(payload: bytes) -> tuple[int, ...]:
    ndim = payload[3]
    return struct.unpack(f">{ndim}I", payload[4 : 4 + 4 * ndim])


def check_decode(data: bytes) -> None:
    """The property: IDXError, or an array matching the header of the decompressed bytes exactly."""
    try:
        contents = decode_idx(data, "fuzz")
    except IDXError as exc:
        assert str(exc).startswith("fuzz: ") and "\n" not in str(exc)
        event("IDXError")
        return
    event("decoded")
    payload = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    shape = declared_shape(payload)
    array = contents.array
    assert array.dtype == np.uint8 and array.shape == shape
    assert len(payload) == 4 + 4 * len(shape) + math.prod(shape)
    assert array.tobytes() == payload[4 + 4 * len(shape) :]


# Headers that are mostly plausible, so the fuzzer spends its time past the magic-number check.
headers = st.tuples(
    st.sampled_from([b"\x00\x00", b"\x00\x00", b"\x00\x00", b"\x00\x01", b"\x1f\x8b", b"\xff\x00"]),
    st.sampled_from([0x08, 0x08, 0x08, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
    st.integers(0, 6),
    st.lists(st.integers(0, 6) | st.integers(0, 2**32 - 1), min_size=0, max_size=6),
)


@st.composite
def wild_idx(draw: st.DrawFn) -> bytes:
    prefix, type_code, ndim, dims = draw(headers)
    dims = dims[:ndim] if draw(st.booleans()) else dims
    head = prefix + bytes((type_code, ndim)) + b"".join(struct.pack(">I", d) for d in dims)
    expected = math.prod(dims) if dims else 0
    size = draw(
        st.sampled_from([expected, expected, max(0, expected - 1), expected + 1]) | st.integers(0, 64)
    )
    size = min(size, 4096)
    return head + draw(st.binary(min_size=size, max_size=size))


@st.composite
def plausible_idx(draw: st.DrawFn) -> bytes:
    """A consistent unsigned-byte header and payload, with at most one field or length off by a little."""
    dims = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    ndim, type_code, size = len(dims), 0x08, math.prod(dims)
    flaw = draw(st.sampled_from(["none", "none", "none", "ndim", "type", "size", "dim"]))
    if flaw == "ndim":
        ndim = draw(st.integers(0, 6))
    elif flaw == "type":
        type_code = draw(st.integers(0, 255))
    elif flaw == "size":
        size = max(0, size + draw(st.integers(-3, 3)))
    elif flaw == "dim":
        dims[draw(st.integers(0, len(dims) - 1))] = draw(st.integers(0, 2**32 - 1))
    head = bytes((0, 0, type_code, ndim)) + b"".join(struct.pack(">I", d) for d in dims)
    return head + draw(st.binary(min_size=size, max_size=size))


@st.composite
def idx_like(draw: st.DrawFn) -> bytes:
    data = draw(plausible_idx() | wild_idx())
    if draw(st.integers(0, 3)) == 0:
        data = gzip.compress(data, compresslevel=1)
    return data


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(idx_like())
def test_random_headers_and_payloads(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["gzip", "zlib", "raw-deflate", "magic-only"]))
def test_gzip_wrapped_garbage(data: bytes, wrapper: str) -> None:
    if wrapper == "gzip":
        wrapped = gzip.compress(data, compresslevel=1)
    elif wrapper == "zlib":
        wrapped = b"\x1f\x8b\x08\x00" + b"\x00" * 6 + zlib.compress(data)
    elif wrapper == "raw-deflate":
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        wrapped = b"\x1f\x8b\x08\x00" + b"\x00" * 6 + c.compress(data) + c.flush()
    else:
        wrapped = b"\x1f\x8b" + data
    check_decode(wrapped)


def _valid(shape: tuple[int, ...], seed: int, compressed: bool) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    raw = encode_idx(array)
    return gzip.compress(raw, compresslevel=1, mtime=0) if compressed else raw


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "append", "insert", "delete"]),
        st.integers(0, 10_000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(
    st.sampled_from([(10,), (3, 4), (2, 5, 5), (1, 2, 3, 4), (0, 7)]),
    st.integers(0, 3),
    st.booleans(),
    mutations,
)
def test_mutated_valid_files(shape: tuple[int, ...], seed: int, compressed: bool, edits) -> None:
    data = bytearray(_valid(shape, seed, compressed))
    for op, pos, value in edits:
        i = pos % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= 1 << (value % 8)
        elif op == "set" and i < len(data):
            data[i] = value
        elif op == "truncate":
            del data[i:]
        elif op == "append":
            data += bytes([value]) * (1 + value % 5)
        elif op == "insert":
            data[i:i] = bytes([value])
        elif op == "delete" and i < len(data):
            del data[i]
    check_decode(bytes(data))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(suppress_health_check=list(HealthCheck))
@given(idx_like() | st.binary(max_size=200))
def test_read_idx_from_files(scratch: Path, data: bytes) -> None:
    path = scratch / "f-idx3-ubyte.gz"
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except IDXError as exc:
        assert str(exc).startswith(str(path))
        return
    assert array.dtype == np.uint8


# --- resolution of a data folder holding arbitrary files ----------------------------------------------

NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="module")
def fuzz_spec() -> Iterator[None]:
    saved = dict(DATASETS)
    files = dict(
        zip(
            ("train_images", "train_labels", "test_images", "test_labels"),
            (FileSpec(n, "0" * 32, "0" * 64) for n in NAMES),
            strict=True,
        )
    )
    register(DatasetSpec(name="fuzzset", description="fuzz", image_shape=None, num_classes=3, **files))
    yield
    DATASETS.clear()
    DATASETS.update(saved)


@st.composite
def small_idx(draw: st.DrawFn) -> bytes:
    """Valid IDX files of small random shapes, so the split consistency checks get exercised too."""
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
    values = draw(st.binary(min_size=math.prod(shape), max_size=math.prod(shape)))
    raw = encode_idx(np.frombuffer(values, dtype=np.uint8).reshape(shape))
    return gzip.compress(raw, compresslevel=1) if draw(st.booleans()) else raw


@st.composite
def dataset_files(draw: st.DrawFn) -> list[bytes | None]:
    """Four files that mostly form a dataset (random sizes), some replaced by junk, broken IDX or nothing."""
    n_train, n_test, h, w = (draw(st.integers(0, 3)) for _ in range(4))
    shapes = [(n_train, h, w), (n_train,), (n_test, h, w), (n_test,)]
    files: list[bytes | None] = []
    for i, shape in enumerate(shapes):
        kind = draw(st.sampled_from(["good"] * 12 + ["junk", "idx", "small", "missing"]))
        if kind == "good":
            top = 256 if i % 2 == 0 else 4  # labels mostly below num_classes=3
            values = draw(
                st.lists(st.integers(0, top - 1), min_size=math.prod(shape), max_size=math.prod(shape))
            )
            raw = encode_idx(np.array(values, dtype=np.uint8).reshape(shape))
            files.append(gzip.compress(raw, compresslevel=1) if draw(st.booleans()) else raw)
        elif kind == "junk":
            files.append(draw(st.binary(max_size=64)))
        elif kind == "idx":
            files.append(draw(idx_like()))
        elif kind == "small":
            files.append(draw(small_idx()))
        else:
            files.append(None)
    return files


@settings(suppress_health_check=list(HealthCheck))
@given(dataset_files())
def test_resolving_a_folder_of_random_files(
    scratch: Path, fuzz_spec: None, contents: list[bytes | None]
) -> None:
    folder = scratch / "data"
    folder.mkdir(exist_ok=True)
    for name, data in zip(NAMES, contents, strict=True):
        path = folder / name
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)
    try:
        splits = load_splits("fuzzset", folder)
    except DataError as exc:
        assert "\n" not in str(exc)
        event(type(exc).__name__)
        return
    event("loaded")
    assert splits.train_images.ndim == 3 and splits.train_labels.shape == (splits.train_images.shape[0],)
    assert splits.test_images.shape[1:] == splits.train_images.shape[1:]
