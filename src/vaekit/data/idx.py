"""Reading and writing IDX files, the format MNIST, Fashion-MNIST and KMNIST are distributed in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
``uint32`` per dimension, then the values in C order. The datasets ship gzip-compressed.

The bytes come from downloads, caches and folders users point at, so the reader trusts nothing: every
structural problem (bad magic, a type other than unsigned byte, a size that disagrees with the header, a
corrupt gzip stream) is reported as an :class:`~vaekit.data.errors.IDXError` that names the file, never as a
zlib, ``EOFError`` or numpy traceback. Decompression is bounded by the size the header declares, so a hostile
or mislabelled file cannot make the reader allocate more than the header promises plus one chunk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FileFormatError, IDXError

__all__ = [
    "IDXContents",
    "check_pair",
    "decode_idx",
    "load_idx",
    "read_idx",
    "read_image_label_pair",
    "write_idx",
]

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08
MAX_NDIM = 4
# Type codes defined by the IDX format; only unsigned byte is used by the image datasets vaekit trains on.
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IDXContents:
    """A decoded IDX file plus the digests needed to verify it against a registry entry.

    ``file_md5`` is over the bytes on disk (for a ``.gz`` file: the compressed bytes, which is what the
    official MD5s cover); ``payload_sha256`` is over the decompressed IDX bytes, which survive recompression.
    """

    array: np.ndarray
    compressed: bool
    file_md5: str | None
    payload_sha256: str | None


def _describe(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def _read_payload(read: Callable[[int], bytes], source: str) -> tuple[bytearray, tuple[int, ...], int]:
    """Read header and data through ``read``; return (all bytes, shape, header length).

    Reads at most one byte more than the header declares, which is enough to detect trailing data without
    decompressing an arbitrarily large stream.
    """
    magic = read(4)
    if len(magic) < 4:
        raise IDXError(
            f"{source}: only {len(magic)} bytes, too short for an IDX header; the file is truncated or not "
            "an IDX file, replace it"
        )
    if magic[0] != 0 or magic[1] != 0:
        raise IDXError(
            f"{source}: bad IDX magic number 0x{magic.hex()} (must start with two zero bytes); this is not "
            "an IDX file, replace it with the dataset's original file"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code != UBYTE:
        if type_code in _TYPE_NAMES:
            raise IDXError(
                f"{source}: unsupported IDX type code 0x{type_code:02x} ({_TYPE_NAMES[type_code]}); vaekit "
                "reads only unsigned-byte (0x08) IDX files such as MNIST's, convert the file to uint8"
            )
        raise IDXError(
            f"{source}: invalid IDX type code 0x{type_code:02x}; the file is corrupt or not an IDX file, "
            "replace it"
        )
    if not 1 <= ndim <= MAX_NDIM:
        raise IDXError(
            f"{source}: IDX header declares {ndim} dimensions (vaekit supports 1 to {MAX_NDIM}); the file is "
            "corrupt, replace it"
        )
    dims_raw = read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise IDXError(f"{source}: truncated IDX header ({4 + len(dims_raw)} bytes); replace the file")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    header_len = 4 + 4 * ndim
    count = math.prod(shape)
    buf = bytearray(magic)
    buf += dims_raw
    got = 0
    while got <= count:
        chunk = read(min(_CHUNK, count - got + 1))
        if not chunk:
            break
        buf += chunk
        got += len(chunk)
    if got < count:
        raise IDXError(
            f"{source}: truncated IDX data: header declares shape {shape} ({count} bytes) but only {got} "
            "bytes follow; the file is incomplete, download or copy it again"
        )
    if got > count:
        raise IDXError(
            f"{source}: trailing bytes after the {count} data bytes its header (shape {shape}) declares; the "
            "file is corrupt or not what its name says, replace it"
        )
    return buf, shape, header_len


def decode_idx(data: bytes, source: str = "<bytes>", *, digests: bool = True) -> IDXContents:
    """Decode IDX ``data`` (gzip-compressed or raw, detected by the gzip magic bytes, not by a file name).

    ``source`` is only used in error messages. With ``digests`` the MD5 of ``data`` and the SHA-256 of the
    decompressed payload are computed too (skipped by :func:`read_idx`, which does not verify).
    """
    compressed = data[:2] == GZIP_MAGIC
    if compressed:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                buf, shape, header_len = _read_payload(gz.read, source)
                # Reading to the end makes gzip check the stream's CRC and length trailer.
                if gz.read(1):
                    raise IDXError(f"{source}: trailing bytes after the declared IDX data; replace the file")
        except (OSError, EOFError, zlib.error) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise IDXError(
                f"{source}: corrupt gzip stream ({reason}); the file is damaged or incomplete, download or "
                "copy it again"
            ) from exc
    else:
        buf, shape, header_len = _read_payload(io.BytesIO(data).read, source)
    if math.prod(shape) == 0:
        array = np.zeros(shape, dtype=np.uint8)
    else:
        array = np.frombuffer(memoryview(buf)[header_len:], dtype=np.uint8).reshape(shape)
    file_md5 = payload_sha256 = None
    if digests:
        file_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        payload_sha256 = hashlib.sha256(buf).hexdigest()
    return IDXContents(array=array, compressed=compressed, file_md5=file_md5, payload_sha256=payload_sha256)


def load_idx(path: str | os.PathLike[str], *, digests: bool = True, source: str | None = None) -> IDXContents:
    """Read and decode the IDX file at ``path`` (see :func:`decode_idx`); ``source`` renames it in errors."""
    label = source if source is not None else _describe(path)
    return decode_idx(read_file(path, label, IDXError), label, digests=digests)


def read_file(path: str | os.PathLike[str], label: str, error: type[FileFormatError] = FileFormatError) -> bytes:
    """The bytes of the dataset file at ``path``, or ``error`` in one line naming ``label`` and the reason."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{label}: cannot read file ({exc.strerror or exc}); check the path and permissions") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Return an IDX file's contents (``.gz`` or raw) as a writable ``uint8`` array of the declared shape."""
    return load_idx(path, digests=False).array


