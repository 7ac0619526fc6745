"""The ``vaekit data`` command: ``list``, ``fetch`` and ``verify`` datasets; ``split`` shows your own images' split.

:func:`add_data_parser` plugs the command into the main ``vaekit`` parser. Handlers return an exit code;
problems the user must fix (unknown dataset, download impossible) are raised as
:class:`~vaekit.data.errors.DataError`, which the main program prints as one line and exits 2 on.
:func:`main` runs the command on its own, with the same behaviour.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaekit.cli.common import positive_int
from vaekit.text import printable

if TYPE_CHECKING:
    from vaekit.data.resolve import FileReport
    from vaekit.data.splits import RawData

__all__ = ["add_data_parser", "main", "split_report"]


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
        print(printable(f"{role:<13} {path}"))
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
        print(printable(folder))
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


def split_report(raw: RawData, test: Any, test_fraction: float) -> dict[str, Any]:
    """The split of ``raw`` (``test``: the held-out mask) as plain JSON values: counts per class, files per side."""
    names = raw.names if raw.names is not None else list(range(len(raw.images)))
    labels = raw.labels if raw.labels is not None else [0] * len(names)
    classes = raw.class_names or [None]
    counts = {str(name): {"train": 0, "test": 0} for name in classes}
    for label, held in zip(labels, test, strict=True):
        counts[str(classes[int(label)])]["test" if held else "train"] += 1
    random = raw.n_given_train is None
    return {
        "path": raw.path, "kind": raw.kind, "split": "random" if random else "given",
        "test_fraction": float(test_fraction) if random else None,
        "n_train": int(len(names) - int(test.sum())), "n_test": int(test.sum()),
        "classes": counts if raw.class_names is not None else None,
        "test": [n for n, held in zip(names, test, strict=True) if held],
        "train": [n for n, held in zip(names, test, strict=True) if not held],
    }


def _print_split(report: dict[str, Any]) -> None:
    how = (f"held out by a hash of each image's pixels, test fraction {report['test_fraction']}"
           if report["split"] == "random"
           else "as given by its split folders" if report["kind"] == "folder" else "as given by its x_train/x_test")
    print(printable(f"{report['path']}: {report['n_train']:,} train, {report['n_test']:,} test ({how})"))
    if report["classes"] is not None:
        width = max(len("class"), *(len(name) for name in report["classes"]))
        print(f"  {'class':<{width}}  {'train':>7}  {'test':>7}")
        for name, count in report["classes"].items():
            print(printable(f"  {name:<{width}}  {count['train']:>7,}  {count['test']:>7,}"))
    what = "files" if report["kind"] == "folder" else "rows"
    print(f"held-out {what}:")
    for name in report["test"]:
        print(printable(f"  {name}"))


def _cmd_split(args: argparse.Namespace) -> int:
    from vaekit.data.errors import DataError
    from vaekit.data.own import OWN_SPLIT_SEED, read_own_data, split_mask

    if not 0 < args.test_fraction < 1:
        raise DataError(f"--test-fraction must be a number between 0 and 1 (exclusive), got {args.test_fraction}")
    raw = read_own_data(args.path, image_size=args.image_size, channels=args.channels, skip_bad=args.skip_bad,
                        progress=not args.no_progress and not args.json)
    report = split_report(raw, split_mask(raw, args.test_fraction, OWN_SPLIT_SEED), args.test_fraction)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_split(report)
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data {list,fetch,verify,split}`` to ``subparsers``; handlers are stored as ``func`` (args -> int)."""
    parser = subparsers.add_parser(
        "data",
        help="list, fetch and verify datasets; show your own images' train/test split",
        description="List the datasets vaekit knows, download them into the cache, or check checksums; show which "
        "of your own images are held out for testing.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="{list,fetch,verify,split}", required=True)

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
    _add_split_parser(commands)


def _add_split_parser(commands: argparse._SubParsersAction) -> None:
    p_split = commands.add_parser(
        "split",
        help="show which of your own images are held out for testing",
        description="Read a folder of images or a .npy/.npz file as `vaekit train --data PATH` does and print "
        "the train/test split it gets: counts per class and the held-out files (rows for an array file). Give "
        "the same --test-fraction, --image-size, --channels and --skip-bad as to train.",
    )
    p_split.add_argument("path", type=Path, help="a folder of images, or a .npy/.npz file")
    p_split.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                         help="share of the images held out (default 0.1)")
    p_split.add_argument("--image-size", type=positive_int, default=None, metavar="N", help="resize and crop to NxN")
    p_split.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 (grey) or 3 (colour)")
    p_split.add_argument("--skip-bad", action="store_true", help="leave unreadable files out")
    p_split.add_argument("--json", action="store_true", help="print the split as JSON")
    p_split.add_argument("--no-progress", action="store_true", help="do not show the decoding progress bar")
    p_split.set_defaults(func=_cmd_split)


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
