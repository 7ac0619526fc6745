"""Files the commands that use a run write: encodings as tables, and images as PNG files and grids.

Every file is written atomically (:func:`vaekit.run.io.atomic_write`), and none that exists is replaced
without ``force`` (``--force``): :func:`check_output` is called before any work, so a refusal costs nothing.

An encoding is one row per image: its ``name`` (file path, or ``test:3``), its ``label`` (-1 in ``.npy``,
empty in ``.csv``, null in ``.parquet`` when the images have none), then its posterior mean ``mu`` (and
``logvar``). In ``.npy`` that is a structured array (``np.load(path)["mu"]`` is the (n, zdim) matrix; no
pickle), in ``.csv`` and ``.parquet`` the columns ``mu_0 ... mu_{d-1}`` (and ``logvar_0 ...``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from vaekit.config import ENCODING_FORMATS, ConfigError
from vaekit.data.images import IMAGE_EXTENSIONS
from vaekit.errors import VaekitError, WriteError
from vaekit.run.io import atomic_write, temporary_path, write_bytes
from vaekit.text import printable
from vaekit.use.latent import Encoding

__all__ = ["OutputExistsError", "PngWriter", "check_output", "encoding_format", "image_stem", "make_folder",
           "staged_folder", "to_uint8", "write_encoding", "write_png"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STEM_CHARS = 60
_WRITERS = 8  # PNG files written at once
_PENDING = 256  # images waiting to be written, at most


class OutputExistsError(VaekitError):
    """The output named already exists, and replacing it was not asked for."""


def check_output(path: Path, force: bool, *, folder: bool = False, files: str = "",
                 run: str | os.PathLike | None = None) -> None:
    """Refuse to replace what ``path`` holds without ``force``: a file, or for ``folder`` a folder with files.

    A new folder named like an image (``recs.png``) is refused too: the user meant one image file, and would
    otherwise find a folder of that name. ``files`` names the image files the command can write instead.
    ``run``: the run folder read, whose own files (and the folder itself) are never an output, ``force`` or not:
    ``--out RUN/metrics.csv --force`` would leave a run that no command can read.
    """
    if run is not None:
        _check_outside_run(path, Path(run))
    if folder and path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder; choose another --out")
    if folder and not path.exists() and path.suffix.lower() in IMAGE_EXTENSIONS:
        raise ConfigError(f"--out {path}: a folder is written here, not a {path.suffix} file; give a folder name "
                          f"without an image extension{files}")
    if not folder and path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name for --out")
    if not folder and path.exists() and not path.is_file():
        raise OutputExistsError(f"{path} is not a regular file (a device, pipe or socket, or a link to one), which "
                                "--force never replaces; choose a file name for --out")
    taken = path.is_dir() and any(path.iterdir()) if folder else path.exists()
    if taken and not force:
        what = "folder already holds files; pass --force to replace them" if folder else \
            "file already exists; pass --force to replace it"
        raise OutputExistsError(f"{path}: the {what}, or choose another --out")


def make_folder(folder: Path, shown: Path | None = None) -> None:
    """``folder`` and its parents, or one :class:`WriteError` line naming ``shown`` (default ``folder``): a
    read-only disk, a file in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"could not create the folder {shown or folder}: {e.strerror or e}; choose another "
                         "--out") from e


# The image files a command writes into a folder: sample_NNNNN.png (vaekit sample), NNNNN_NAME.png (image_stem).
_WRITTEN_IMAGE = re.compile(r"^(sample_)?\d+(_[^/]*)?\.png$")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """The folder to write a command's many files into, such that ``out`` changes whole or not at all.

    Files written one by one (thousands of reconstructions) would leave a half-filled folder after Ctrl-C or a
    failed write, which the next call then refuses to replace without ``--force``. The files are written into a
    temporary folder beside ``out`` (:func:`vaekit.run.io.temporary_path`, as atomic writes name their files).
    A new ``out`` is that folder renamed when complete. An existing one (empty, or replaced into with ``--force``)
    receives the new files by rename once all are written, and loses the images an earlier call wrote that this
    one did not (``-n 8`` after ``-n 64``): other files in it are the user's and stay.
    """
    staging = temporary_path(out)
    make_folder(out.parent)
    make_folder(staging, out)
    try:
        yield staging
        if out.is_dir():
            _replace_images(staging, out)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only the files this call wrote; the error itself goes on
        raise


def _replace_images(staging: Path, out: Path) -> None:
    """Move the staged files into ``out`` and remove the images of an earlier call that this one did not write."""
    new = {p.name for p in staging.iterdir()}
    for name in new:
        os.replace(staging / name, out / name)
    for old in out.iterdir():
        if old.name not in new and _WRITTEN_IMAGE.match(old.name) and old.is_file() and not old.is_symlink():
            old.unlink()
    staging.rmdir()


