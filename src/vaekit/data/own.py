"""Training on your own images: :func:`load_own_data` and, for later commands, :func:`load_own_data_from_info`.

``load_own_data`` reads a folder of images (:mod:`vaekit.data.folder`), an array file or an in-memory array
(:mod:`vaekit.data.arrays`), splits it into training and test images, and returns the :class:`Splits` with an
``info`` dict of plain JSON values. Stored in a run's ``config.json``, that dict is all
``load_own_data_from_info`` needs to rebuild exactly the same splits, or to say clearly why it cannot (the
folder was moved, images were added, pixels changed).

The split: ``train/`` and ``test/`` subfolders (or ``x_train``/``x_test`` arrays) are used as given.
Otherwise each image is held out or not by a hash of its own pixels and ``seed`` (:mod:`vaekit.data.holdout`),
so adding or removing images moves no other image between the splits and identical images stay on one side;
about ``N * test_fraction`` images are held out, at least one, leaving at least one to train on. Both splits
keep the data's own order. A memory-mapped array is split in one pass a chunk at a time
(:mod:`vaekit.data.chunked`): the splits are the one copy of the data in memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import read_array_file, read_array_source
from .chunked import split_rows
from .errors import BadInputError, DataError
from .folder import read_folder
from .holdout import hash_positions, held_out_mask, split_indices
from .splits import RawData, Splits

__all__ = [
    "OWN_SPLIT_SEED",
    "INFO_VERSION",
    "bad_files_text",
    "load_own_data",
    "load_own_data_from_info",
    "read_own_data",
    "skipped_warning",
    "split_indices",
    "split_mask",
]

# 2: the random split holds out images by a hash of their pixels (1: by a seeded permutation of positions).
INFO_VERSION = 2
# Seed of the split of your own images into training and test images: fixed, so runs of any --seed, and
# `vaekit data split`, hold out the same images.
OWN_SPLIT_SEED = 0
# How a command is told where a run's images are now.
WHERE_NOW = "--data-dir PATH for evaluate, plot and explore; --data PATH for train --resume"
ARRAY_SUFFIXES = (".npy", ".npz")
IN_MEMORY = "in-memory array"
_INFO_KEYS = (
    "version", "kind", "path", "class_names", "split", "test_fraction", "seed", "image_size", "channels",
    "image_shape", "n_train", "n_test", "skip_bad", "n_bad", "bad", "digest", "test_indices_sha256",
)


def _check_options(image_size: Any, channels: Any, test_fraction: Any, seed: Any) -> None:
    """Refuse option values that cannot work, before any file is read."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image size must be a positive whole number of pixels, got {image_size!r}")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise DataError(f"channels must be 1 (grey) or 3 (colour), got {channels!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be a number between 0 and 1 (exclusive), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative whole number, got {seed!r}")


def read_own_data(
    source: Any,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    cache: bool = True,
) -> RawData:
    """Read ``source`` (a folder, a ``.npy``/``.npz`` file, an array or tensor) without splitting it."""
    if not isinstance(source, (str, os.PathLike)):
        return read_array_source(source, channels=channels, image_size=image_size)
    path = Path(source).expanduser()
    if path.is_dir():
        return read_folder(path, image_size=image_size, channels=channels, skip_bad=skip_bad, progress=progress,
                           cache=cache)
    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        return read_array_file(path, channels=channels, image_size=image_size)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder; pass a folder of images, or a .npy or .npz file")
    hint = "; pass the folder holding it" if path.suffix.lower() in (".png", ".jpg", ".jpeg") else ""
    raise BadInputError(f"{path}: not a folder, .npy or .npz file{hint}; vaekit trains on a folder of images or "
                        "an array file")


def _indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").data).hexdigest()


