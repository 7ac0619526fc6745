"""``vaekit score``: how unlikely each image is under a trained run, worst first, and the AUROC by class."""

from __future__ import annotations

import argparse
import sys

from vaekit.cli.common import add_force_option, add_images_options, add_run_options, positive_int
from vaekit.cli.use import check_images, load_run_arg, open_images
from vaekit.text import printable


def cmd_score(args: argparse.Namespace) -> int:
    from vaekit.use.anomaly import auroc, parse_normal
    from vaekit.use.score import class_names_of, score_inputs
    from vaekit.use.score_report import check_outputs, output_paths, summary_lines, write_outputs

    check_images(args)
    paths = output_paths(args.out)
    check_outputs(paths, args.force, args.run)
    run = load_run_arg(args)
    inputs = open_images(args, run)
    names = class_names_of(inputs)
    normal = parse_normal(args.normal, inputs.labels, names) if args.normal is not None else None
    table = score_inputs(run, inputs, nll=args.nll, batch_size=args.batch_size, progress=True)
    result = auroc(table.score, table.labels, normal, names) if normal is not None else None
    written = write_outputs(table, paths, result, figure=not args.no_figure)
    for line in summary_lines(table, result):
        print(printable(line))
    print(printable("wrote " + ", ".join(str(p) for p in written)), file=sys.stderr)
    return 0


def add_score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="per-image likelihood scores of images under a run, worst first",
                       description="Score images by how unlikely the run's model finds them: the negative ELBO "
                                   "(or with --nll K the importance-sampled negative log-likelihood) in nats and "
                                   "bits/dim, written as CSV with the least likely first, and a figure of the "
                                   "highest- and lowest-scored images. With labels and --normal, the AUROC of the "
                                   "score for telling the other classes apart (anomaly detection).")
    add_run_options(p)
    add_images_options(p)
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="the scores; FILE_auroc.json (with --normal) and FILE_extremes.png go beside it")
    p.add_argument("--nll", type=positive_int, default=None, metavar="K",
                   help="score by the importance-sampled NLL with K draws per image (as vaekit evaluate --nll) "
                        "instead of the one-draw negative ELBO: less noise, K times the work")
    p.add_argument("--normal", metavar="CLASSES",
                   help="comma-separated class ids or names that are normal; prints and saves the AUROC of the score "
                        "for telling the images of every other class apart")
    p.add_argument("--no-figure", action="store_true", help="do not draw FILE_extremes.png")
    add_force_option(p)
    p.set_defaults(func=cmd_score)
