"""``vaekit encode``, ``vaekit reconstruct`` and ``vaekit interpolate``: a trained run applied to images.

Each reads the images as the run's data were prepared (:mod:`vaekit.use.inputs`), a batch at a time with a
progress bar on a terminal, refuses to replace an existing ``--out`` without ``--force`` before doing any work,
and writes its files atomically (:mod:`vaekit.use.outputs`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from vaekit.cli.common import add_force_option, add_images_options, add_run_options, steps_int
from vaekit.config import ENCODING_FORMATS, ConfigError
from vaekit.text import printable

GRID_PAIRS = 64  # reconstruct's grid.png shows the first this many images, 8 pairs to a row
GRID_COLUMNS = 8
_NUMBER = r"\s*(?:[-+.\deE]+|[-+]?(?i:nan|inf|infinity))\s*"  # nan and inf are read, then refused by name
_NUMBERS = re.compile(rf"{_NUMBER}(?:,{_NUMBER})*,?\s*")


def load_run_arg(args: argparse.Namespace) -> Any:
    """The run of RUN, on --device; a warning when a training still writes it (its weights are those of the latest
    epoch, and will change)."""
    from vaekit.data.resolve import warn
    from vaekit.devices import resolve_device
    from vaekit.run import load_run, writer_of

    run = load_run(args.run, resolve_device(args.device))
    writer = writer_of(run.path)
    if writer is not None:
        warn(f"{run.path} is still being written by process {writer} (a training or an evaluation): using the "
             "weights it holds now, which may change; run again once it has finished for its final ones")
    return run


def check_images(args: argparse.Namespace) -> None:
    """IMAGES or --split, exactly one, checked before the run is loaded."""
    if (args.images is None) == (args.split is None):
        raise ConfigError("give IMAGES (a folder, an image file or a .npy/.npz file) or --split train|test, and "
                          "not both")
    if args.data_dir is not None and args.split is None:
        raise ConfigError("--data-dir says where the run's own data is; it goes with --split")


def open_images(args: argparse.Namespace, run: Any) -> Any:
    from vaekit.use.inputs import open_inputs

    # the decoding bar only on a terminal, as every other bar of these commands (a log gets the result alone)
    return open_inputs(run, args.images, split=args.split, skip_bad=args.skip_bad, data_dir=args.data_dir,
                       progress=sys.stderr.isatty())


def cmd_encode(args: argparse.Namespace) -> int:
    from vaekit.use.latent import encode_inputs
    from vaekit.use.outputs import check_output, encoding_format, write_encoding

    out = Path(args.out)
    check_images(args)
    encoding_format(out)
    check_output(out, args.force, run=args.run)
    run = load_run_arg(args)
    enc = encode_inputs(run.model, open_images(args, run), batch_size=args.batch_size, logvar=args.logvar,
                        progress=True)
    write_encoding(out, enc)
    what = "means and log-variances" if args.logvar else "means"
    print(printable(f"wrote {out}: posterior {what} of {len(enc.names):,} images, {enc.mu.shape[1]} dimensions"))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from vaekit.artifacts.figures import tile_images
    from vaekit.use.latent import reconstructed_batches
    from vaekit.use.outputs import PngWriter, check_output, image_stem, staged_folder, to_uint8

    out = Path(args.out)
    check_images(args)
    check_output(out, args.force, folder=True, run=args.run)
    run = load_run_arg(args)
    inputs = open_images(args, run)
    digits, index, shown = max(5, len(str(inputs.n - 1))), 0, []
    with staged_folder(out) as folder, PngWriter() as writer:
        for batch, rec in reconstructed_batches(run.model, inputs, batch_size=args.batch_size, progress=True):
            for original, reconstruction, name in zip(batch.pixels, to_uint8(rec), batch.names, strict=True):
                pair = np.concatenate([original, reconstruction], axis=1)  # the original on the left
                writer.write(folder / f"{image_stem(index, name, digits)}.png", pair)
                if len(shown) < GRID_PAIRS:
                    shown.append(pair)
                index += 1
        grid = tile_images(np.stack(shown).astype(np.float32) / 255, min(GRID_COLUMNS, len(shown)))
        writer.write(folder / "grid.png", grid)
    print(printable(f"wrote {index:,} originals beside their reconstructions to {out}, and the first {len(shown)} "
                    f"in {out / 'grid.png'}"))
    return 0


def endpoint(text: str) -> Any:
    """A command-line endpoint: comma-separated numbers are a latent vector; anything else names an image."""
    import numpy as np

    if not Path(text).exists() and _NUMBERS.fullmatch(text):
        try:  # float64: the range check of the latent is made before float32 could overflow to inf
            return np.array([float(v) for v in text.strip().rstrip(",").split(",")], dtype=np.float64)
        except ValueError:
            raise ConfigError(f"{text[:40]!r} is neither an image file nor comma-separated numbers") from None
    return text


def cmd_interpolate(args: argparse.Namespace) -> int:
    from vaekit.artifacts.figures import tile_images
    from vaekit.use.latent import interpolate
    from vaekit.use.outputs import check_output, make_folder, write_png

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: interpolate writes one PNG image; end the name with .png")
    check_output(out, args.force, run=args.run)
    run = load_run_arg(args)
    images = interpolate(run, endpoint(args.a), endpoint(args.b), args.steps, spherical=args.spherical,
                         batch_size=args.batch_size)
    make_folder(out.parent)
    write_png(out, tile_images(images, len(images)))
    kind = "spherical" if args.spherical else "linear"
    print(printable(f"wrote {out}: {len(images)} images along the {kind} path from A to B"))
    return 0


def add_use_parsers(sub: argparse._SubParsersAction) -> None:
    """The three commands, registered on the main parser's subcommands."""
    formats = ", ".join(f".{f}" for f in ENCODING_FORMATS)
    p = sub.add_parser("encode", help="posterior means of images as a table",
                       description="Posterior means (and log-variances) of images, one row per image with its file "
                                   "path and label. A hierarchical model's are those of its top latent group.")
    add_run_options(p)
    add_images_options(p)
    p.add_argument("--out", required=True, metavar="FILE", help=f"the table to write: {formats} (parquet needs "
                                                                 "pyarrow)")
    p.add_argument("--logvar", action="store_true", help="also write the posterior log-variances")
    add_force_option(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("reconstruct", help="images beside their reconstructions",
                       description="Each image beside the decoder's mean at its posterior mean, as PNG files, and the "
                                   f"first {GRID_PAIRS} in grid.png.")
    add_run_options(p)
    add_images_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the PNG files into")
    add_force_option(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("interpolate", help="decoded images between two images or latents",
                       description="Images decoded along a path between A and B: each an image file (its posterior "
                                   "mean) or a latent vector given as comma-separated numbers. A vector that starts "
                                   "with a minus sign goes after '--', the options before it: vaekit interpolate "
                                   "RUN --out z.png -- -1,0 1,0")
    add_run_options(p)
    p.add_argument("a", metavar="A", help="an image file, or a latent vector such as 0.5,-1.2")
    p.add_argument("b", metavar="B", help="an image file, or a latent vector")
    p.add_argument("--steps", type=steps_int, default=10, help="images from A to B, both included (default 10)")
    p.add_argument("--spherical", action="store_true",
                   help="turn on the sphere (slerp) with the norm going linearly, instead of a straight line")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the strip of images to write")
    add_force_option(p)
    p.set_defaults(func=cmd_interpolate)
