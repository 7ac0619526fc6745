"""What every command shares: the one-line-error parser and the parsers of numeric flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from vaekit.config import DEVICES, MAX_GRID, MAX_SEED, MAX_STEPS, RUN_SPLITS, USE_BATCH_SIZE


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``vaekit train: error: ...``) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # an argument may hold line breaks; the message stays one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --data-dir of the commands that read a finished run: a dataset's files, or the images of a run on your own data.
DATA_DIR_HELP = ("where the run's data is now, if not where training found it: the folder of the dataset's files, "
                 "or your own images (their folder or .npy/.npz file)")


def _number(kind: type, minimum: float, inclusive: bool = True, what: str = "",
            maximum: float | None = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        shown = repr(text) if len(text) <= 40 else repr(text[:37] + "...")
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {shown}") from None
        if value != value or value in (float("inf"), float("-inf")) or (
            value < minimum if inclusive else value <= minimum
        ) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {shown}")
        return value

    return parse


positive_int = _number(int, 1, what="a positive integer")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, inclusive=False, what="a positive number")
nonnegative_float = _number(float, 0.0, what="a number >= 0")
seed_int = _number(int, 0, what=f"an integer from 0 to {MAX_SEED}", maximum=MAX_SEED)
grid_int = _number(int, 1, what=f"an integer from 1 to {MAX_GRID}", maximum=MAX_GRID)
steps_int = _number(int, 2, what=f"an integer from 2 to {MAX_STEPS}", maximum=MAX_STEPS)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """RUN, --device and --batch-size: what every command that applies a trained model takes."""
    p.add_argument("run", metavar="RUN", help="run folder written by vaekit train")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default auto: a GPU when there "
                                                   "is one)")
    p.add_argument("--batch-size", type=positive_int, default=USE_BATCH_SIZE, metavar="N",
                   help=f"images per batch (default {USE_BATCH_SIZE}; lower it if the device runs out of memory)")


def add_images_options(p: argparse.ArgumentParser) -> None:
    """IMAGES (or --split), --data-dir and --skip-bad: the images a command applies a trained model to."""
    p.add_argument("images", metavar="IMAGES", nargs="?",
                   help="a folder of images (class subfolders give labels), an image file, or a .npy/.npz file; they "
                        "are prepared as the run's training images were (size, channels)")
    p.add_argument("--split", choices=RUN_SPLITS, help="the run's own training or test images instead of IMAGES")
    p.add_argument("--data-dir", help=f"with --split: {DATA_DIR_HELP}")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out image files that cannot be used (unreadable, wrong size or channels), with a "
                        "warning, instead of stopping")


def add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace an existing --out")
