"""``vaekit sample``: new images from a trained run, drawn from the prior or from the two-stage mixture."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from vaekit.cli.common import add_force_option, nonnegative_float, positive_int, seed_int
from vaekit.cli.use import load_run_arg
from vaekit.config import DEFAULT_COMPONENTS, SAMPLE_MODES, SAMPLERS
from vaekit.text import printable


def sample_names(n: int) -> list[str]:
    """``sample_00000.png`` ...: names that sort in order, with at least five digits."""
    width = max(5, len(str(n - 1)))
    return [f"sample_{i:0{width}d}.png" for i in range(n)]


def cmd_sample(args: argparse.Namespace) -> int:
    """Options and output checked before the run is loaded or anything drawn: a mistake costs nothing."""
    import numpy as np

    from vaekit.artifacts.figures import tile_images
    from vaekit.config import ConfigError
    from vaekit.use.outputs import PngWriter, check_output, staged_folder, write_png
    from vaekit.use.sample import new_seed, sample

    out, grid = Path(args.out), Path(args.out).suffix.lower() == ".png"
    check_output(out, args.force, folder=not grid, files=", or a .png file for one grid",
                 run=args.run)
    if grid and not out.parent.is_dir():
        raise ConfigError(f"the folder of --out {out} does not exist; create it first")
    run = load_run_arg(args)
    seed = new_seed() if args.seed is None else args.seed
    options = {"sampler": args.sampler, "temperature": args.temperature, "seed": seed, "mode": args.mode,
               "components": args.components}
    pixels = sample(run, args.n, **options, refit=args.refit, progress=True)
    if grid:
        write_png(out, tile_images(pixels.astype(np.float32) / 255, math.ceil(math.sqrt(args.n))))
    else:
        with staged_folder(out) as folder, PngWriter() as writer:
            for name, image in zip(sample_names(args.n), pixels, strict=True):
                writer.write(folder / name, image)
    what = f"a grid of {args.n} images to {out}" if grid else f"{args.n} images to {out}"
    shown = "decoder means" if args.mode == "mean" else "pixels drawn from p(x|z)"
    print(printable(f"wrote {what} ({args.sampler} sampler, temperature {args.temperature:g}, {shown}, seed {seed})"),
          file=sys.stderr)
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="new images from a trained run",
                       description="Draw new images from a run: latents from the prior N(0, I) or from a Gaussian "
                                   "mixture fitted to the training set's codes (--sampler gmm, fitted once and "
                                   "stored in the run folder), decoded to PNG files or one grid image.")
    p.add_argument("run", metavar="RUN", help="run folder written by vaekit train")
    p.add_argument("-n", type=positive_int, default=64, metavar="N", help="number of images (default 64)")
    p.add_argument("--out", required=True, metavar="DIR|FILE.png",
                   help="a folder for one PNG per image (sample_00000.png, ...), or a .png file for one grid")
    p.add_argument("--sampler", choices=SAMPLERS, default="prior",
                   help="prior: z ~ N(0, I); gmm: z from the mixture fitted to the training set's posterior means "
                        "(looks more like the data when the codes do not fill the prior)")
    p.add_argument("--temperature", type=nonnegative_float, default=1.0, metavar="T",
                   help="scales the standard deviation of the prior or of every mixture component (default 1; "
                        "below 1: more typical, less varied images)")
    p.add_argument("--seed", type=seed_int, default=None, help="the same seed draws the same images (default: new "
                                                               "draws each time; the seed used is printed)")
    p.add_argument("--mode", choices=SAMPLE_MODES, default="mean",
                   help="mean: the decoder's mean image (default); sample: every pixel drawn from p(x|z) (8-bit "
                        "likelihood heads only)")
    p.add_argument("--components", type=positive_int, default=DEFAULT_COMPONENTS, metavar="K",
                   help=f"mixture components for --sampler gmm (default {DEFAULT_COMPONENTS})")
    p.add_argument("--refit", action="store_true", help="fit the mixture again even if one is stored for these weights")
    p.add_argument("--device", default="auto", help="auto (default: a GPU when there is one), cpu, cuda, cuda:N or mps")
    add_force_option(p)
    p.set_defaults(func=cmd_sample)
