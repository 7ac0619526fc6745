"""Reading CIFAR-10 from its official binary archive, ``cifar-10-binary.tar.gz``.

The archive holds ``cifar-10-batches-bin/data_batch_1.bin`` ... ``data_batch_5.bin`` (training) and
``test_batch.bin``, plus ``batches.meta.txt`` (the class names). Each batch is a run of 3,073-byte records:
one label byte (0-9), then the 32x32 image as 1,024 red, 1,024 green and 1,024 blue bytes (rows top to
bottom). This is the binary version, chosen because it needs no pickle: the Python version of the archive is
a set of pickles, which vaekit never loads since unpickling can run code.

Members are read straight from the archive in memory; nothing is extracted, so member names cannot write
outside any folder. Like the IDX reader, the parser trusts nothing and reports any problem as one
:class:`~vaekit.data.errors.ArchiveError` line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ArchiveError

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEMBERS", "ArchiveContents", "decode_cifar10", "encode_cifar10_batch"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FOLDER = "cifar-10-batches-bin"
_TRAIN = tuple(f"{_FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
_TEST = f"{_FOLDER}/test_batch.bin"
CIFAR10_MEMBERS = (*_TRAIN, _TEST)
_SIDE = 32
_RECORD = 1 + 3 * _SIDE * _SIDE
_MAX_RECORDS = 20_000  # per batch; the official ones hold 10,000, so anything larger is not CIFAR-10
# Bound on the decompressed archive (six batches of at most _MAX_RECORDS, plus headers and the class list),
# so a small hostile file cannot expand to fill the memory.
_MAX_TAR_BYTES = len(CIFAR10_MEMBERS) * _MAX_RECORDS * _RECORD + (1 << 20)
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ArchiveContents:
    """The four arrays of a decoded archive plus digests: MD5 of the file, SHA-256 of the records.

    The SHA-256 covers the label and pixel bytes of the six batches in order, so it identifies the data
    whatever the archive's compression or file dates.
    """

    arrays: dict[str, np.ndarray]
    compressed: bool
    file_md5: str
    payload_sha256: str


def _read_member(tar: tarfile.TarFile, name: str, source: str) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise ArchiveError(
            f"{source}: the archive lacks {name}; this is not the CIFAR-10 binary archive "
            "(cifar-10-binary.tar.gz), download or copy it again"
        ) from None
    if not member.isfile() or member.size % _RECORD or not 0 < member.size // _RECORD <= _MAX_RECORDS:
        raise ArchiveError(
            f"{source}: {name} is {member.size:,} bytes, not a whole number (1 to {_MAX_RECORDS:,}) of "
            f"{_RECORD}-byte CIFAR-10 records; the archive is corrupt, download or copy it again"
        )
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise ArchiveError(f"{source}: {name} is truncated; the archive is incomplete, download or copy it again")
    return data


def _records(data: bytes, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) HWC, labels (N,)) from one batch's bytes."""
    table = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = table[:, 0].copy()
    if labels.size and int(labels.max()) > 9:
        raise ArchiveError(
            f"{source}: {name} holds label {int(labels.max())}, but CIFAR-10 labels are 0-9; the archive is "
            "corrupt or not CIFAR-10, download or copy it again"
        )
    images = table[:, 1:].reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _gunzip(data: bytes, source: str) -> bytes:
    """Decompress the whole gzip stream, checking its CRC (so a truncated download is caught) and its size."""
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = stream.decompress(data, _MAX_TAR_BYTES)
    except zlib.error as exc:
        raise ArchiveError(
            f"{source}: corrupt gzip stream ({exc}); the file is damaged or incomplete, download or copy it again"
        ) from exc
    if stream.unconsumed_tail:
        raise ArchiveError(
            f"{source}: decompresses to more than {_MAX_TAR_BYTES:,} bytes, far more than CIFAR-10; this is not the "
            "CIFAR-10 binary archive, replace it"
        )
    if not stream.eof or stream.unused_data.strip(b"\0"):
        problem = "ends before its gzip stream does" if not stream.eof else "has bytes after its gzip stream"
        raise ArchiveError(f"{source}: the file {problem}; it is incomplete or damaged, download or copy it again")
    return raw


def decode_cifar10(data: bytes, source: str = "<bytes>") -> ArchiveContents:
    """Decode the archive's bytes (``.tar.gz`` or plain ``.tar``) into train/test images and labels."""
    compressed = data[:2] == GZIP_MAGIC
    raw = _gunzip(data, source) if compressed else data
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            batches = {name: _read_member(tar, name, source) for name in CIFAR10_MEMBERS}
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ArchiveError(
            f"{source}: not a readable tar archive ({reason}); the file is damaged or incomplete, download or copy "
            "it again"
        ) from exc
    digest = hashlib.sha256()
    for name in CIFAR10_MEMBERS:
        digest.update(batches[name])
    train = [_records(batches[name], name, source) for name in _TRAIN]
    test_images, test_labels = _records(batches[_TEST], _TEST, source)
    arrays = {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
    return ArchiveContents(
        arrays=arrays,
        compressed=compressed,
        file_md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        payload_sha256=digest.hexdigest(),
    )


def encode_cifar10_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The bytes of one batch file for ``images`` (N, 32, 32, 3) ``uint8`` and ``labels`` (N,) in 0-9."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (_SIDE, _SIDE, 3) or len(labels) != len(images):
        raise ValueError(f"expected (N, 32, 32, 3) images and N labels, got {images.shape} and {len(labels)}")
    table = np.empty((len(images), _RECORD), dtype=np.uint8)
    table[:, 0] = labels
    table[:, 1:] = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return table.tobytes()

