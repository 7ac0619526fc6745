"""Decoding one image file into a ``uint8`` array, the way a person looking at the picture expects it.

Rules (the same for every file, so a folder of mixed formats becomes one consistent array):

* The first frame of animated or multi-page files (GIF, TIFF, WebP) is used.
* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo stored sideways comes out upright.
* Transparent pixels are composited on white, the background an image viewer shows, so a transparent PNG
  icon looks as drawn instead of turning black where Pillow's plain conversion would drop the alpha channel.
* 16-bit grey images (modes ``I;16*`` and ``I``) are scaled to 8 bits by ``round(v * 255 / 65535)``, not
  clipped, so the whole range survives; float images (mode ``F``) are taken to lie in [0, 1].
* Colour is converted to grey with Pillow's ITU-R 601-2 luma transform; grey to colour by repeating it.
* ``image_size`` N resizes the shorter side to N and crops the centre NxN (``ImageOps.fit``, bicubic). An image
  already NxN is left untouched, so its pixels are exactly those in the file. JPEGs much larger than N are
  decoded at a reduced scale first (``Image.draft``), as ``Image.thumbnail`` does, which is several times faster.
* An image whose width x height exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` is refused as a decompression bomb.

Whether an image counts as grey is decided by its file's colour mode (grey, 16-bit grey, black and white, or a
palette of greys), not by its pixels, so the decision is quick and predictable.

Every problem is raised as :class:`ImageProblem`, whose message is a short clause such as ``"empty file"`` or
``"truncated image (image file is truncated)"``; callers add the path.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "FORMAT_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageProblem",
    "Probe",
    "composite_on_white",
    "decode_image",
    "fit",
    "luma",
    "probe_image",
]

# Extensions of the formats Pillow reads that hold ordinary pictures; anything else in a folder is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
     ".pbm", ".pgm", ".ppm", ".pnm"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Human names of the formats behind IMAGE_EXTENSIONS, for messages.
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP and PNM"
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 swap width and height
# Leading bytes of the formats above, to tell a damaged image from a file that is no image at all.
_MAGIC = (
    (b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"), (b"RIFF", "WebP"), (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"),
    (b"P5", "PNM"), (b"P6", "PNM"),
)
_HEAD = 16
_REASON_CHARS = 100

Source = str | os.PathLike[str] | bytes


class ImageProblem(Exception):
    """One file cannot be used; the message is a short clause saying why (without the path)."""


@dataclass(frozen=True)
class Probe:
    """What a file's header says: its upright size (height, width) and whether it is a grey image."""

    height: int
    width: int
    grey: bool


def _reason(exc: BaseException) -> str:
    """``exc`` as one short line (Pillow messages can span lines or repeat the path)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only), turning every way it can fail into :class:`ImageProblem`."""
    if isinstance(source, bytes):
        if not source:
            raise ImageProblem("empty file")
        handle: BinaryIO = io.BytesIO(source)
    else:
        try:
            handle = open(source, "rb")  # noqa: SIM115 -- closed in the finally clause below
            if os.fstat(handle.fileno()).st_size == 0:
                handle.close()
                raise ImageProblem("empty file")
        except OSError as exc:
            raise ImageProblem(f"cannot read file ({exc.strerror or _reason(exc)})") from exc
    try:
        with _identify(handle) as im:
            yield im
    finally:
        handle.close()


def _unreadable(handle: BinaryIO, reason: str | None) -> str:
    """Why Pillow could not open a file: a damaged image (named by its leading bytes), text, or no image.

    ``reason`` is Pillow's own explanation, or ``None`` when it could not even identify the format.
    """
    handle.seek(0)
    head = handle.read(_HEAD)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"truncated or corrupt {name} image ({reason or 'Pillow cannot read its header'})"
    if reason is not None:
        return f"corrupt image header ({reason})"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not an image"
    return "not an image Pillow can read (unrecognised format)"


def _identify(handle: BinaryIO) -> Image.Image:
    """``Image.open`` on ``handle`` with its failures and oversized images turned into :class:`ImageProblem`."""
    try:
        im = Image.open(handle)
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"decompression bomb refused by Pillow ({_reason(exc)})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageProblem(_unreadable(handle, None)) from exc
    except Exception as exc:  # Pillow's format plugins raise many exception types for damaged headers
        raise ImageProblem(_unreadable(handle, _reason(exc))) from exc
    width, height = im.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        im.close()
        raise ImageProblem(
            f"{width}x{height} = {width * height:,} pixels is over Pillow's limit of {limit:,} (a possible "
            "decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
        )
    if width <= 0 or height <= 0:
        im.close()
        raise ImageProblem(f"image has no pixels ({width}x{height})")
    return im


