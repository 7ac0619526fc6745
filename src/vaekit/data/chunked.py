"""Reading a stack of images a chunk at a time, without keeping a memory map's pages resident.

A ``.npy`` file and a decoded-image cache entry are memory-mapped. Every page of a mapping that has been read
counts in the process's resident memory until the kernel needs it back, so checking a 2 GB file's digest and
then copying out its training and test images would hold the file's pages beside the copy: twice the data's
size at peak. Here each chunk's pages are handed back once the chunk has been read (``madvise`` with
``MADV_DONTNEED``; they stay in the page cache, so reading them again costs no disk access), and the peak stays
near one copy of the data plus one chunk.

Only read-only file mappings (``np.load(..., mmap_mode="r")``) are released: there, dropping a page can never
lose data. Anything else (an array in memory, a copy-on-write mapping) is read as it is.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["CHUNK_BYTES", "chunks", "split_rows"]

CHUNK_BYTES = 1 << 24


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The read-only memory map ``array`` (or an array it views) lives in, if any."""
    current: object = array
    while isinstance(current, np.ndarray):
        mapped = getattr(current, "_mmap", None)
        if isinstance(mapped, mmap.mmap) and getattr(current, "mode", None) == "r":
            return mapped
        current = current.base
    return None


def _releaser(array: np.ndarray) -> Callable[[np.ndarray], None]:
    """A function that hands a chunk's pages of ``array``'s memory map back to the kernel (or does nothing)."""
    mapped = _mapping_of(array)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapped is None or advice is None or array.size == 0:
        return lambda chunk: None
    base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE

    def release(chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        low, high = np.lib.array_utils.byte_bounds(chunk) if hasattr(np.lib, "array_utils") else np.byte_bounds(chunk)
        start = (low - base) // page * page
        with contextlib.suppress(OSError, ValueError):  # advice only: the data is right either way
            mapped.madvise(advice, start, min(high - base, len(mapped)) - start)

    return release


def chunks(images: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` over ``images`` in chunks of about ``chunk_bytes``; a memory map's pages are
    released after each chunk (see the module docstring), so a chunk must not be used after the next one."""
    per_image = max(1, int(np.prod(images.shape[1:], dtype=np.int64)) * images.dtype.itemsize)
    step = max(1, chunk_bytes // per_image)
    release = _releaser(images)
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        yield start, chunk
        release(chunk)


def split_rows(images: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows where ``test`` is false, rows where it is true) as two new arrays, in order, read in one pass."""
    n_test = int(np.count_nonzero(test))
    train_out = np.empty((len(images) - n_test, *images.shape[1:]), images.dtype)
    test_out = np.empty((n_test, *images.shape[1:]), images.dtype)
    k_train = k_test = 0
    for start, chunk in chunks(images):
        mask = test[start : start + len(chunk)]
        n_held = int(np.count_nonzero(mask))
        # compress writes straight into the outputs: no temporary copy of the chunk
        np.compress(mask, chunk, axis=0, out=test_out[k_test : k_test + n_held])
        np.compress(~mask, chunk, axis=0, out=train_out[k_train : k_train + len(chunk) - n_held])
        k_test += n_held
        k_train += len(chunk) - n_held
    return train_out, test_out
