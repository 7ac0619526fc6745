"""``vaekit report``: write a run's HTML report and its model card through the artifacts stage."""

from __future__ import annotations

import argparse
from typing import Any

from vaekit.artifacts import CARD, REPORT
from vaekit.text import printable


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``report`` subcommand."""
    p = sub.add_parser("report", help="write a run's HTML report and model card",
                       description="Write RUN/report.html: the headline numbers with how they were measured "
                                   "(the log-likelihood once evaluated), the loss curves and all figures, the model, "
                                   f"data and protocol, metrics per epoch and every configuration value, in one "
                                   f"self-contained file linking the latent explorer; and RUN/{CARD}, the model "
                                   "card a model hub shows (a README.md that vaekit did not write is left alone).")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--out", help=f"file to write the report to (default RUN/{REPORT}; the card is then not written)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """The report and card in the run folder as the stage writes them, or the report alone at --out with its link
    to the explorer kept (the run folder itself is then not written to)."""
    from vaekit.artifacts import write_artifacts
    from vaekit.artifacts.report import write_report
    from vaekit.run import load_run

    if args.out is None:
        paths = write_artifacts(args.run, which=("report", "card"))
    else:
        paths = [write_report(load_run(args.run), args.out)]
    for path in paths:
        print(printable(path))
    return 0
