"""The run folder's lock: one training (or evaluation that writes) at a time, stale locks cleared."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import typing
from pathlib import Path

from ..errors import RunFolderError
from .io import TEMP_NAME, read_text

LOCK = ".lock"

# ---------------------------------------------------------------------------------------------- the lock


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of process ``pid`` from Linux's /proc, or None where /proc cannot tell."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name in parentheses may contain spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _start_time(pid: int) -> str:
    """When process ``pid`` started (kernel clock ticks since boot; "" where unknown).

    Recorded in the lock so that a later process which happens to get the same PID (after a reboot or in
    a fresh container, where PIDs start again from 1) is not mistaken for the lock's owner.
    """
    stat = _proc_stat(pid)
    return stat[1] if stat else ""


def _pid_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` is a running process (not a zombie) and, when ``start`` is known, the same one."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError):  # OverflowError: a number no PID can be, from a damaged lock file
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (macOS): the PID is all there is to go on
    state, started = stat
    return state not in ("Z", "X") and not (start and started != start)


class RunLock:
    """An exclusive lock on a run folder, so two trainings never interleave their writes.

    The lock file holds ``pid host start-time``. It appears with its contents in one step (a hard link of
    a finished temporary file), so a competitor never reads a half-written lock and mistakes it for a stale
    one. A lock whose process no longer exists on this host (or whose PID now belongs to a younger
    process) is stale and taken over. Removing a stale lock happens under an advisory lock on the folder
    itself (``flock``, which the kernel drops when its holder dies, so it can never go stale): the remover
    re-reads the lock file there, and since nobody else removes a lock file meanwhile and no new one can
    appear while the stale one exists, it can only ever remove the stale one. Of several processes
    breaking the same stale lock, exactly one then creates the new lock. Holding the lock, the process also
    removes temporary files that killed writers left in the folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False
        self._content = ""

    def acquire(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}".rstrip() + "\n"
        for _ in range(5):
            if self._create(me):
                self.held, self._content = True, me
                _remove_dead_temporaries(self.path.parent)
                return self
            owner = self._owner(self.path)
            if owner is not None:
                raise RunFolderError(
                    f"run folder {self.path.parent} is in use by process {owner} "
                    "(wait for it to finish or stop it; a lock of a dead process is cleared automatically)"
                )
            self._break_stale()
        raise RunFolderError(f"could not lock run folder {self.path.parent}; remove {self.path} if no run uses it")

    def _create(self, content: str) -> bool:
        """Create the lock file holding ``content``; False if a lock file exists already."""
        tmp = self.path.with_name(f"{LOCK}.tmp-{os.getpid()}")
        try:
            tmp.write_text(content)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV):
                    raise
            # No hard links on this file system: an exclusive create, with a moment where it is empty, so
            # it happens under the guard that a process breaking a stale (or empty) lock takes.
            with _folder_guard(self.path.parent):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(content)
            return True
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {self.path.parent}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _break_stale(self) -> None:
        """Remove the lock file if, read again under the folder's guard, it is still stale."""
        with _folder_guard(self.path.parent):
            if self.path.exists() and self._owner(self.path) is None:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass  # removed by a process that does not take the guard (an older vaekit)
                except OSError as e:
                    raise RunFolderError(f"cannot take over the stale lock {self.path}: {e.strerror or e}") from e

    @staticmethod
    def _owner(path: Path) -> int | None:
        """PID of a live process holding the lock file ``path``, or None when the lock is stale or gone."""
        try:
            parts = read_text(path, limit=4096).split()
            pid = int(parts[0])
        except (RunFolderError, ValueError, IndexError):
            return None
        host = parts[1] if len(parts) > 1 else ""
        start = parts[2] if len(parts) > 2 else ""
        if pid <= 0:
            return None  # no process has such a PID: a damaged lock
        if host and host != socket.gethostname():
            return pid  # another machine's process: cannot check, assume alive
        return pid if pid != os.getpid() and _pid_alive(pid, start) else None

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text() == self._content:  # never remove a lock another process took over
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def _folder_guard(folder: Path) -> typing.Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (blocking), released on exit or when the process dies.

    Where there is no ``flock`` (Windows) or the file system refuses it, this guards nothing, and two
    processes breaking the same stale lock at the same moment could both go on to remove a fresh one.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise RunFolderError(f"cannot open run folder {folder}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF):
                raise RunFolderError(f"cannot lock run folder {folder}: {e.strerror or e}") from e
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _remove_dead_temporaries(folder: Path) -> None:
    """Delete temporary files in ``folder`` whose writer no longer runs (a kill during an atomic write)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = TEMP_NAME.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()


def writer_of(run_dir: Path) -> int | None:
    """PID of a live process that holds ``run_dir``'s lock (a training, or an evaluation that writes), else None.
    Commands that only read a run use this to say that the weights they read may be replaced soon."""
    return RunLock._owner(Path(run_dir) / LOCK)
