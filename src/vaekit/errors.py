"""Errors that reach the user as one line, with the exit code the command line uses for them."""

from __future__ import annotations


class VaekitError(Exception):
    """A problem the user can act on. ``str(error)`` is one line naming the problem and the fix.

    ``exit_code`` 2 means bad input (flags, files, data); 1 means the run itself failed; 130 means the
    user interrupted it.
    """

    exit_code = 2


class RunFolderError(VaekitError):
    """A run folder that is missing, in use, already holds a run, or contains unreadable files."""


class WriteError(VaekitError):
    """A file could not be written (disk full, permissions); the previous version is left intact."""

    exit_code = 1


class NonFiniteError(VaekitError):
    """The loss or a gradient became NaN or infinite."""

    exit_code = 1


class Interrupted(VaekitError):
    """Training stopped on Ctrl-C (exit 130) or SIGTERM (exit 143) after saving a consistent checkpoint."""

    exit_code = 130

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # as a shell reports a process ended by that signal
