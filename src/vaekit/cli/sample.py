"""``vaekit sample``: new images from a trained run, drawn from the prior or from the two-stage mixture."""

from __future__ import annotations

import argparse
import sys

from vaekit.cli.common import nonnegative_float, positive_int, seed_int
from vaekit.config import DEFAULT_COMPONENTS, SAMPLE_MODES, SAMPLERS
from vaekit.text import printable


def cmd_sample(args: argparse.Namespace) -> int:
    from vaekit.devices import resolve_device
    from vaekit.run import load_run
    from vaekit.use.sample import new_seed, sample_to

    run = load_run(args.run, resolve_device(args.device))
    seed = new_seed() if args.seed is None else args.seed
    paths = sample_to(run, args.n, args.out, force=args.force, sampler=args.sampler, temperature=args.temperature,
                      seed=seed, mode=args.mode, components=args.components, refit=args.refit, progress=True)
    what = f"{args.n} images" if len(paths) > 1 or args.n == 1 else f"a grid of {args.n} images"
    where = paths[0] if len(paths) == 1 else paths[0].parent
    print(printable(f"wrote {what} to {where} ({args.sampler} sampler, temperature {args.temperature:g}, "
                    f"{'decoder means' if args.mode == 'mean' else 'pixels drawn from p(x|z)'}, seed {seed})"),
          file=sys.stderr)
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="new images from a trained run",
                       description="Draw new images from a run: latents from the prior N(0, I) or from a Gaussian "
                                   "mixture fitted to the training set's codes (--sampler gmm, fitted once and "
                                   "stored in the run folder), decoded to PNG files or one grid image.")
    p.add_argument("run", help="run folder written by vaekit train")
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
    p.add_argument("--force", action="store_true", help="replace existing files of the same names")
    p.set_defaults(func=cmd_sample)
