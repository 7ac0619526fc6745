"""Which images are held out for testing: decided by each image's own pixels, never by its position.

Every image gets a number in [0, 1): the first 8 bytes of SHA-256 over the seed and its ``uint8`` pixels (after
``--image-size`` and ``--channels``). An image is held out when its number is below the test fraction. So:

* adding or deleting images moves no other image between the splits (a permutation over positions moved most of
  the test set when one file was added);
* identical images are always on the same side, wherever they lie and whatever they are called, so no test
  image is also a training image;
* a renamed, moved or re-sorted file keeps its side, and a folder and the same images as an array file are
  split alike (an array has no file names to hash);
* a file whose pixels change may change side; a run's record then refuses the changed data anyway.

Hashing each file's relative path instead would also keep the split steady, but it would send a renamed or
re-sorted file, or a copy under another name, to a random side (the same picture could be trained on and
tested), and it gives arrays, whose rows have no names, no rule at all; it only does better for a file whose
pixels change, which a run's record refuses anyway.

The fraction is met on average: the test split of N images holds about ``N * F`` (a binomial count, within a
few times ``sqrt(N * F)``). Small data needs two rules, applied only when the hashes alone fail them: at least
one image is held out and at least one is trained on, and each class large enough to expect a test image
(``n * F >= 0.5``) has one; the image with the smallest number (and its copies) is then held out, or the
one with the largest trained on. Only in these cases can an added image move a held-out one back to training.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .chunked import chunks

__all__ = ["hash_positions", "held_out_mask", "split_indices"]

_SCALE = float(2**64)


def hash_positions(images: np.ndarray, seed: int) -> np.ndarray:
    """Each image's number in [0, 1) (float64): SHA-256 of the seed and the image's bytes, as a fraction."""
    start_hash = hashlib.sha256(f"vaekit-holdout\0{int(seed)}\0".encode())
    out = np.empty(len(images), dtype=np.float64)
    for start, chunk in chunks(images):
        rows = np.ascontiguousarray(chunk).reshape(len(chunk), -1)
        for i, row in enumerate(rows):
            digest = start_hash.copy()
            digest.update(row.data)
            out[start + i] = int.from_bytes(digest.digest()[:8], "little") / _SCALE
    return out


def _hold_out_one(test: np.ndarray, positions: np.ndarray, members: np.ndarray) -> None:
    """Hold out the member with the smallest number, with every copy of it."""
    smallest = positions[members].min()
    test |= positions == smallest


def held_out_mask(positions: np.ndarray, labels: np.ndarray | None, test_fraction: float) -> np.ndarray:
    """The held-out images (a boolean mask) for images with these numbers and labels (see the module docstring)."""
    test = positions < test_fraction
    groups = [np.arange(len(positions))] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for members in groups:
        if len(members) >= 2 and len(members) * test_fraction >= 0.5 and not test[members].any():
            _hold_out_one(test, positions, members)
    if not test.any() and len(positions):
        _hold_out_one(test, positions, np.arange(len(positions)))
    if test.all() and len(positions):
        test &= positions != positions.max()
    return test


def split_indices(
    images: np.ndarray, labels: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each ascending."""
    test = held_out_mask(hash_positions(images, seed), labels, test_fraction)
    return np.flatnonzero(~test), np.flatnonzero(test)
