"""``vaekit score``: how unlikely each image is under a trained run, worst first, and the AUROC by class."""

from __future__ import annotations

import argparse
import sys

from vaekit.cli.common import DATA_DIR_HELP, positive_int
from vaekit.config import RUN_SPLITS
from vaekit.text import printable


def cmd_score(args: argparse.Namespace) -> int:
    from vaekit.config import ConfigError
    from vaekit.devices import resolve_device
    from vaekit.run import load_run
    from vaekit.use.anomaly import auroc, parse_normal
    from vaekit.use.inputs import open_inputs
    from vaekit.use.score import class_names_of, score_inputs
    from vaekit.use.score_report import check_outputs, output_paths, summary_lines, write_outputs

    if (args.images is None) == (args.split is None):
        raise ConfigError("give the images to score (a folder, an image file, a .npy/.npz file) or --split, "
                          "not both and not neither")
    paths = output_paths(args.out)
    check_outputs(paths, args.force)
    run = load_run(args.run, resolve_device(args.device))
    inputs = open_inputs(run, args.images, split=args.split, data_dir=args.data_dir)
    names = class_names_of(run, inputs)
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
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("images", nargs="?", help="a folder of images (class subfolders give labels), an image file, or a "
                                             ".npy/.npz file")
    p.add_argument("--split", choices=RUN_SPLITS, help="score the run's own training or test images instead")
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="the scores; FILE_auroc.json (with --normal) and FILE_extremes.png go beside it")
    p.add_argument("--nll", type=positive_int, default=None, metavar="K",
                   help="score by the importance-sampled NLL with K draws per image (as vaekit evaluate --nll) "
                        "instead of the one-draw negative ELBO: less noise, K times the work")
    p.add_argument("--normal", metavar="CLASSES",
                   help="comma-separated class ids or names that are normal; prints and saves the AUROC of the score "
                        "for telling the images of every other class apart")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="auto", help="auto (default: a GPU when there is one), cpu, cuda, cuda:N or mps")
    p.add_argument("--data-dir", help=DATA_DIR_HELP + " (with --split)")
    p.add_argument("--no-figure", action="store_true", help="do not draw FILE_extremes.png")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_score)
