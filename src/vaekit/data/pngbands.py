"""Decoding a large PNG a band of rows at a time, so its memory is bounded by the output, not the image.

Pillow decodes a PNG whole: a 9000x9000 RGBA file costs 324 MB even when a 64x64 thumbnail is all that is
wanted. For an 8-bit, non-interlaced PNG (what large photos and scans are) this module inflates the pixel
data (the ``IDAT`` chunks) a piece at a time instead and hands Pillow one band of rows at a time, each wrapped
as a small PNG of its own with the file's palette and transparency chunks. PNG filters refer only to the row
above, so each band is prefixed with the row above it, stored unfiltered, and decodes exactly as it would
within the whole image; Pillow still does the unfiltering, in C.

Chunk CRCs of the pixel data are checked as Pillow checks them, and a stream that ends early is reported as
truncated. Any other PNG (interlaced, 1-, 2-, 4- or 16-bit, animated) is left to Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image

from .pixels import ImageProblem

__all__ = ["PngLayout", "png_bands", "png_layout"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIXEL_BYTES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # bytes per pixel of an 8-bit PNG, by colour type
_COPIED = (b"PLTE", b"tRNS")  # the chunks besides IHDR that change how Pillow reads the pixels
_PIECE = 1 << 16


@dataclass
class PngLayout:
    """Where an 8-bit, non-interlaced PNG keeps its pixels: its IDAT chunks as (data offset, length)."""

    width: int
    height: int
    colour: int
    copied: bytes = b""
    idat: list[tuple[int, int]] = field(default_factory=list)

    @property
    def stride(self) -> int:
        """Bytes per row of the inflated data: the filter byte, then the pixels."""
        return 1 + self.width * _PIXEL_BYTES[self.colour]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_layout(handle: BinaryIO) -> PngLayout | None:
    """The layout of the PNG in ``handle`` by walking its chunk headers, or ``None`` if it is not bandable."""
    handle.seek(0)
    if handle.read(8) != _SIGNATURE:
        return None
    layout: PngLayout | None = None
    while True:
        head = handle.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        start = handle.tell()
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", handle.read(13))
            if depth != 8 or interlace or colour not in _PIXEL_BYTES:
                return None
            layout = PngLayout(width, height, colour)
        elif layout is None or kind == b"acTL":  # IHDR comes first; an animated PNG is left to Pillow's frames
            return None
        elif kind in _COPIED:
            layout.copied += _chunk(kind, handle.read(length))
        elif kind == b"IDAT":
            layout.idat.append((start, length))
        elif kind == b"IEND":
            return layout if layout.idat else None
        handle.seek(start + length + 4)


def _idat_pieces(handle: BinaryIO, layout: PngLayout) -> Iterator[bytes]:
    """The compressed pixel data, a piece at a time, each chunk's CRC checked once it is read."""
    for offset, length in layout.idat:
        handle.seek(offset)
        crc = zlib.crc32(b"IDAT")
        left = length
        while left:
            piece = handle.read(min(left, _PIECE))
            if not piece:
                raise ImageProblem("truncated PNG image (the file ends inside its pixel data)")
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
            yield piece
        if handle.read(4) != struct.pack(">I", crc):
            raise ImageProblem("corrupt PNG image (a pixel data chunk fails its CRC check)")


def _band(layout: PngLayout, above: bytes | None, filtered: bytes) -> tuple[Image.Image, bytes]:
    """One band of rows decoded by Pillow, and its last row's raw bytes (the row above the next band)."""
    rows = len(filtered) // layout.stride + (above is not None)
    body = filtered if above is None else b"\0" + above + filtered
    header = struct.pack(">IIBBBBB", layout.width, rows, 8, layout.colour, 0, 0, 0)
    png = _SIGNATURE + _chunk(b"IHDR", header) + layout.copied + _chunk(b"IDAT", zlib.compress(body, 0)) + \
        _chunk(b"IEND", b"")
    band = Image.open(io.BytesIO(png))
    band.load()
    last = band.crop((0, rows - 1, layout.width, rows)).tobytes()
    if above is not None:
        band = band.crop((0, 1, layout.width, rows))
    return band, last


def _inflated(pieces: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The pixel data inflated, at most ``limit`` bytes at a time, so a stream that expands hugely stays bounded."""
    inflate = zlib.decompressobj()
    for piece in pieces:
        while piece:
            yield inflate.decompress(piece, limit)
            piece = inflate.unconsumed_tail
    yield inflate.flush()


def png_bands(handle: BinaryIO, layout: PngLayout, rows: int) -> Iterator[Image.Image]:
    """The image in bands of ``rows`` rows (the last one shorter), as Pillow images in the file's own mode.

    Decoding stops at the last row, as Pillow's does: data after it is neither inflated nor checked.
    """
    pending = bytearray()
    above: bytes | None = None
    done = 0
    for data in _inflated(_idat_pieces(handle, layout), rows * layout.stride):
        pending += data
        while len(pending) >= min(rows, layout.height - done) * layout.stride:
            size = min(rows, layout.height - done) * layout.stride
            band, above = _band(layout, above, bytes(pending[:size]))
            del pending[:size]
            done += band.height
            yield band
            if done == layout.height:
                return
    rows_found = done + len(pending) // layout.stride
    raise ImageProblem(f"truncated PNG image (its pixel data ends after {rows_found:,} of {layout.height:,} rows)")