def _grey_palette(im: Image.Image) -> bool:
    """True when a palette image's colours are all greys (read from the header, without decoding)."""
    palette = im.palette
    if palette is None or not palette.mode.startswith("RGB"):
        return False
    step = len(palette.mode)
    raw = np.frombuffer(bytes(palette.palette), dtype=np.uint8)
    raw = raw[: len(raw) - len(raw) % step].reshape(-1, step)
    return bool(raw.size) and bool(np.all(raw[:, 0] == raw[:, 1]) and np.all(raw[:, 1] == raw[:, 2]))


def probe_image(source: Source) -> Probe:
    """Read only the header of ``source``: its upright size and whether it is grey. Cheap; decodes nothing."""
    with _opened(source) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_ORIENTATION)
        except Exception:  # a damaged EXIF block is ignored here and, if it matters, reported by decode_image
            orientation = None
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        grey = im.mode in _GREY_MODES or (im.mode in ("P", "PA") and _grey_palette(im))
    return Probe(height=height, width=width, grey=grey)


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """``uint8`` pixels whose last axis ends in alpha (LA or RGBA) flattened onto white, alpha axis dropped.

    ``round(c * a / 255 + 255 * (1 - a / 255))`` in integers, so fully opaque pixels keep their exact value.
    """
    wide = pixels.astype(np.uint16)
    colour, alpha = wide[..., :-1], wide[..., -1:]
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Grey from ``uint8`` RGB on the last axis: ITU-R 601-2, the same fixed-point arithmetic as Pillow's ``L``."""
    wide = rgb.astype(np.uint32)
    grey = wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000
    return (grey >> 16).astype(np.uint8)


def fit(picture: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the centre ``size`` x ``size`` (unchanged if already so)."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    if picture.size != (size, size):
        picture = ImageOps.fit(picture, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(picture, dtype=np.uint8)


def _composite_on_white(im: Image.Image, grey: bool) -> Image.Image:
    """Flatten an image with transparency onto white, as mode ``L`` (``grey``) or ``RGB``."""
    flat = composite_on_white(np.asarray(im.convert("LA" if grey else "RGBA")))
    return Image.fromarray(np.ascontiguousarray(flat[..., 0]) if grey else flat)


def _to_8bit(im: Image.Image, grey: bool) -> Image.Image:
    """The image as mode ``L`` (grey) or ``RGB`` with the module's rules for alpha, 16-bit and float data."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return _grey_to(Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)), grey)
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageProblem("float image holds NaN or infinite values")
        return _grey_to(Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)), grey)
    if "A" in mode or "a" in mode or "transparency" in im.info:
        if mode == "1":
            im = im.convert("L")
        source_grey = mode in _GREY_MODES
        flat = _composite_on_white(im, source_grey)
        return flat.convert("L") if grey and not source_grey else _grey_to(flat, grey)
    if mode in ("1", "L"):
        return _grey_to(im.convert("L"), grey)
    return im.convert("L") if grey else im.convert("RGB")


def _grey_to(im: Image.Image, grey: bool) -> Image.Image:
    return im if grey else im.convert("RGB")


def decode_image(source: Source, *, channels: int, image_size: int | None = None) -> np.ndarray:
    """Decode ``source`` into ``uint8`` (H, W) when ``channels`` is 1, or (H, W, 3) when it is 3.

    With ``image_size`` N the result is NxN (shorter side resized to N, centre cropped). Raises
    :class:`ImageProblem` for anything that is not a complete, readable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    with _opened(source) as im:
        try:
            if image_size is not None:
                im.draft(None, (image_size, image_size))
            im.load()
            upright = ImageOps.exif_transpose(im)
            picture = _to_8bit(upright, grey=channels == 1)
            array = fit(picture, image_size) if image_size is not None else np.asarray(picture, dtype=np.uint8)
        except ImageProblem:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageProblem(f"decompression bomb refused by Pillow ({_reason(exc)})") from exc
        except MemoryError as exc:
            raise ImageProblem("image too large to decode in the memory available") from exc
        except Exception as exc:  # truncated data, bad chunks, broken EXIF: each plugin raises its own type
            raise ImageProblem(f"truncated or corrupt image ({_reason(exc)})") from exc
    return array
