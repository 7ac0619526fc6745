"""Datasets for vaekit: find, verify, download and read MNIST-style IDX data, CIFAR-10 and your own images.

The entry point is :func:`load_splits`, which returns a dataset's train and test split as ``uint8`` arrays and
finds the files in the user's folder, the cache, copies already on the machine (torchvision, Debian) or the
official mirrors, in that order (see :mod:`vaekit.data.resolve`). Every file is checked structurally, and
anything not explicitly supplied by the user is verified by checksum before use. With no dataset named and no
network, a 5,000-digit real MNIST subset shipped inside vaekit keeps a fresh install usable.

Your own images (a folder, a ``.npy``/``.npz`` file, an array or a tensor) are read by :func:`load_own_data`,
which returns the splits and an ``info`` record from which :func:`load_own_data_from_info` rebuilds exactly the
same splits later (see :mod:`vaekit.data.own`).

Environment: ``VAEKIT_DATA`` (cache folder), ``VAEKIT_SEARCH_PATH`` (roots searched for existing copies,
replacing the defaults), ``VAEKIT_OFFLINE=1`` (never download).
"""

from __future__ import annotations

from .embedded import EMBEDDED_SOURCE, load_embedded
from .errors import BadInputError, DataError, DatasetNotFoundError, IDXError
from .idx import read_idx, read_image_label_pair, write_idx
from .own import bad_files_text, load_own_data, load_own_data_from_info, skipped_warning
from .registry import DATASETS, EMBEDDED_NAME, DatasetSpec, FileSpec, cache_dir, register
from .resolve import fetch, load_splits, locate, search_roots
from .splits import Splits

__all__ = [
    "BadInputError",
    "DATASETS",
    "EMBEDDED_NAME",
    "EMBEDDED_SOURCE",
    "DataError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "FileSpec",
    "IDXError",
    "Splits",
    "bad_files_text",
    "cache_dir",
    "fetch",
    "load_embedded",
    "load_own_data",
    "load_own_data_from_info",
    "load_splits",
    "locate",
    "read_idx",
    "read_image_label_pair",
    "register",
    "search_roots",
    "skipped_warning",
    "write_idx",
]
