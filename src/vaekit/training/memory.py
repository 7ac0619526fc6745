"""Giving memory back to the operating system once training no longer needs it."""

from __future__ import annotations

import contextlib
import ctypes
import sys


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc only; elsewhere nothing to do).

    The training data and the optimizer's moments are freed by reference counting as soon as they are
    dropped; no collection of cycles is needed first, which in a long-lived process costs a noticeable pause.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): it returns memory on its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