def _check_outside_run(path: Path, run: Path) -> None:
    """A run's folder and the files in it (at any depth: ``RUN/tensorboard/...`` too) are never replaced."""
    target, run = path.resolve(), run.resolve()
    if target == run:
        raise ConfigError(f"--out {path} is the run folder itself; choose a new name (inside it or elsewhere)")
    if run in target.parents and target.exists():
        raise ConfigError(f"--out {path} would replace {target.relative_to(run)} in the run folder, which --force "
                          "never does to a run's files; choose a new name, or delete that file first")


def encoding_format(path: Path) -> str:
    """The table format ``path``'s extension asks for; parquet only where pyarrow is installed."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ENCODING_FORMATS:
        raise ConfigError(f"--out {path}: cannot tell the format from its extension; end it with "
                          f"{', '.join('.' + f for f in ENCODING_FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow, which is not installed: pip install pyarrow "
                              "(or 'vaekit[parquet]'), or write .csv or .npy") from None
    return fmt


def _columns(enc: Encoding) -> list[tuple[str, np.ndarray]]:
    """The numeric columns of an encoding: ``mu_0 ...``, then ``logvar_0 ...`` when it has them."""
    blocks = [("mu", enc.mu)] + ([("logvar", enc.logvar)] if enc.logvar is not None else [])
    return [(f"{key}_{j}", values[:, j]) for key, values in blocks for j in range(values.shape[1])]


def write_encoding(path: Path, enc: Encoding) -> None:
    """``enc`` as a table at ``path``, in the format of its extension (see the module docstring)."""
    fmt = encoding_format(path)
    make_folder(path.parent)
    if fmt == "npy":
        write_bytes(path, _npy_bytes(enc))
    elif fmt == "csv":
        write_bytes(path, _csv_text(enc).encode("utf-8", "surrogateescape"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        labels = None if enc.labels is None else pa.array(enc.labels.astype(np.int64))
        # a file name that is not UTF-8 is written with its odd bytes as \xNN, as vaekit prints it
        table = pa.table({"name": pa.array([printable(n) for n in enc.names], pa.string()),
                          "label": labels if labels is not None else pa.nulls(len(enc.names), pa.int64()),
                          **dict(_columns(enc))})
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _npy_bytes(enc: Encoding) -> bytes:
    width = enc.mu.shape[1]
    fields = [("name", f"U{max((len(n) for n in enc.names), default=1)}"), ("label", "<i8"), ("mu", "<f4", (width,))]
    if enc.logvar is not None:
        fields.append(("logvar", "<f4", (width,)))
    table = np.zeros(len(enc.names), dtype=fields)
    table["name"] = enc.names
    table["label"] = -1 if enc.labels is None else enc.labels
    table["mu"] = enc.mu
    if enc.logvar is not None:
        table["logvar"] = enc.logvar
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    return buffer.getvalue()


def _csv_text(enc: Encoding) -> str:
    """Floats with 9 significant digits: each float32 reads back exactly."""
    columns = _columns(enc)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "label", *(name for name, _ in columns)])
    for i, name in enumerate(enc.names):
        label = "" if enc.labels is None else int(enc.labels[i])
        writer.writerow([name, label, *(f"{values[i]:.9g}" for _, values in columns)])
    return buffer.getvalue()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] as 8-bit pixels (rounded to the nearest level)."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    """One image (H, W) grey or (H, W, 3) colour, uint8 or float in [0, 1], as a PNG file written atomically."""
    pixels = image if image.dtype == np.uint8 else to_uint8(image)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "PNG")
    write_bytes(path, buffer.getvalue())


def image_stem(index: int, name: str, digits: int) -> str:
    """A file name stem for image ``index`` named ``name``: its position first (so the files sort in input order
    and never collide), then its own name's stem made safe for any file system."""
    stem = _UNSAFE.sub("_", Path(name).stem.replace(":", "_")).strip("._")[:_STEM_CHARS]
    return f"{index:0{digits}d}_{stem}" if stem else f"{index:0{digits}d}"


class PngWriter:
    """Writes many PNG files on a few threads, in a ``with`` block, at most ``_PENDING`` images held at a time.

    Each atomic write ends with an fsync that waits for the disk (14 ms a file on a virtual disk, measured), while
    encoding a small PNG takes 0.4 ms: one file after another, 10,000 reconstructions took 168 s. Eight writes in
    flight overlap those waits. The first failure is raised (by :meth:`write` or on leaving the block), and the
    files not yet written are dropped.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="vaekit-png")
        self._pending: deque[Future[None]] = deque()

    def write(self, path: Path, image: np.ndarray) -> None:
        while len(self._pending) >= _PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write_png, path, image))

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            while self._pending and kind is None:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
