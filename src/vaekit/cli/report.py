"""``vaekit report``: write a run's HTML report through the artifacts stage."""

from __future__ import annotations

import argparse
from typing import Any

from vaekit.artifacts import REPORT
from vaekit.text import printable


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``report`` subcommand."""
    p = sub.add_parser("report", help="write a run's HTML report",
                       description="Write RUN/report.html: configuration, data and protocol, metrics per epoch, "
                                   "loss curves, all figures, the log-likelihood when evaluated and a link to "
                                   "the latent explorer, in one self-contained file.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--out", help=f"file to write (default RUN/{REPORT})")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """The report in the run folder as the stage writes it, or at --out with its link to the explorer kept."""
    from vaekit.artifacts import write_artifacts
    from vaekit.artifacts.report import write_report
    from vaekit.run import load_run

    if args.out is None:
        path = write_artifacts(args.run, which=("report",))[0]
    else:
        path = write_report(load_run(args.run), args.out)
    print(printable(path))
    return 0
