"""Decoding one image file into a ``uint8`` array, the way a person looking at the picture expects it.

Rules (the same for every file, so a folder of mixed formats becomes one consistent array):

* The first frame of animated or multi-page files (GIF, TIFF, WebP) is used.
* EXIF orientation is applied, so a phone photo stored sideways comes out upright. (Pillow applies a TIFF's
  Orientation tag itself while reading, and reports the upright size; it is not applied twice.)
* Pixel values become 8 bits by the rules of :mod:`vaekit.data.pixels`: transparency composited on white,
  16-bit grey scaled, 32-bit integer grey kept as 0-255, float grey read as 0-1, L*a*b* converted to sRGB;
  any other range is refused with one line instead of being clipped or guessed.
* Colour is converted to grey with Pillow's ITU-R 601-2 luma transform; grey to colour by repeating it.
* ``image_size`` N resizes the shorter side to N and crops the centre NxN (``ImageOps.fit``, bicubic). An image
  already NxN is left untouched, so its pixels are exactly those in the file. JPEGs much larger than N are
  decoded at a reduced scale first (``Image.draft``), as ``Image.thumbnail`` does, which is several times faster.
* Memory is bounded by the output: an image is converted to 8 bits in horizontal bands of about half a
  million pixels, and with ``image_size`` N each band is box-averaged (``Image.reduce``) down to no less than
  2N before the final bicubic fit, as ``Image.thumbnail``'s ``reducing_gap`` does. A large 8-bit PNG is also
  inflated band by band (:mod:`vaekit.data.pngbands`), so a 9000x9000 RGBA PNG wanted at 64x64 costs about
  30 MB instead of its 324 MB of pixels; other formats are decoded whole by Pillow first (their pixels plus
  the output).
* Reading the header (:func:`probe_image`) decodes no pixels: a PNG's EXIF block is found by walking its
  chunks, where Pillow's ``getexif`` would decode the whole image to look for one after the pixel data.
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
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .pixels import GREY_MODES, ImageProblem, Rule, composite_on_white, luma, pixel_rule, to_8bit
from .pngbands import png_bands, png_layout

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
# Human names of the formats behind IMAGE_EXTENSIONS, for messages.
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP and PNM"
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 swap width and height
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BAND_PIXELS = 1 << 19  # pixels converted at a time
# Leading bytes of the formats above, to tell a damaged image from a file that is no image at all.
_MAGIC = (
    (b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"), (b"RIFF", "WebP"), (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"),
    (b"P5", "PNM"), (b"P6", "PNM"),
)
_HEAD = 16
_REASON_CHARS = 100

Source = str | os.PathLike[str] | bytes


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


def _png_exif(im: Image.Image) -> bytes | None:
    """A PNG's ``eXIf`` chunk, found by walking the chunk headers (seeks only; no pixel is decoded)."""
    handle = im.fp
    if handle is None:
        return None
    where = handle.tell()
    try:
        handle.seek(8)
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                data = handle.read(length)
                return data if data.startswith(b"Exif\0\0") else b"Exif\0\0" + data
            if kind == b"IEND":
                return None
            handle.seek(length + 4, os.SEEK_CUR)
    finally:
        handle.seek(where)


