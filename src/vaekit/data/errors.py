"""Exceptions raised by :mod:`vaekit.data`.

Every message is a single line that names the problem (and the file or folder concerned) and says what to do
about it, because the command line prints it verbatim as ``vaekit: error: <message>``.
"""

from __future__ import annotations


class DataError(Exception):
    """A dataset could not be found, read or verified; the message names the problem and the fix."""


class IDXError(DataError):
    """An IDX file is structurally broken (bad magic, unsupported type, wrong size, corrupt gzip, ...).

    The message always starts with the file's path or URL, so a user with several data folders knows which
    copy to replace.
    """


class DatasetNotFoundError(DataError):
    """No usable copy of a dataset was found anywhere and none could be downloaded.

    Kept distinct from other :class:`DataError` s so that :func:`vaekit.data.load_splits` can fall back to the
    embedded MNIST subset only in this situation, never when a copy exists but is broken.
    """
