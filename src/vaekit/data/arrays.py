"""Reading images given as arrays: ``.npy`` and ``.npz`` files, NumPy arrays and torch tensors.

Accepted images: (N, H, W) or (N, H, W, C) with C in 1, 3 or 4 (channels last), ``uint8`` (0-255) or float in
[0, 1] (converted to ``uint8`` as ``round(x * 255)``). A fourth channel is alpha and is composited on white,
as it is for PNG files, so the same picture gives the same pixels from a file or an array.

Labels (optional): a 1-D array of N non-negative integers. Labels other than 0..K-1 (identifiers such as
1440764) are renumbered 0..K-1 in increasing order, their original values becoming the class names. An
``.npz`` file (or a mapping given directly) holds the images under ``x`` or ``images`` and the labels under
``y`` or ``labels``; a file with a single array uses it as the images. Keras-style ``x_train``/``x_test``
(with ``y_train``/``y_test``) give the split as is.

Files are checked before NumPy reads them: the first bytes must be a ``.npy`` or ``.npz`` (zip) file, each
``.npy`` header must declare a numeric dtype and non-negative dimensions whose size the file (or zip entry)
really holds, and an ``.npz`` file's arrays must fit in the memory available, so a damaged or hostile file is
one line naming the data, never a traceback or an "out of memory" that blames the model.

Files are always opened with ``allow_pickle=False``: an array file can never run code. A ``.npy`` file is
memory-mapped, and when no conversion is needed the images stay memory-mapped; conversions go through a chunk
of images at a time, so no float copy of the data set is ever made.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import BadInputError
from .images import fit
from .memory import check_fits
from .pixels import composite_on_white, luma
from .splits import RawData, content_digest

__all__ = ["convert_chunk", "read_array_file", "read_array_source"]

_CHUNK_BYTES = 1 << 24
_IMAGE_KEYS = ("x", "images")
_LABEL_KEYS = ("y", "labels")
_SPLIT_KEYS = ("x_train", "x_test")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_RATIO = 1032  # deflate's largest expansion: no honest zip entry grows more than this
_OBJECTS = ("holds Python objects (dtype object), which vaekit never loads because that could run code; save a "
            "numeric array instead")


def _fail(where: str, problem: str) -> BadInputError:
    return BadInputError(f"{where}: {problem}")


def _check_images(x: np.ndarray, where: str, min_images: int = 2) -> None:
    """Refuse anything that is not a stack of at least ``min_images`` uint8 or [0, 1] float images, with the fix.

    Training needs 2 (one to train on, one to test); a trained model takes any number from 1.
    """
    if x.dtype != np.uint8 and x.dtype.kind in "iub":
        raise _fail(where, f"images have dtype {x.dtype}; use uint8 (0-255) or float in [0, 1], e.g. "
                    "x.astype(np.uint8) for integer pixel values 0-255")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise _fail(where, f"images have dtype {x.dtype}, not numbers; use a uint8 (0-255) or float ([0, 1]) array")
    if x.ndim not in (3, 4):
        raise _fail(where, f"images have shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C = 1, 3 or 4")
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4):
        hint = "; channels-first data: use np.moveaxis(x, 1, -1)" if x.shape[1] in (1, 3, 4) else ""
        raise _fail(where, f"images have shape {x.shape} and {x.shape[3]} channels on the last axis; expected "
                    f"(N, H, W) or (N, H, W, C) with C = 1, 3 or 4{hint}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise _fail(where, f"images have shape {x.shape}, with no pixels")
    if x.shape[0] < min_images:
        need = "at least 2 are needed (one to train on, one to test)" if min_images == 2 else "give at least one"
        raise _fail(where, f"holds {x.shape[0]} image{'s' if x.shape[0] != 1 else ''}; {need}")


def _chunks(x: np.ndarray) -> range:
    per_image = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize)
    return range(0, len(x), max(1, _CHUNK_BYTES // per_image))


def _check_floats(x: np.ndarray, where: str) -> None:
    """NaN, infinities and values outside [0, 1] are refused, naming the first image concerned."""
    chunks = _chunks(x)
    low, high = np.inf, -np.inf
    for start in chunks:
        chunk = np.asarray(x[start : start + chunks.step])
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            first = start + int(np.argmin(finite))
            raise _fail(where, f"image {first} holds NaN or infinite values; fix or drop the images that do")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if low < 0 or high > 1:
        raise _fail(where, f"float images must be in [0, 1] but values range from {low:g} to {high:g}; divide "
                    "0-255 data by 255, or undo any normalisation")


def convert_chunk(chunk: np.ndarray, channels: int, image_size: int | None) -> np.ndarray:
    """One chunk of checked images to ``uint8`` with ``channels`` channels (and resized): the one conversion of
    arrays, so images a trained model is given later are prepared as its training images were."""
    if chunk.dtype != np.uint8:
        values = np.asarray(chunk, dtype=np.float32 if chunk.dtype.itemsize < 4 else chunk.dtype)
        chunk = np.rint(values * 255).astype(np.uint8)
    if chunk.ndim == 4 and chunk.shape[3] == 4:
        chunk = composite_on_white(chunk)
    if chunk.ndim == 4 and chunk.shape[3] == 1:
        chunk = chunk[..., 0]
    if channels == 1 and chunk.ndim == 4:
        chunk = luma(chunk)
    if image_size is not None and chunk.shape[1:3] != (image_size, image_size):
        chunk = np.stack([fit(np.ascontiguousarray(img), image_size) for img in chunk])
    if channels == 3 and chunk.ndim == 3:
        chunk = np.repeat(chunk[..., None], 3, axis=3)
    return chunk


def normalise_images(x: Any, where: str, *, channels: int | None, image_size: int | None,
                     min_images: int = 2) -> np.ndarray:
    """Check ``x`` and return it as ``uint8`` (N, H, W) or (N, H, W, 3); a view of ``x`` when nothing changes."""
    x = _as_numpy(x, where)
    _check_images(x, where, min_images)
    if x.dtype.kind == "f":
        _check_floats(x, where)
    natural = 3 if x.ndim == 4 and x.shape[3] in (3, 4) else 1
    channels = natural if channels is None else channels
    height, width = (image_size, image_size) if image_size is not None else x.shape[1:3]
    has_alpha = x.ndim == 4 and x.shape[3] == 4
    if x.dtype == np.uint8 and channels == natural and not has_alpha and (height, width) == tuple(x.shape[1:3]):
        return x[..., 0] if x.ndim == 4 and x.shape[3] == 1 else x
    shape = (len(x), height, width) + ((3,) if channels == 3 else ())
    check_fits(math.prod(shape), f"{where}: the {len(x):,} converted {width}x{height} images",
               "pass a smaller --image-size, or use fewer images")
    out = np.empty(shape, dtype=np.uint8)
    chunks = _chunks(x)
    for start in chunks:
        out[start : start + chunks.step] = convert_chunk(x[start : start + chunks.step], channels, image_size)
    return out


def normalise_labels(y: Any, n: int, where: str) -> np.ndarray:
    """Check labels: (n,) non-negative integers; returned as int64 (see :func:`dense_labels` for the classes)."""
    y = _as_numpy(y, where)
    if y.dtype.kind not in "iu":
        raise _fail(where, f"labels have dtype {y.dtype}; labels must be integers (class 0, 1, 2, ...)")
    if y.shape != (n,):
        raise _fail(where, f"labels have shape {y.shape} but there are {n} images; give one label per image")
    if n and int(y.min()) < 0:
        raise _fail(where, f"label {int(y.min())} is negative; labels must be 0, 1, 2, ...")
    return np.asarray(y, dtype=np.int64)


def dense_labels(y: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Labels as classes 0..K-1 (uint8 when K <= 256), and the class names when they had to be renumbered.

    Labels already 0..K-1 are kept (and get no names). Any other set of values, such as identifiers like
    1440764, is renumbered in increasing order, and the original values become the class names, so the rest
    of vaekit sees K classes instead of a million mostly empty ones.
    """
    values = np.unique(y)
    names = None
    if len(values) and int(values[-1]) != len(values) - 1:
        y, names = np.searchsorted(values, y), [str(int(v)) for v in values]
    return (y.astype(np.uint8) if len(values) <= 256 else y.astype(np.int64)), names