def split_mask(raw: RawData, test_fraction: float, seed: int) -> np.ndarray:
    """Which of ``raw``'s images are test images (a boolean mask): the given split, or the held-out ones.

    Raises :class:`BadInputError` when every image is identical: none could be tested without being trained on.
    """
    if raw.n_given_train is not None:
        return np.arange(len(raw.images)) >= raw.n_given_train
    test = held_out_mask(hash_positions(raw.images, seed), raw.labels, test_fraction)
    if not test.any():
        raise BadInputError(f"{raw.path or IN_MEMORY}: all {len(raw.images):,} images are identical, so none can be "
                            "held out for testing without also being trained on; add different images")
    return test


def _split(raw: RawData, test_fraction: float, seed: int) -> tuple[Splits, str | None]:
    """Split ``raw``; return the splits and the digest of a random split's test indices (``None``: given)."""
    labels = raw.labels if raw.labels is not None else np.zeros(len(raw.images), np.uint8)
    test = split_mask(raw, test_fraction, seed)
    if raw.n_given_train is not None:
        cut = raw.n_given_train
        train_images, test_images, test_digest = raw.images[:cut], raw.images[cut:], None
    else:
        train_images, test_images = split_rows(raw.images, test)
        test_digest = _indices_digest(np.flatnonzero(test))
    splits = Splits(
        name=raw.name,
        train_images=train_images,
        train_labels=labels[~test],
        test_images=test_images,
        test_labels=labels[test],
        source=raw.path or IN_MEMORY,
        class_names=tuple(raw.class_names) if raw.class_names is not None else None,
    )
    return splits, test_digest


def load_own_data(
    source: Any,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
    cache: bool = True,
) -> tuple[Splits, dict[str, Any]]:
    """Load your own images as train and test :class:`Splits`, plus the ``info`` that rebuilds them later.

    ``source``: a folder of images, a ``.npy``/``.npz`` file, a NumPy array or torch tensor, an
    ``(images, labels)`` tuple or a mapping of arrays (``x``/``y``, or ``x_train``/``x_test``...).
    ``image_size`` N resizes (shorter side) and centre-crops to NxN; ``channels`` 1 or 3 converts (default:
    1 when every image is grey, else 3). ``skip_bad`` leaves unreadable files out (listed in the info) instead
    of raising. ``progress`` shows progress bars while a folder is decoded; ``cache`` keeps the decoded folder
    for the next call. Images come back ``uint8`` (N, H, W) or (N, H, W, 3); labels are zeros for unlabelled
    data (``info["class_names"]`` is then ``None``). Every problem is one :class:`DataError` line.
    """
    _check_options(image_size, channels, test_fraction, seed)
    raw = read_own_data(source, image_size=image_size, channels=channels, skip_bad=skip_bad, progress=progress,
                        cache=cache)
    splits, test_digest = _split(raw, test_fraction, seed)
    random = raw.n_given_train is None
    info = {
        "version": INFO_VERSION,
        "kind": raw.kind,
        "name": raw.name,
        "path": raw.path,
        "class_names": raw.class_names,
        "split": "random" if random else "given",
        "test_fraction": float(test_fraction) if random else None,
        "seed": int(seed) if random else None,
        "stratified": random and raw.labels is not None,
        "image_size": image_size,
        "channels": splits.channels,
        "channels_option": channels,
        "image_shape": list(splits.image_shape),
        "n_train": int(len(splits.train_images)),
        "n_test": int(len(splits.test_images)),
        "skip_bad": bool(skip_bad),
        "n_bad": len(raw.bad),
        "bad": [{"path": rel, "problem": problem} for rel, problem in raw.bad],
        "digest": raw.digest,
        "test_indices_sha256": test_digest,
    }
    return splits, info


def _check_info(info: Any) -> None:
    if not isinstance(info, dict):
        raise DataError(f"the run's data record is not a JSON object (got {type(info).__name__}); retrain the run")
    missing = [key for key in _INFO_KEYS if key not in info]
    if missing:
        raise DataError(f"the run's data record lacks {', '.join(missing)}; it was edited or written by another "
                        "version, retrain the run")
    if info["version"] == 1 and info["split"] == "random":
        raise DataError("the run's test images were drawn by an older vaekit, by position; this one holds images out "
                        "by their pixels and cannot rebuild that split, so retrain the run")
    if info["version"] not in (1, INFO_VERSION) or info["kind"] not in ("folder", "array"):
        raise DataError(f"the run's data record has version {info['version']!r} and kind {info['kind']!r}, which "
                        f"this vaekit does not read (version {INFO_VERSION}, folder or array)")


