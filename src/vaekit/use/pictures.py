"""Images out of a model as files: PNG bytes, a grid of images, and a folder of numbered PNGs, never overwriting.

What the commands write for a user (samples, the score figure's source images) goes through here, so every
one of them refuses to replace an existing file without ``--force`` and writes each file atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from vaekit import run as runs
from vaekit.errors import VaekitError


class OutputError(VaekitError):
    """An output path that would overwrite the user's files, or that cannot be a folder or an image."""


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] as 8-bit pixels (rounded, so an 8-bit head's levels come back exactly)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """One uint8 image (H, W) grey or (H, W, 3) colour as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def grid(pixels: np.ndarray, cols: int | None = None, gap: int = 1) -> np.ndarray:
    """uint8 images (N, H, W[, 3]) tiled ``cols`` to a row (default: a near square), ``gap`` white pixels apart."""
    n, h, w = pixels.shape[:3]
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, -(-n // cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *pixels.shape[3:]), 255, dtype=np.uint8)
    for i, im in enumerate(pixels):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = im
    return out


def is_image_path(out: str | os.PathLike) -> bool:
    """Whether ``--out`` names one image file (a grid) rather than a folder of images."""
    return Path(out).suffix.lower() == ".png"


def numbered_names(prefix: str, n: int) -> list[str]:
    """``prefix_00000.png`` ...: names that sort in order, with at least five digits."""
    width = max(5, len(str(n - 1)))
    return [f"{prefix}_{i:0{width}d}.png" for i in range(n)]


def check_output(out: Path, names: list[str], force: bool) -> None:
    """Refuse, before any work, an ``--out`` that would overwrite a file (without ``force``) or cannot be written."""
    if is_image_path(out):
        if out.is_dir():
            raise OutputError(f"--out {out} is a folder; name a new .png file, or a folder without the .png ending")
        if out.exists() and not force:
            raise OutputError(f"--out {out} exists; pass --force to replace it, or choose another name")
        if not out.parent.is_dir():
            raise OutputError(f"the folder of --out {out} does not exist; create it first")
        return
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; name a folder, or a .png file for one grid image")
    taken = [name for name in names if (out / name).exists()]
    if taken and not force:
        raise OutputError(f"{out / taken[0]} exists ({len(taken)} of the files to write do); pass --force to replace "
                          "them, or choose another --out")


def write_images(out: Path, pixels: np.ndarray, names: list[str], cols: int | None = None) -> list[Path]:
    """``pixels`` as one grid PNG (``out`` ends in .png) or one PNG per image named ``names`` in folder ``out``."""
    if is_image_path(out):
        runs.write_bytes(out, png_bytes(grid(pixels, cols)))
        return [out]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {out}: {e.strerror or e}; choose another --out") from e
    paths = [out / name for name in names]
    for path, im in zip(paths, pixels, strict=True):
        runs.write_bytes(path, png_bytes(im))
    return paths
