"""Exceptions raised by :mod:`vaekit.data`.

Every message is a single line that names the problem (and the file or folder concerned) and says what to do
about it, because the command line prints it verbatim as ``vaekit: error: <message>``.
"""

from __future__ import annotations


class DataError(Exception):
    """A dataset could not be found, read or verified; the message names the problem and the fix."""


class FileFormatError(DataError):
    """A dataset file is structurally broken (not what its name says, truncated, corrupt).

    The message always starts with the file's path or URL. Resolving a dataset treats such a file as absent
    and looks for another copy, so every format vaekit reads raises a subclass of this.
    """


class ArchiveError(FileFormatError):
    """A dataset archive (such as CIFAR-10's ``.tar.gz``) is unreadable or lacks the members it must hold."""


class IDXError(FileFormatError):
    """An IDX file is structurally broken (bad magic, unsupported type, wrong size, corrupt gzip, ...).

    The message always starts with the file's path or URL, so a user with several data folders knows which
    copy to replace.
    """


class DatasetNotFoundError(DataError):
    """No usable copy of a dataset was found anywhere and none could be downloaded.

    Kept distinct from other :class:`DataError` s so that :func:`vaekit.data.load_splits` can fall back to the
    embedded MNIST subset only in this situation, never when a copy exists but is broken.
    """


class BadInputError(DataError):
    """Images or arrays given as training data cannot be used as they are.

    ``bad`` lists every unusable file as ``(path, problem)`` (empty when the problem is the input as a whole,
    such as an empty folder or mixed image sizes), so callers can show or save the full list while the message
    stays one line.
    """

    def __init__(self, message: str, bad: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.bad = list(bad or [])
