"""What every command shares: the one-line-error parser and the parsers of numeric flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from vaekit.config import MAX_GRID, MAX_SEED


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
