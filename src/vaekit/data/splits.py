"""The :class:`Splits` container returned by :func:`vaekit.data.load_splits`, and its consistency checks.

Also :class:`RawData`, the user's own images before they are split, and :func:`content_digest`, the
fingerprint that lets a later command check it rebuilt exactly the images a run was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .chunked import chunks
from .errors import DataError
from .idx import check_pair
from .registry import DatasetSpec

__all__ = ["RawData", "Splits", "content_digest", "make_splits"]


@dataclass(frozen=True, eq=False)  # field-wise == on arrays is ambiguous, so Splits compare by identity
class Splits:
    """A dataset's train and test split as ``uint8`` arrays: images (N, H, W) for grey data or (N, H, W, 3) for
    colour, labels (N,).

    ``source`` records where the data came from (a folder, ``"download"`` or ``"vaekit (embedded MNIST subset)"``)
    so that a training run can log exactly which data it saw. ``class_names`` names label 0, 1, ... when known.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    class_names: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W) for grey images, (H, W, 3) for colour."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    @property
    def channels(self) -> int:
        """1 for grey images, 3 for colour."""
        return 1 if self.train_images.ndim == 3 else int(self.train_images.shape[-1])

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
                    f"{names[role]}: images are {_shape_text(hw)} but {spec.name} images are "
                    f"{_shape_text(spec.image_shape)}; this is not {spec.name} data, replace the file"
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
        class_names=spec.class_names,
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(d)) for d in shape)


@dataclass
class RawData:
    """The user's own images and labels as read, before the train/test split.

    ``images`` is ``uint8`` (N, H, W) or (N, H, W, 3) and may be memory-mapped; ``labels`` is (N,) or ``None``
    for unlabelled data. ``n_given_train`` is set when the data came already split: the first
    ``n_given_train`` images are the training split and the rest the test split. ``bad`` lists the files left
    out with ``skip_bad`` as ``(path, problem)``. ``digest`` is :func:`content_digest` of the data. ``names``
    gives each image's file (relative to ``path``) for a folder; ``None`` for arrays, whose images are rows.
    """

    kind: str
    name: str
    path: str | None
    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    digest: str
    n_given_train: int | None = None
    bad: list[tuple[str, str]] = field(default_factory=list)
    names: list[str] | None = None


def content_digest(images: np.ndarray, labels: np.ndarray | None, n_given_train: int | None = None) -> str:
    """SHA-256 over the images' shape and pixels, the labels (as int64) and a given split's boundary.

    Read in chunks of images, so a memory-mapped array is hashed without being loaded or kept resident whole.
    """
    digest = hashlib.sha256()
    digest.update(repr((tuple(int(d) for d in images.shape), str(images.dtype), n_given_train)).encode())
    for _, chunk in chunks(images):
        digest.update(np.ascontiguousarray(chunk).data)
    if labels is None:
        digest.update(b"unlabelled")
    else:
        digest.update(np.ascontiguousarray(labels, dtype="<i8").data)
    return digest.hexdigest()
