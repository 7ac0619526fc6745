"""``vaekit compare``: runs side by side in the terminal, as JSON, and as one HTML page."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vaekit.errors import RunFolderError
from vaekit.text import printable

DESCRIPTION = ("Compare runs: a table of the settings that differ between them and their numbers (test -ELBO, "
               "-log p(x) with its K, bits/dim, best validation -ELBO, training time), grouped by the protocol they "
               "were measured under and never ranked across protocols. A folder of seed-N run folders is a seed group, "
               "shown as mean \u00b1 standard error. With --out, also one self-contained HTML page with the table, "
               "error bars, the loss curves overlaid and the runs' figures side by side.")


def add_compare_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``compare`` subcommand."""
    p = sub.add_parser("compare", help="put runs side by side: the settings that differ and the numbers",
                       description=DESCRIPTION)
    p.add_argument("runs", nargs="+", metavar="RUN_OR_DIR",
                   help="a run folder, a seed group (a folder of seed-N run folders), or a folder of those")
    p.add_argument("--out", metavar="HTML", help="also write the comparison page to this file")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object instead of a table")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_compare)
    return p


def _check_out(out: str | None, force: bool) -> None:
    """--out names a regular file to write, one that exists only with --force, and never a run's own file (any
    folder holding a config.json above it is a run): checked before any work, as every command checks its --out."""
    if out is None:
        return
    from vaekit.experiments.collect import enclosing_run
    from vaekit.use.outputs import check_output

    path = Path(out)
    check_output(path, force, run=enclosing_run(path))
    _check_not_a_record(path)
    if not path.parent.is_dir():
        raise RunFolderError(f"--out {printable(path)}: its folder does not exist; create it or choose another file")


def _check_not_a_record(path: Path) -> None:
    """Never replace, --force or not, the record a seed group or a sweep keeps beside its runs (its summary, its
    progress, its study): the group or sweep could no longer be read or resumed."""
    from vaekit.experiments.collect import holds_seed_runs
    from vaekit.experiments.seeds import SEEDS_PROGRESS, SEEDS_SUMMARY
    from vaekit.experiments.sweep import BEST, STUDY_DB, SWEEP

    folder = path.resolve().parent
    seeds = holds_seed_runs(folder)
    sweep = (folder / SWEEP).exists()
    if (seeds and path.name in (SEEDS_SUMMARY, SEEDS_PROGRESS)) or (sweep and path.name in (SWEEP, BEST, STUDY_DB)):
        raise RunFolderError(f"--out {printable(path)} is the record of the {'seeds' if seeds else 'sweep'} in "
                             f"{printable(folder)}; choose another file")


def cmd_compare(args: argparse.Namespace) -> int:
    from vaekit.experiments.compare import compare
    from vaekit.experiments.table import as_json, text_table

    _check_out(args.out, args.force)
    comparison = compare(args.runs)
    for warning in comparison.warnings:
        print(f"vaekit compare: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(comparison), sort_keys=False, allow_nan=False))
    else:
        print(text_table(comparison))
    if args.out is not None:
        from vaekit.experiments.page import write_page

        left_out: list[str] = []
        path = write_page(comparison, args.out, left_out)
        for warning in left_out:
            print(f"vaekit compare: warning: {warning}", file=sys.stderr)
        print(f"page: {printable(path)}", file=sys.stderr if args.json else sys.stdout)
    return 0
