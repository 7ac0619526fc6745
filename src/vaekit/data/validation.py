"""The validation split: training images held out to choose and stop on, so the test set is used only once.

Each training image gets a score in [0, 1) from a salted SHA-256 of its pixel bytes; the images scoring below
the validation fraction are the validation split. An image's side therefore depends on its pixels alone, not
on its position or on the other images: adding or removing images moves no other image across, exact
duplicates land on the same side, and the rule is the same for a named dataset, a folder and an array. Only
at the edges does the rule give way: there is always at least one validation image and one image left to
train on (the lowest-scoring image validates, the highest-scoring one trains).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .binarize import binarize_images
from .errors import DataError
from .splits import Splits

__all__ = ["Validation", "carve_validation", "validation_indices", "validation_problem", "validation_record",
           "validation_scores"]

# Fixed forever: changing it would move images between the training and validation splits of every run.
SALT = b"vaekit validation split\x00"
# The validation images' binarized copy is drawn with the run's binarize_seed plus this (the test copy uses the
# seed itself, the static training copy the seed plus one), so binarized runs validate on fixed binary images.
BINARIZE_SEED_OFFSET = 2


@dataclass(frozen=True, eq=False)
class Validation:
    """The validation images (``uint8``, as the training images) and their positions in the training split."""

    images: np.ndarray
    indices: np.ndarray
    fraction: float

    @property
    def digest(self) -> str:
        """SHA-256 of the positions: a later command checks it rebuilt the same validation split."""
        return hashlib.sha256(np.ascontiguousarray(self.indices, dtype="<i8").data).hexdigest()


def validation_scores(images: np.ndarray) -> np.ndarray:
    """A number in [0, 1) per image, a function of its pixel bytes only (53 bits of a salted SHA-256)."""
    scores = np.empty(len(images), dtype=np.float64)
    for i in range(len(images)):
        digest = hashlib.sha256(SALT + np.ascontiguousarray(images[i]).tobytes()).digest()
        scores[i] = (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53
    return scores


def validation_indices(images: np.ndarray, fraction: float) -> np.ndarray:
    """Ascending positions of the validation images among ``images``; see the module docstring for the rule."""
    n = len(images)
    if n < 2:
        raise DataError(f"a validation split needs at least 2 training images (one to validate on, one to train on) "
                        f"but there {'is' if n == 1 else 'are'} {n}; train without one (--val-fraction 0)")
    scores = validation_scores(images)
    chosen = scores < fraction
    if not chosen.any():
        chosen[np.argmin(scores)] = True
    if chosen.all():
        chosen[np.argmax(scores)] = False
    return np.flatnonzero(chosen)


def carve_validation(splits: Splits, fraction: float) -> tuple[Splits, Validation | None]:
    """The splits without their validation images, and the validation images (``None`` when ``fraction`` is 0).

    With a fraction of 0 the splits come back untouched and no image is hashed.
    """
    if not fraction:
        return splits, None
    val = validation_indices(splits.train_images, fraction)
    keep = np.ones(len(splits.train_images), dtype=bool)
    keep[val] = False
    train = replace(splits, train_images=splits.train_images[keep], train_labels=splits.train_labels[keep])
    return train, Validation(splits.train_images[val], val, float(fraction))


def binarize_validation(val: Validation | None, mode: str, seed: int) -> Validation | None:
    """The validation images a protocol evaluates on: as read, or their one binarized copy."""
    if val is None or mode == "none":
        return val
    return replace(val, images=binarize_images(val.images, seed + BINARIZE_SEED_OFFSET))


def validation_record(val: Validation | None) -> dict[str, Any]:
    """The entries of config.json's ``data`` section that say which validation split a run used ({}: none)."""
    if val is None:
        return {}
    return {"val_fraction": val.fraction, "n_val": int(len(val.indices)), "val_indices_sha256": val.digest}


def validation_problem(recorded: dict[str, Any], val: Validation | None) -> str | None:
    """Why a rebuilt validation split differs from the one a run recorded (``None``: it does not)."""
    before, now = recorded.get("val_indices_sha256"), validation_record(val).get("val_indices_sha256")
    if before == now:
        return None
    if before is None or now is None:
        return "the run was trained without a validation split" if before is None else \
            "the run was trained with a validation split, and now none is carved"
    return (f"the validation split (fraction {recorded.get('val_fraction')}) now holds other images than it did "
            f"for the run ({len(val.indices):,} images where the run had {recorded.get('n_val')}), so the training "
            "images differ")
