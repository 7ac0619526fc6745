"""Run-folder files on disk: atomic writes, bounded reads, safetensors without pickles.

Every file is written to a temporary name and renamed, so a reader never sees half a file; every read is
bounded and refuses anything that is not a regular file, so a hostile run folder cannot hang vaekit or
fill its memory. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ..errors import RunFolderError, WriteError

# ---------------------------------------------------------------------------------------------- writing


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.<name>.tmp-<pid>`` beside it (the name
    :func:`is_temporary` knows, so a killed process's leftovers can be told apart and cleared)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers never see a partial file.

    On failure (disk full, permission denied) the temporary file is removed, the previous ``path`` is
    left untouched and a one-line :class:`WriteError` says so.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _discard(tmp)
        reason = e.strerror or str(e)
        raise WriteError(f"could not write {path}: {reason}; the previous version is intact "
                         "(free some disk space or choose another --out)") from e
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a failed write's temporary file. On a read-only file system even that unlink fails (EROFS, though
    no file was made): the write's own error is the one to report, so this one is dropped."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without syncing the folder, a power cut can bring back the old name.

    Best effort: some platforms and file systems cannot open or sync a folder, and the rename itself
    already protects against a killed process.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary files of atomic writes and of the lock: ``.<name>.tmp-<pid>``. A killed process leaves its own
# behind; the next process to lock the folder removes those whose process is gone.
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file that an atomic write or the lock may leave behind."""
    return TEMP_NAME.match(name) is not None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())



def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, blob)


# ---------------------------------------------------------------------------------------------- reading

NAME_MAX, PATH_MAX = 255, 4096  # bytes, as Linux and macOS file systems take them


def check_path_length(path: str | os.PathLike, flag: str) -> None:
    """A path the file system can take: no name over ``NAME_MAX`` bytes, the whole under ``PATH_MAX``.

    Checked before the path is used, so an overlong name is one line naming the flag, not an ``OSError``
    from deep inside (or after) training.
    """
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise RunFolderError(f"{flag}: the name {part[:24]}... is {len(os.fsencode(part))} bytes, longer than "
                                 f"the {NAME_MAX} a file name may have; use a shorter name")
    if len(os.fsencode(os.path.abspath(path))) >= PATH_MAX:
        raise RunFolderError(f"{flag}: the path is {len(os.fsencode(os.path.abspath(path)))} bytes long, more than "
                             f"the {PATH_MAX} a path may have; use a shorter path")



# A run's JSON and CSV files are kilobytes; a file this large is not one of them, and reading it whole could
# exhaust memory (a link to /dev/zero never ends).
MAX_TEXT_BYTES = 8 * 2**20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


RUN_FILES_ONLY = "a run folder holds only regular files, so replace it with the run's own file"


def check_regular(path: Path, mode: int, why: str = RUN_FILES_ONLY) -> None:
    """A run folder holds only regular files: anything else (a FIFO, a device) could block or never end."""
    if not stat.S_ISREG(mode):
        raise RunFolderError(f"{path} is a {_kind(mode)}, not a regular file; {why}")


def read_regular(path: Path, limit: int, what: str, why: str = RUN_FILES_ONLY) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``what`` and ``why`` word the refusals).

    The file is opened without blocking (a FIFO cannot stall the open) and its type checked on the open
    descriptor, so it cannot be swapped between the check and the read; only ``limit`` + 1 bytes are read, so
    a link to a device that never ends cannot exhaust memory. A failure to open or read it is the OSError
    itself, for the caller to word.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:  # checked before fdopen, which refuses a folder's descriptor with an IsADirectoryError of its own
        check_regular(path, os.fstat(fd).st_mode, why)
    except RunFolderError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RunFolderError(f"{path} is larger than {limit / 2**20:g} MB, far more than {what}; it is "
                             "not one of them, so replace it")
    return data


def read_bytes(path: Path, limit: int, what: str = "any vaekit run file") -> bytes:
    """The bytes of a run folder's regular file of at most ``limit`` bytes; anything else is one line naming the
    file (see :func:`read_regular`)."""
    try:
        return read_regular(path, limit, what)
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; is {path.parent} a vaekit run folder?") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from e


def read_text(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a regular file of at most ``limit`` bytes, as UTF-8 (see :func:`read_bytes`)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFolderError(f"{path} is not a vaekit file: it is not UTF-8 text ({e.reason})") from e


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every failure into one line naming the file."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt") from e
    except RecursionError:
        raise RunFolderError(f"{path} is not a vaekit file: its JSON is nested too deeply to read") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise RunFolderError(f"{path} is not a vaekit file: it holds a number of thousands of digits, which no "
                             "vaekit setting or result has") from None



def _pickle_kind(path: Path) -> str | None:
    """What kind of pickle-based PyTorch file ``path`` is, from its first bytes; None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save zip archive, which holds a pickle"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    return None


_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt")
_NO_PICKLES = ("vaekit loads only safetensors and never unpickles, because unpickling can run arbitrary code "
               "(convert it with safetensors.torch.save_file where you trust it)")


@contextlib.contextmanager
def _utf8_name(path: Path) -> Iterator[str]:
    """A name of ``path`` that safetensors can open: safetensors takes UTF-8 paths only, and a run folder on
    Linux may have a name that is not UTF-8; such a file is opened here and reached through its descriptor."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):
            raise
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; refuses pickles and reports corruption as one line."""
    path = Path(path)
    if path.suffix in _PICKLE_SUFFIXES:
        raise RunFolderError(f"{path} looks like a pickle-based PyTorch file; {_NO_PICKLES}")
    if not path.exists():
        pickles = [p.name for p in map(path.with_suffix, _PICKLE_SUFFIXES) if p.exists()]
        if pickles:
            raise RunFolderError(f"{path} is missing and {pickles[0]} next to it is a pickle-based PyTorch file; "
                                 f"{_NO_PICKLES}")
        raise RunFolderError(f"{path} is missing")
    try:
        check_regular(path, os.stat(path).st_mode)
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        with _utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        kind = _pickle_kind(path)  # only asked after a failure: a valid safetensors header may look alike
        if kind is not None:
            raise RunFolderError(f"{path} is not safetensors but {kind}; {_NO_PICKLES}") from e
        raise RunFolderError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                             "it is truncated or corrupt") from e
    return tensors, meta


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], path: Path) -> None:
    """``got`` has exactly the names, shapes and dtypes of ``expected``, and only finite values."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise RunFolderError(f"{path} does not match the model in config.json "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, ref in expected.items():
        t = got[k]
        if t.shape != ref.shape:
            raise RunFolderError(f"{path}: tensor {k} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise RunFolderError(f"{path}: tensor {k} has dtype {t.dtype}, expected {ref.dtype}")
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise RunFolderError(f"{path}: tensor {k} contains NaN or infinite values")


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Copy ``tensors`` into ``model`` after checking names, shapes, dtypes and finiteness."""
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    check_state(model.state_dict(), got, path)
    model.load_state_dict(got)


def finite_number(value: Any) -> bool:
    """Whether a value read from a run's JSON is a usable number: an int or float (not a bool), finite. A run folder
    may come from anyone, so its numbers are checked before they are used."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
