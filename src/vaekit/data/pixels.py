"""Turning decoded pixels of any Pillow mode into 8-bit grey or RGB, by rules that never guess a value.

The rules, one per kind of pixel a file can hold:

* Transparent pixels (an alpha channel, or a transparent colour at any bit depth) are composited on white,
  the background an image viewer shows.
* 16-bit grey (PNG, TIFF, 16-bit PNM; Pillow modes ``I;16*``, or ``I`` read from a 16-bit file) is scaled by
  ``round(v * 255 / 65535)``, so the whole range survives; its transparent level is matched at 16 bits.
  Negative values (signed 16-bit TIFF) are refused.
* 32-bit integer grey (TIFF) is taken as grey levels 0-255 and kept exactly; any other range is refused,
  because it has no single meaning (0-65535? 0-4294967295? a map of labels?).
* Float grey (TIFF, mode ``F``) must lie in [0, 1] and is scaled by 255, the rule for float arrays too; other
  ranges (such as 0-255 floats) are refused instead of being clipped.
* CIE L*a*b* (TIFF) is converted to sRGB with LittleCMS (``ImageCms``), whatever Pillow's own conversion does.
* Other colour modes (palettes, CMYK, YCbCr, HSV) use Pillow's conversion; colour to grey is ITU-R 601-2 luma.

A :class:`Rule` is settled once per file from the whole image (``getextrema`` reads the range without a
copy), then :func:`to_8bit` converts the image band by band, so a large image never needs several
full-size intermediate copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["GREY_MODES", "ImageProblem", "Rule", "composite_on_white", "luma", "pixel_rule", "to_8bit"]

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_BITS_PER_SAMPLE = 258  # TIFF tag


class ImageProblem(Exception):
    """One file cannot be used; the message is a short clause saying why (without the path)."""


@dataclass(frozen=True)
class Rule:
    """How one file's pixels become 8 bits: ``kind`` is plain, sixteen, int32, float or lab.

    ``transparent`` is the grey level a 16- or 32-bit grey image marks as transparent (PNG ``tRNS``), if any.
    """

    kind: str
    transparent: int | None = None


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


def _integer_bits(im: Image.Image) -> int:
    """16 or 32: the depth of the file behind a Pillow integer image (mode ``I`` holds either)."""
    if im.mode in _SIXTEEN_MODES or im.format != "TIFF":
        return 16
    bits = getattr(im, "tag_v2", {}).get(_BITS_PER_SAMPLE, 32)
    return int(bits[0] if isinstance(bits, tuple) else bits)


def _transparent_level(im: Image.Image) -> int | None:
    level = im.info.get("transparency")
    return level if isinstance(level, int) and not isinstance(level, bool) else None


def pixel_rule(im: Image.Image) -> Rule:
    """The :class:`Rule` for a loaded image, refusing ranges the rules give no meaning (see the module docstring)."""
    mode = im.mode
    if mode == "LAB":
        return Rule("lab")
    if mode == "F":
        low, high = im.getextrema()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ImageProblem("float image holds NaN or infinite values")
        if low < 0 or high > 1:
            raise ImageProblem(f"float pixels range from {low:g} to {high:g}, but vaekit reads float images as 0-1 "
                               "(as it does float arrays); divide 0-255 data by 255, or save the image as 8-bit")
        return Rule("float")
    if mode in _SIXTEEN_MODES or mode == "I":
        low, high = im.getextrema()
        if _integer_bits(im) <= 16:
            if low < 0:
                raise ImageProblem(f"signed 16-bit pixels go down to {low}; vaekit reads 16-bit grey as 0-65535, "
                                   "save the image unsigned or as 8-bit")
            return Rule("sixteen", _transparent_level(im))
        if low < 0 or high > 255:
            raise ImageProblem(f"32-bit integer pixels range from {low} to {high}, but vaekit reads 32-bit integer "
                               "images only as grey levels 0-255; save the image as 8- or 16-bit")
        return Rule("int32", _transparent_level(im))
    return Rule("plain")


def _wide_grey(band: Image.Image, rule: Rule) -> Image.Image:
    """An integer or float grey band as mode ``L``, with its transparent level (if any) on white."""
    values = np.asarray(band)
    if rule.kind == "float":
        if not np.isfinite(values).all():
            raise ImageProblem("float image holds NaN or infinite values")
        grey = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    elif rule.kind == "sixteen":
        grey = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    else:
        grey = values.astype(np.uint8)
    if rule.transparent is not None:
        grey[values == rule.transparent] = 255
    return Image.fromarray(grey)


def _lab_to_rgb(band: Image.Image) -> Image.Image:
    """CIE L*a*b* to sRGB with LittleCMS; a new transform per call, since a shared one is not thread-safe."""
    try:
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
    except (ImportError, OSError) as exc:
        raise ImageProblem("CIE L*a*b* image, and this Pillow lacks LittleCMS to convert it; save it as RGB") from exc
    return ImageCms.applyTransform(band, transform)


def _alpha_on_white(band: Image.Image, grey: bool) -> Image.Image:
    """A band with an alpha channel or a transparent colour, flattened onto white as ``L`` or ``RGB``."""
    source_grey = band.mode in GREY_MODES
    if band.mode == "1":
        band = band.convert("L")
    flat = composite_on_white(np.asarray(band.convert("LA" if source_grey else "RGBA")))
    picture = Image.fromarray(np.ascontiguousarray(flat[..., 0]) if source_grey else flat)
    if grey and not source_grey:
        return picture.convert("L")
    return picture if grey else picture.convert("RGB")


def to_8bit(band: Image.Image, rule: Rule, grey: bool) -> Image.Image:
    """``band`` (a whole image or a horizontal band of one) as mode ``L`` (``grey``) or ``RGB`` under ``rule``."""
    mode = band.mode
    if rule.kind in ("sixteen", "int32", "float"):
        picture = _wide_grey(band, rule)
        return picture if grey else picture.convert("RGB")
    if rule.kind == "lab":
        rgb = _lab_to_rgb(band)
        return rgb.convert("L") if grey else rgb
    if "A" in mode or "a" in mode or "transparency" in band.info:
        return _alpha_on_white(band, grey)
    if mode in ("1", "L"):
        picture = band.convert("L")
        return picture if grey else picture.convert("RGB")
    return band.convert("L") if grey else band.convert("RGB")