def check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    """Raise :class:`IDXError` unless ``images`` is (N, H, W) or (N, H, W, 3) and ``labels`` is (N,), same N.

    Checked before training because a mismatched pair would otherwise silently pair images with the wrong
    labels (or fail deep inside a data loader).
    """
    if images.ndim != 3 and not (images.ndim == 4 and images.shape[3] == 3):
        raise IDXError(
            f"{images_name}: expected a 3-dimensional image file (N, height, width), or (N, height, width, 3) for "
            f"colour, got shape {images.shape}; is it a label file?"
        )
    if labels.ndim != 1:
        raise IDXError(
            f"{labels_name}: expected a 1-dimensional label file (N,), got shape {labels.shape}; is it an "
            "image file?"
        )
    if images.shape[0] != labels.shape[0]:
        raise IDXError(
            f"{images_name} holds {images.shape[0]} images but {labels_name} holds {labels.shape[0]} labels; "
            "use image and label files from the same split"
        )


def read_image_label_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file, checking shapes and that the counts agree."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    check_pair(images, labels, _describe(images_path), _describe(labels_path))
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """Return the raw (uncompressed) IDX bytes of a ``uint8`` array with 1 to 4 dimensions."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(
            f"write_idx writes uint8 arrays only (got dtype {array.dtype}); convert with .astype(np.uint8)"
        )
    if not 1 <= array.ndim <= MAX_NDIM:
        raise ValueError(f"IDX files hold 1 to {MAX_NDIM} dimensions (got an array of shape {array.shape})")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must be below 2**32 (got shape {array.shape})")
    header = bytes((0, 0, UBYTE, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` (``uint8``, 1-4 dimensions) as an IDX file, gzip-compressed when ``path`` ends in
    ``.gz``.

    The file is written next to its destination and renamed into place, so a reader never sees half a file.
    The gzip header carries no timestamp, so the same array always produces the same bytes (and checksum).
    """
    payload = encode_idx(array)
    target = Path(path)
    if target.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