def _header_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation still to apply to an opened (not loaded) image, read without decoding pixels."""
    if im.format == "PNG" and "exif" not in im.info:
        exif = _png_exif(im)
        if exif is None:
            return None
        im.info["exif"] = exif  # so Pillow's getexif reads it instead of decoding the image to look for it
    if im.format == "TIFF" and getattr(im, "_tile_size", im.size) != im.size:
        return None  # Pillow applies the Orientation tag while reading a TIFF, and already reports its upright size
    orientation = im.getexif().get(_ORIENTATION)
    return orientation if isinstance(orientation, int) else None


def probe_image(source: Source) -> Probe:
    """Read only the header of ``source``: its upright size and whether it is grey. Cheap; decodes nothing."""
    with _opened(source) as im:
        width, height = im.size
        try:
            orientation = _header_orientation(im)
        except Exception:  # a damaged EXIF block is ignored here and, if it matters, reported by decode_image
            orientation = None
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        grey = im.mode in GREY_MODES or (im.mode in ("P", "PA") and _grey_palette(im))
    return Probe(height=height, width=width, grey=grey)


def _reduce_factor(size: tuple[int, int], image_size: int | None) -> int:
    """The box-averaging factor that keeps the shorter side at least twice ``image_size`` (1: none).

    A band holds a whole number of boxes, so the factor is also capped to keep one row of boxes within
    ``_BAND_PIXELS``; the bicubic fit that follows does the rest of the reduction.
    """
    if image_size is None:
        return 1
    return max(1, min(min(size) // (2 * image_size), _BAND_PIXELS // size[0]))


def _band_rows(width: int, factor: int) -> int:
    """Rows per band: about ``_BAND_PIXELS`` pixels, a multiple of ``factor`` so reduced boxes stay aligned."""
    return max(1, _BAND_PIXELS // (width * factor)) * factor


def _crops(im: Image.Image, rows: int) -> Iterator[Image.Image]:
    """A loaded image in horizontal bands of ``rows`` rows (the image itself when it is one band)."""
    width, height = im.size
    if rows >= height:
        yield im
        return
    for top in range(0, height, rows):
        yield im.crop((0, top, width, min(height, top + rows)))


def _eight_bit(bands: Iterator[Image.Image], rule: Rule, grey: bool, factor: int, height: int) -> np.ndarray:
    """Bands of an image as one ``uint8`` (H, W) or (H, W, 3) array, each converted and box-averaged by ``factor``.

    Only one band's intermediate copies exist at a time, so the memory beyond the source pixels is the output
    plus one band's worth of temporaries, whatever the image's size.
    """
    out: np.ndarray | None = None
    row = 0
    for band in bands:
        picture = to_8bit(band, rule, grey)
        if factor > 1:
            picture = picture.reduce(factor)
        part = np.asarray(picture, dtype=np.uint8)
        if out is None:
            out = np.empty((-(-height // factor), *part.shape[1:]), dtype=np.uint8)
        out[row : row + len(part)] = part
        row += len(part)
    if out is None or row != len(out):
        raise ImageProblem(f"truncated image (its pixel data gives {row * factor:,} of {height:,} rows)")
    return out


def _refuse_wide_colour_key(im: Image.Image) -> None:
    """Refuse a 16-bit colour PNG with a transparent colour: Pillow reads its pixels at 8 bits, where the 16-bit
    colour that marks transparency can no longer be told apart from its neighbours (grey is read at 16 bits)."""
    if im.format == "PNG" and isinstance(im.info.get("transparency"), tuple) and \
            any(str(tile[3]).endswith(";16B") for tile in im.tile):
        raise ImageProblem("16-bit colour PNG with a transparent colour, which Pillow reads at 8 bits where that "
                           "colour cannot be matched exactly; save it with an alpha channel or at 8 bits")


def _decode_pixels(im: Image.Image, grey: bool, image_size: int | None) -> tuple[np.ndarray, object]:
    """(8-bit pixels before orientation, the EXIF orientation) of an opened image, in bands.

    A large 8-bit PNG is inflated band by band (:mod:`vaekit.data.pngbands`), so only the output is ever held
    whole; any other image is loaded by Pillow (JPEGs at a reduced scale) and converted band by band.
    """
    _refuse_wide_colour_key(im)
    width, height = im.size
    factor = _reduce_factor(im.size, image_size)
    layout = png_layout(im.fp) if im.format == "PNG" and im.fp is not None and width * height > _BAND_PIXELS else None
    if layout is not None and (layout.width, layout.height) == im.size:
        orientation = _header_orientation(im)
        bands = png_bands(im.fp, layout, _band_rows(width, factor))
        return _eight_bit(bands, pixel_rule(im), grey, factor, height), orientation
    if image_size is not None:
        im.draft(None, (image_size, image_size))
    im.load()
    # After loading, so a TIFF whose Orientation Pillow has applied no longer reports one.
    orientation = im.getexif().get(_ORIENTATION)
    width, height = im.size
    factor = _reduce_factor(im.size, image_size)
    pixels = _eight_bit(_crops(im, _band_rows(width, factor)), pixel_rule(im), grey, factor, height)
    return pixels, orientation


def _upright(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """``pixels`` turned as the EXIF orientation says (the same table as ``ImageOps.exif_transpose``)."""
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return pixels
    return np.asarray(Image.fromarray(pixels).transpose(method), dtype=np.uint8)


def fit(picture: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the centre ``size`` x ``size`` (unchanged if already so)."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    if picture.size != (size, size):
        picture = ImageOps.fit(picture, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(picture, dtype=np.uint8)


def decode_image(source: Source, *, channels: int, image_size: int | None = None) -> np.ndarray:
    """Decode ``source`` into ``uint8`` (H, W) when ``channels`` is 1, or (H, W, 3) when it is 3.

    With ``image_size`` N the result is NxN (shorter side resized to N, centre cropped). Raises
    :class:`ImageProblem` for anything that is not a complete, readable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    with _opened(source) as im:
        try:
            pixels, orientation = _decode_pixels(im, channels == 1, image_size)
        except ImageProblem:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageProblem(f"decompression bomb refused by Pillow ({_reason(exc)})") from exc
        except MemoryError as exc:
            raise ImageProblem("image too large to decode in the memory available") from exc
        except Exception as exc:  # truncated data, bad chunks, broken EXIF: each plugin raises its own type
            raise ImageProblem(f"truncated or corrupt image ({_reason(exc)})") from exc
    pixels = _upright(pixels, orientation)
    return fit(pixels, image_size) if image_size is not None else pixels