def _as_numpy(value: Any, where: str) -> np.ndarray:
    """A NumPy view of an array or a torch tensor (moved to the CPU); anything else is refused."""
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        import torch

        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        return tensor.cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise _fail(where, f"expected an array or a tensor, got {type(value).__name__}")


def _pick(data: Mapping[str, Any], keys: tuple[str, ...], where: str, what: str) -> str | None:
    found = [k for k in keys if k in data]
    if len(found) > 1:
        raise _fail(where, f"holds both {found[0]!r} and {found[1]!r}; keep one array of {what}")
    return found[0] if found else None


Triple = tuple[np.ndarray, np.ndarray | None, int | None]


def _from_split_keys(data: Mapping[str, Any], where: str, channels: int | None, image_size: int | None) -> Triple:
    """Keras-style ``x_train``/``x_test`` (and ``y_train``/``y_test``): training images first, then test."""
    train = normalise_images(_get(data, "x_train", where), f"{where}[x_train]", channels=channels,
                             image_size=image_size)
    test = normalise_images(_get(data, "x_test", where), f"{where}[x_test]", channels=channels, image_size=image_size)
    if train.shape[1:] != test.shape[1:]:
        raise _fail(where, f"x_train images are {train.shape[1:]} but x_test images are {test.shape[1:]}; both "
                    "splits need the same image shape")
    given = [k for k in ("y_train", "y_test") if k in data]
    if len(given) == 1:
        raise _fail(where, f"holds {given[0]} but not {({'y_train', 'y_test'} - set(given)).pop()}; give labels for "
                    "both splits or for neither")
    labels = None
    if given:
        labels = np.concatenate([normalise_labels(_get(data, k, where), len(a), f"{where}[{k}]")
                                 for k, a in (("y_train", train), ("y_test", test))])
    return np.concatenate([train, test]), labels, len(train)


