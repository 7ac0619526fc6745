"""The ``vaekit data`` command: ``list``, ``fetch`` and ``verify`` datasets.

:func:`add_data_parser` plugs the command into the main ``vaekit`` parser. Handlers return an exit code;
problems the user must fix (unknown dataset, download impossible) are raised as
:class:`~vaekit.data.errors.DataError`, which the main program prints as one line and exits 2 on.
:func:`main` runs the command on its own, with the same behaviour.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vaekit.data.resolve import FileReport

__all__ = ["add_data_parser", "main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from vaekit.data.registry import DATASETS, EMBEDDED_NAME, cache_dir
    from vaekit.data.resolve import locate, search_roots

    rows = [("NAME", "FOUND AT", "DESCRIPTION")]
    for name, spec in DATASETS.items():
        rows.append((name, locate(name) or "not present", spec.description))
    embedded = locate(EMBEDDED_NAME)
    rows.append(
        (
            EMBEDDED_NAME,
            embedded or "not present (reinstall vaekit)",
            "5,000 real MNIST digits shipped with vaekit (4,000 train / 1,000 test), the offline fallback",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, where, description in rows:
        print(f"{name:<{widths[0]}}  {where:<{widths[1]}}  {description}")
    roots = ", ".join(str(r) for r in search_roots()) or "none"
    print(
        f"\ncache: {cache_dir()}  (set VAEKIT_DATA to change)\n"
        f"searched: {roots}  (set VAEKIT_SEARCH_PATH to change)"
    )
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from vaekit.data.resolve import fetch

    paths = fetch(args.name, args.data_dir, progress=not args.no_progress)
    for role, path in paths.items():
        print(f"{role:<13} {path}")
    return 0


def _verdict(report: FileReport) -> str:
    if report.error == "missing":
        return "MISSING"
    if report.error is not None:
        return "BROKEN"
    assert report.check is not None
    if report.check.verified:
        return "OK"
    return "MISMATCH" if report.check.md5_ok is False or report.check.sha256_ok is False else "UNVERIFIED"


def _cmd_verify(args: argparse.Namespace) -> int:
    from vaekit.data.errors import DataError
    from vaekit.data.registry import EMBEDDED_NAME, cache_dir, get_spec, normalise_name
    from vaekit.data.resolve import verify_locations

    if normalise_name(args.name) == EMBEDDED_NAME:
        print(f"{EMBEDDED_NAME} ships inside vaekit and is checked by its SHA-256 at every load; there are no "
              "IDX files to verify")
        return 0
    spec = get_spec(args.name)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise DataError(
            f"data folder {args.data_dir} does not exist or is not a folder; pass an existing --data-dir"
        )
    locations = verify_locations(spec.name, args.data_dir)
    if not locations:
        print(
            f"{spec.name}: not present (looked in {cache_dir() / spec.name} and the search folders; see "
            "`vaekit data list`)"
        )
        return 1
    failed = False
    for folder, reports in locations:
        print(folder)
        for report in reports:
            verdict = _verdict(report)
            failed |= verdict != "OK"
            shown = report.path.name if report.path is not None else report.expected_name
            if report.check is None:
                detail = "" if report.error == "missing" else report.error
                print(f"  {shown:<28} {verdict:<10} {detail}".rstrip())
                continue
            check = report.check
            print(f"  {shown:<28} {verdict:<10} md5 {check.md5_status():<22} sha256 {check.sha256_status()}")
            print(f"  {'':<28} {'':<10} md5 {check.md5}  sha256 {check.sha256}")
    return 1 if failed else 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data {list,fetch,verify}`` to ``subparsers``; handlers are stored as ``func`` (args -> int)."""
    parser = subparsers.add_parser(
        "data",
        help="list, fetch and verify datasets",
        description="List the datasets vaekit knows, download them into the cache, or check checksums.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="{list,fetch,verify}", required=True)

    p_list = commands.add_parser("list", help="show each dataset and where it is found now")
    p_list.set_defaults(func=_cmd_list)

    p_fetch = commands.add_parser(
        "fetch",
        help="download a dataset (or copy a verified local copy) into the cache",
        description="Make a verified copy of every file of NAME available and print the paths. Run it on a "
        "connected machine, then copy the folder to an offline one.",
    )
    p_fetch.add_argument("name", help="dataset name, e.g. mnist, fashion-mnist, kmnist")
    p_fetch.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="put the files in DIR instead of the cache"
    )
    p_fetch.add_argument("--no-progress", action="store_true", help="do not show a download progress bar")
    p_fetch.set_defaults(func=_cmd_fetch)

    p_verify = commands.add_parser(
        "verify",
        help="check each file's MD5 / SHA-256 (exit 1 on mismatch)",
        description="Print each file's MD5 (of the .gz) and SHA-256 (of the decompressed data) status for "
        "the copy in DIR, or for every copy in the cache and search folders. Exit status 1 if any file is "
        "missing, broken or does not match.",
    )
    p_verify.add_argument("name", help="dataset name, e.g. mnist")
    p_verify.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="verify the files in DIR"
    )
    p_verify.set_defaults(func=_cmd_verify)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data ...`` standalone; a :class:`DataError` becomes one ``vaekit: error:`` line and exit 2."""
    parser = argparse.ArgumentParser(prog="vaekit")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from vaekit.data.errors import DataError

    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"vaekit: error: {exc}", file=sys.stderr)
        return 2
