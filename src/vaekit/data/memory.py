"""Refusing data whose decoded size cannot fit in memory, before the memory is asked for.

Without this check a large request ends as a ``MemoryError`` deep inside NumPy (or the kernel ends the
process), which reads like a failed run instead of what it is: data too large for the machine, which the
user fixes by changing the data or ``--image-size``.
"""

from __future__ import annotations

import os

from .errors import BadInputError

__all__ = ["available_bytes", "check_fits", "gigabytes"]


def available_bytes() -> int | None:
    """Memory this process could still get: ``MemAvailable`` on Linux, else the physical memory; ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def gigabytes(nbytes: int) -> str:
    """``nbytes`` for a message: ``"1.5 GB"`` (or MB below a gigabyte)."""
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:,.1f} MB"


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Raise :class:`BadInputError` (``"<what> would take N GB, more than ...; <fix>"``) if ``nbytes`` cannot fit."""
    available = available_bytes()
    if available is not None and nbytes > available:
        raise BadInputError(f"{what} would take {gigabytes(nbytes)}, more than the {gigabytes(available)} of memory "
                            f"available; {fix}")