def _from_mapping(data: Mapping[str, Any], where: str, channels: int | None, image_size: int | None,
                  min_images: int = 2) -> Triple:
    """(images, labels or None, n_given_train) from ``.npz``-style keys."""
    keys = list(data.keys())
    if all(k in data for k in _SPLIT_KEYS):
        return _from_split_keys(data, where, channels, image_size)
    image_key = _pick(data, _IMAGE_KEYS, where, "images")
    if image_key is None and len(keys) == 1:
        image_key = keys[0]
    if image_key is None:
        raise _fail(where, f"holds arrays {', '.join(map(repr, keys)) or 'none'}; put the images under 'x' "
                    "(or 'images') and any labels under 'y' (or 'labels')")
    images = normalise_images(_get(data, image_key, where), f"{where}[{image_key}]", channels=channels,
                              image_size=image_size, min_images=min_images)
    label_key = _pick(data, _LABEL_KEYS, where, "labels")
    labels = None
    if label_key is not None:
        labels = normalise_labels(_get(data, label_key, where), len(images), f"{where}[{label_key}]")
    return images, labels, None


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    """``data[key]``; for an ``.npz`` file this reads (and checks) the member, so failures are reported here."""
    try:
        return data[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(f"{where}[{key}]", _load_problem(exc)) from exc


def _load_problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "pickle" in text.lower() or "object" in text.lower():
        return _OBJECTS
    return f"not a readable NumPy file ({text or type(exc).__name__}); save it again with np.save or np.savez"


def _raw(kind: str, name: str, path: str | None, images: np.ndarray, labels: np.ndarray | None,
         n_given_train: int | None) -> RawData:
    # The digest covers the labels as given, so runs recorded before they were renumbered still match.
    digest = content_digest(images, labels, n_given_train)
    names = None
    if labels is not None:
        labels, names = dense_labels(labels)
    return RawData(kind=kind, name=name, path=path, images=images, labels=labels, class_names=names,
                   digest=digest, n_given_train=n_given_train)


@dataclass(frozen=True)
class _Header:
    """What a ``.npy`` header declares: the shape, the dtype, the data's size and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    offset: int


def _not_numpy(head: bytes, what: str) -> str:
    """Why a file is not the NumPy file its name says, from its first bytes."""
    if not head:
        return "not a readable NumPy file (it is empty); save it again with np.save or np.savez"
    if head[:1] == b"\x80":  # the protocol mark every pickle since protocol 2 starts with
        return ("holds Python objects (a pickle), which vaekit never loads because that could run code; save a "
                "numeric array with np.save")
    text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
    kind = "a text file" if text else "some other kind of file"
    return f"is not a NumPy {what} file (it is {kind}); save the images with np.save or np.savez"


def _npy_header(handle: BinaryIO, where: str) -> _Header:
    """Read and check a ``.npy`` header without reading its data: magic, version, a numeric dtype, dimensions."""
    head = handle.read(8)
    if not head.startswith(_NPY_MAGIC) or len(head) < 8:
        raise _fail(where, _not_numpy(head, ".npy"))
    try:
        read = np.lib.format.read_array_header_1_0 if head[6] == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise _fail(where, "has a damaged .npy header (NumPy cannot parse it); save it again with "
                    "np.save or np.savez") from exc
    if dtype.hasobject:
        raise _fail(where, _OBJECTS)
    if any(d < 0 for d in shape):
        raise _fail(where, f"its .npy header declares shape {shape}, with a negative dimension; the file is "
                    "corrupt, save it again with np.save or np.savez")
    nbytes = math.prod(shape) * dtype.itemsize
    return _Header(tuple(shape), dtype, nbytes, handle.tell())


def _check_npy_file(path: Path, where: str) -> None:
    """A ``.npy`` file's header against the file's size, so a truncated file is refused before it is mapped."""
    with open(path, "rb") as handle:
        header = _npy_header(handle, where)
    held = path.stat().st_size - header.offset
    if header.nbytes > held:
        raise _fail(where, f"not a readable NumPy file (truncated: its header declares {header.shape} {header.dtype}, "
                    f"{header.nbytes:,} bytes, but {held:,} follow it); save it again with np.save")


def _check_npz_file(path: Path, where: str) -> None:
    """Each ``.npz`` member's header against its zip entry, and their total against the memory, before loading.

    A member is read whole (into an array, or as bytes when it is no ``.npy``), so a small file whose entries
    declare terabytes must be refused here (as the CIFAR-10 reader bounds its archive), not found out by an
    allocation failure. Reading never yields more than an entry declares, so checking the declared sizes is
    enough.
    """
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            key = f"{where}[{info.filename.removesuffix('.npy')}]"
            if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_RATIO * info.compress_size + 4096:
                raise _fail(key, f"claims to expand from {info.compress_size:,} to {info.file_size:,} bytes, more "
                            "than deflate can; the file is corrupt, save it again")
            if info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    header = _npy_header(member, key)
                if header.offset + header.nbytes != info.file_size:
                    raise _fail(key, f"its header declares {header.shape} {header.dtype} ({header.nbytes:,} bytes) "
                                f"but its zip entry holds {info.file_size - header.offset:,}; the file is corrupt, "
                                "save it again")
            total += info.file_size
    check_fits(total, f"{where}: its arrays", "use fewer or smaller images, or save them with np.save as a .npy "
               "file, which is read from disk as needed")


def _load(path: Path, where: str) -> Any:
    """``np.load`` of a checked ``.npy`` (memory-mapped) or ``.npz`` file, whatever its name's suffix."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head.startswith(_NPY_MAGIC):
            _check_npy_file(path, where)
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if head.startswith(_ZIP_MAGIC):
            _check_npz_file(path, where)
            return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError, zipfile.BadZipFile) as exc:
        raise _fail(where, _load_problem(exc)) from exc
    raise _fail(where, _not_numpy(head, path.suffix.lower() if path.suffix.lower() in (".npy", ".npz") else ".npy"))