def _changed(info: dict[str, Any], new: dict[str, Any], where: str) -> str | None:
    """Why the rebuilt data differs from the recorded data (``None``: it does not)."""
    if new["split"] != info["split"]:
        return f"the run used a {info['split']} train/test split but {where} now gives a {new['split']} one"
    if new["digest"] != info["digest"]:
        before = f"{info['n_train'] + info['n_test']:,} images of {info['image_shape']}"
        now = f"{new['n_train'] + new['n_test']:,} images of {new['image_shape']}"
        if before == now and new["n_bad"] == info["n_bad"]:
            return f"{where} gives the same number of images ({now}) but different pixels or labels"
        bad = f", {new['n_bad']:,} bad files left out (was {info['n_bad']:,})" if new["n_bad"] != info["n_bad"] else ""
        return f"{where} now gives {now} (the run was trained on {before}){bad}"
    if new["test_indices_sha256"] != info["test_indices_sha256"]:
        return (f"the random split of {where} (test fraction {info['test_fraction']}, seed {info['seed']}) picks "
                "other test images than it did for the run, though the images are the same")
    return None


def load_own_data_from_info(
    info: dict[str, Any], source: Any = None, *, progress: bool = False, cache: bool = True
) -> tuple[Splits, dict[str, Any]]:
    """Rebuild the splits recorded in ``info`` (from :func:`load_own_data`), checking they are the same.

    ``source`` replaces the recorded path (a moved folder, or the same in-memory array again). Raises
    :class:`DataError` when the data cannot be found or no longer gives exactly the recorded images and split.
    """
    _check_info(info)
    source = info["path"] if source is None else source
    if source is None:
        raise DataError("the run was trained on an in-memory array, which cannot be reloaded from its record; "
                        "pass the same array (or a .npy/.npz file of it) as the data")
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the array given as data"
    if isinstance(source, (str, os.PathLike)) and not Path(source).expanduser().exists():
        raise DataError(f"{source}: the data the run was trained on is no longer there; give the path of a copy "
                        f"of it ({WHERE_NOW})")
    splits, new = load_own_data(
        # The options as first given (channels=None, not its outcome), so a folder's decode cache is reused.
        source, image_size=info["image_size"], channels=info.get("channels_option", info["channels"]),
        test_fraction=info["test_fraction"] or 0.1,
        seed=info["seed"] if info["seed"] is not None else 0, skip_bad=bool(info["skip_bad"]), progress=progress,
        cache=cache,
    )
    problem = _changed(info, new, where)
    if problem is not None:
        raise DataError(f"{problem}; the run's results would not be comparable, so restore the data it was "
                        f"trained on (or give the path of an unchanged copy: {WHERE_NOW})")
    return splits, new


def skipped_warning(info: dict[str, Any], list_path: str | os.PathLike[str] | None = None) -> str | None:
    """The one warning line for files left out with ``skip_bad`` (``None`` when none were)."""
    n_bad = int(info.get("n_bad") or 0)
    if not n_bad:
        return None
    first = info["bad"][0]
    total = n_bad + int(info["n_train"]) + int(info["n_test"])
    listed = f"; the list is in {list_path}" if list_path is not None else ""
    return (f"skipped {n_bad:,} of {total:,} image files in {info['path']} that cannot be read (e.g. "
            f"{first['path']}: {first['problem']}){listed}")


def bad_files_text(info: dict[str, Any]) -> str:
    """The skipped files, one ``path<TAB>problem`` line each, for the list written beside a run."""
    return "".join(f"{item['path']}\t{item['problem']}\n" for item in info.get("bad") or [])
