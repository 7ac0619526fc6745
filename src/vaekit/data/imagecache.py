"""The decoded-image cache: a folder of images decoded once into ``uint8`` ``.npy`` files.

An entry lives in ``cache_dir()/images/<key>/`` and holds ``images.npy`` (memory-mapped on load),
``labels.npy`` and ``meta.json`` (the file list, the files that could not be decoded, class names, the content
digest). The key is a hash of everything that determines the pixels: each file's relative path, size and
modification time, the preprocessing options and :data:`FORMAT_VERSION`. A changed folder gets a new key and
is decoded again; the stale entry of the same folder and options is then deleted, so edits do not pile up
copies.

Entries are written into a temporary folder beside their final place and renamed into it, so a reader sees a
complete entry or none, and a crash never leaves a half-written one under a valid key. A damaged entry is
reported by :func:`read_entry` as a miss, and decoded again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .registry import cache_dir

__all__ = ["FORMAT_VERSION", "CacheEntry", "entry_dir", "images_root", "read_entry", "write_entry"]

# Bump when decoding rules change, so existing caches are decoded again instead of reused.
FORMAT_VERSION = 1
_META = "meta.json"
_IMAGES = "images.npy"
_LABELS = "labels.npy"


@dataclass
class CacheEntry:
    """A loaded entry: memory-mapped images, labels, and the metadata written with them."""

    images: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]


def images_root() -> Path:
    """Folder holding every decoded-image cache entry."""
    return cache_dir() / "images"


def entry_dir(key: str) -> Path:
    """The folder of the entry stored under ``key``."""
    return images_root() / key


def read_entry(key: str) -> CacheEntry | None:
    """The entry stored under ``key``, or ``None`` if there is none or it is damaged."""
    folder = entry_dir(key)
    if not (folder / _META).is_file():
        return None
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        images = np.load(folder / _IMAGES, mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / _LABELS, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT_VERSION
        or images.dtype != np.uint8
        or list(images.shape) != meta.get("shape")
        or labels.shape != (images.shape[0],)
    ):
        return None
    return CacheEntry(images=images, labels=labels, meta=meta)


def write_entry(key: str, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> CacheEntry:
    """Store an entry atomically and return it loaded back (images memory-mapped).

    Raises ``OSError`` when the cache cannot be written; nothing is left behind then.
    """
    root = images_root()
    root.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "format": FORMAT_VERSION, "shape": [int(d) for d in images.shape]}
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".part", dir=root))
    try:
        np.save(tmp / _IMAGES, images, allow_pickle=False)
        np.save(tmp / _LABELS, labels, allow_pickle=False)
        (tmp / _META).write_text(json.dumps(meta), encoding="utf-8")
        final = entry_dir(key)
        _remove(final)  # a damaged entry under this key, or nothing
        try:
            os.replace(tmp, final)
        except OSError:
            if read_entry(key) is None:  # not another process's complete entry: a real failure
                raise
    finally:
        _remove(tmp)
    _prune(key, meta)
    entry = read_entry(key)
    if entry is None:
        raise OSError(f"the cache entry {entry_dir(key)} could not be read back after writing it")
    return entry


def _remove(path: Path) -> None:
    """Delete a folder (or file) if present; the cache is best-effort, so failures are ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _prune(key: str, meta: dict[str, Any]) -> None:
    """Delete older entries of the same folder and options, which a changed folder has made stale."""
    stale_of = meta.get("stale_of")
    if stale_of is None:
        return
    for folder in images_root().iterdir():
        if folder.name == key or folder.name.startswith("."):
            continue
        try:
            other = json.loads((folder / _META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(other, dict) and other.get("stale_of") == stale_of:
            _remove(folder)