def read_array_file(path: Path, *, channels: int | None = None, image_size: int | None = None,
                    min_images: int = 2) -> RawData:
    """Read a ``.npy`` (memory-mapped) or ``.npz`` file of images (see the module docstring)."""
    where = str(path)
    loaded = _load(path, where)
    if isinstance(loaded, np.ndarray):
        images = normalise_images(loaded, where, channels=channels, image_size=image_size, min_images=min_images)
        return _raw("array", path.stem, str(path.resolve()), images, None, None)
    with loaded:
        images, labels, n_given_train = _from_mapping(loaded, where, channels, image_size, min_images)
    return _raw("array", path.stem, str(path.resolve()), images, labels, n_given_train)


def read_array_source(source: Any, *, channels: int | None = None, image_size: int | None = None,
                      min_images: int = 2) -> RawData:
    """Read images given in memory: an array or tensor, an ``(images, labels)`` tuple, or a mapping of arrays."""
    where = "the array given as data"
    if isinstance(source, Mapping):
        images, labels, n_given_train = _from_mapping(source, where, channels, image_size, min_images)
    elif isinstance(source, tuple):
        if len(source) != 2:
            raise _fail(where, f"a tuple must be (images, labels), got {len(source)} items")
        images = normalise_images(source[0], f"{where} (images)", channels=channels, image_size=image_size,
                                  min_images=min_images)
        labels, n_given_train = normalise_labels(source[1], len(images), f"{where} (labels)"), None
    else:
        images = normalise_images(source, where, channels=channels, image_size=image_size, min_images=min_images)
        labels, n_given_train = None, None
    return _raw("array", "array", None, images, labels, n_given_train)
